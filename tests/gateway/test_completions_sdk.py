"""The official openai SDK's ``completions`` (sync, async, streaming, typed errors) against a live
gateway and a llama.cpp worker: /v1/completions as its users call it."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from basis.domain.receipt import receipt_hash, recompute_problems
from basis.domain.signing import recover_signer

pytestmark = pytest.mark.llama


def _client(gw, key):
    return OpenAI(base_url=gw.base + "/v1", api_key=key, max_retries=0)


def _receipts(gw, job_ids):
    gw.views_caught_up()
    signer = httpx.get(f"{gw.base}/v1/network").json()["gateway_signer"]
    cores = []
    for job_id in job_ids:
        r = httpx.get(f"{gw.base}/v1/receipts/{job_id}").json()
        assert r["hash"] == receipt_hash(r["core"]) and not recompute_problems(r["core"])
        assert recover_signer(r["hash"], r["signature"]) == signer
        cores.append(r["core"])
    return cores


def _job_ids(completion):
    return [c.model_extra["receipt"]["url"].rsplit("/", 1)[1] for c in completion.choices]


def test_sync_completion_of_a_text_prompt(llama_gateway):
    _, key = llama_gateway.account("sdk-cmpl", 10**21)
    binding = llama_gateway.runtime.bindings["basis-default"]
    prompt = "The three primary colors are"
    c = _client(llama_gateway, key).completions.create(model="basis-default", prompt=prompt, max_tokens=12,
                                                        temperature=0, seed=7)
    assert c.object == "text_completion" and c.id.startswith("cmpl-") and len(c.choices) == 1
    assert c.choices[0].finish_reason in ("stop", "length") and c.choices[0].text
    assert c.usage.prompt_tokens == len(binding.prompt_ids(prompt)) and c.usage.completion_tokens <= 12
    (core,) = _receipts(llama_gateway, _job_ids(c))
    assert (core["prompt_tokens"], core["output_tokens"]) == (c.usage.prompt_tokens, c.usage.completion_tokens)
    assert core["served_by"] == "contributor" and core["reward_bps"] > 0
    same = _client(llama_gateway, key).completions.create(model="basis-default", prompt=prompt, max_tokens=12,
                                                           temperature=0, seed=7)
    assert same.choices[0].text == c.choices[0].text  # greedy: the same continuation


def test_streaming_several_prompts_with_usage(llama_gateway):
    _, key = llama_gateway.account("sdk-cmpl-stream", 10**21)
    stream = _client(llama_gateway, key).completions.create(
        model="basis-default", prompt=["Hello, my name is", "1, 2, 3,"], max_tokens=6, stream=True, echo=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert len({ch.id for ch in chunks}) == 1 and chunks[-1].choices == [] and chunks[-1].usage is not None
    text: dict[int, str] = {0: "", 1: ""}
    for ch in chunks[:-1]:
        for choice in ch.choices:
            text[choice.index] += choice.text
    assert text[0].startswith("Hello, my name is") and text[1].startswith("1, 2, 3,")
    assert chunks[-1].usage.completion_tokens <= 12


def test_async_token_id_prompt_and_n(llama_gateway):
    _, key = llama_gateway.account("sdk-cmpl-async", 10**21)
    ids = llama_gateway.runtime.bindings["basis-default"].tokenize("Paris is the capital of")

    async def go():
        client = AsyncOpenAI(base_url=llama_gateway.base + "/v1", api_key=key, max_retries=0)
        try:
            return await client.completions.create(model="basis-default", prompt=ids, max_tokens=5, n=2, seed=1)
        finally:
            await client.close()

    c = asyncio.run(go())
    assert [ch.index for ch in c.choices] == [0, 1] and c.usage.prompt_tokens == 2 * len(ids)
    cores = _receipts(llama_gateway, _job_ids(c))
    assert sum(core["output_tokens"] for core in cores) == c.usage.completion_tokens


def test_typed_errors(llama_gateway):
    account_id, key = llama_gateway.account("sdk-cmpl-errors", 10**21)
    client = _client(llama_gateway, key)
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="basis-default", prompt="x", logprobs=2, echo=True)
    assert bad.value.code == "unsupported_parameter" and bad.value.param == "echo"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="davinci-002", prompt="x")
    with pytest.raises(openai.AuthenticationError):
        _client(llama_gateway, "sk-basis-nope").completions.create(model="basis-default", prompt="x")
    assert llama_gateway.ledger.get(account_id).spent == 0


def test_base_model_behind_basis_large_continues_text(llama_gateway):
    """Gemma 3 270M (a base model) is what /v1/completions suits: its BOS is added to a text prompt."""
    _, key = llama_gateway.account("sdk-cmpl-gemma", 10**21)
    llama_gateway.start_worker(engine="llama-cpp", models=("basis-large",), capacity=1)
    gemma = llama_gateway.runtime.bindings["basis-large"]
    prompt = "The capital of France is"
    c = _client(llama_gateway, key).completions.create(model="basis-large", prompt=prompt, max_tokens=4,
                                                        temperature=0)
    assert gemma.prompt_ids(prompt)[0] == gemma.bos_token_id
    assert c.usage.prompt_tokens == len(gemma.tokenize(prompt)) + 1
    (core,) = _receipts(llama_gateway, _job_ids(c))
    assert core["model"] == "basis-large" and core["multiplier_bps"] == 30_000
