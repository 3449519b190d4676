"""The official openai SDK, unmodified but for base_url, against gateway + worker + llama.cpp."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

from basis.domain.receipt import receipt_hash, recompute_problems
from basis.domain.signing import recover_signer

pytestmark = pytest.mark.llama
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Summarize this transaction."}]


def _client(gw, key):
    return OpenAI(base_url=gw.base + "/v1", api_key=key, max_retries=0)


def _check_receipt(gw, completion_id: str, usage) -> dict:
    job_id = completion_id.removeprefix("chatcmpl-")
    gw.views_caught_up()
    r = httpx.get(f"{gw.base}/v1/receipts/{job_id}").json()
    core = r["core"]
    assert core["prompt_tokens"] == usage.prompt_tokens and core["output_tokens"] == usage.completion_tokens
    assert r["hash"] == receipt_hash(core) and not recompute_problems(core)
    signer = httpx.get(f"{gw.base}/v1/network").json()["gateway_signer"]
    assert recover_signer(r["hash"], r["signature"]) == signer
    assert core["served_by"] == "contributor" and core["reward_bps"] > 0
    return core


def test_sync_non_streaming(llama_gateway):
    _, key = llama_gateway.account("sdk-sync", 10**21)
    c = _client(llama_gateway, key).chat.completions.create(model="basis-default", messages=MESSAGES, max_tokens=12)
    assert c.id.startswith("chatcmpl-") and c.choices[0].message.role == "assistant"
    assert c.usage.completion_tokens <= 12 and c.usage.prompt_tokens > 5
    assert c.choices[0].finish_reason in ("stop", "length")
    _check_receipt(llama_gateway, c.id, c.usage)


def test_sync_streaming_with_usage(llama_gateway):
    _, key = llama_gateway.account("sdk-stream", 10**21)
    stream = _client(llama_gateway, key).chat.completions.create(
        model="basis-default", messages=MESSAGES, max_tokens=10, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text and len({ch.id for ch in chunks}) == 1
    _check_receipt(llama_gateway, chunks[0].id, chunks[-1].usage)


def test_async_streaming_and_not(llama_gateway):
    _, key = llama_gateway.account("sdk-async", 10**21)

    async def go():
        client = AsyncOpenAI(base_url=llama_gateway.base + "/v1", api_key=key, max_retries=0)
        plain, stream = await asyncio.gather(
            client.chat.completions.create(model="basis-small", messages=MESSAGES, max_tokens=6),
            client.chat.completions.create(model="basis-default", messages=MESSAGES, max_tokens=6, stream=True,
                                           stream_options={"include_usage": True}),
        )
        chunks = [ch async for ch in stream]
        await client.close()
        return plain, chunks

    llama_gateway.start_worker(engine="llama-cpp", models=("basis-small",), capacity=1)
    plain, chunks = asyncio.run(go())
    core = _check_receipt(llama_gateway, plain.id, plain.usage)
    assert core["model"] == "basis-small" and core["multiplier_bps"] == 5000
    _check_receipt(llama_gateway, chunks[0].id, chunks[-1].usage)


def test_models_list_shows_live_binding(llama_gateway):
    models = {m.id: m for m in _client(llama_gateway, "unused").models.list()}
    assert set(models) == {"basis-default", "basis-small", "basis-large"}
    default = models["basis-default"].model_dump()
    assert default["status"] == "live" and default["context_window"] == 8192
    assert default["binding"]["binding_hash"].startswith("0x") and "SmolLM2" in default["binding"]["backing_model"]
    large = models["basis-large"].model_dump()  # Gemma 3 270M: its 32k context fits basis-large's window
    assert "gemma" in large["binding"]["backing_model"] and large["context_window"] == 32768
    assert large["binding"]["binding_hash"] != default["binding"]["binding_hash"]


def test_default_model_answers_in_english(llama_gateway):
    """basis-default is instruction-tuned: a greeting gets a short English reply that ends by itself
    (the base model it replaced answered noise and ran to the length limit)."""
    _, key = llama_gateway.account("sdk-hi", 10**21)
    c = _client(llama_gateway, key).chat.completions.create(
        model="basis-default", messages=[{"role": "user", "content": "Say hi"}], max_tokens=64, temperature=0)
    text = c.choices[0].message.content
    assert c.choices[0].finish_reason == "stop" and c.usage.completion_tokens < 64
    assert text.isascii() and sum(ch.isalpha() for ch in text) > len(text) / 2, text
