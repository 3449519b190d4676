"""Log-probabilities (issue 14 item 3, worker protocol v3) through each real client against the live
gateway: the openai Node SDK, LiteLLM, LangChain, and the openai Python SDK where it adds to
tests/gateway/test_logprobs.py (parse with logprobs, the async client). Values are the worker's report
(docs/worker-protocol.md); the checks are on shapes and on agreement with the text and the usage."""

from __future__ import annotations

import asyncio
import math

import litellm
import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.clients.conftest import Live, run_node

pytestmark = [pytest.mark.llama,
              pytest.mark.filterwarnings("ignore::UserWarning:pydantic", "ignore::DeprecationWarning:litellm")]
litellm.suppress_debug_info = True
MESSAGES = [{"role": "user", "content": "Name three fruits."}]


def _check_tokens(tokens: list[dict], text: str, top: int) -> None:
    """OpenAI's chat logprobs entries, as plain dicts: the tokens spell the text; each top list is
    ``top`` long, sorted, and holds log-probabilities (<= 0)."""
    assert b"".join(bytes(t["bytes"]) for t in tokens).decode("utf-8", "replace") == text
    for t in tokens:
        assert isinstance(t["token"], str) and t["logprob"] <= 0 and math.isfinite(t["logprob"])
        values = [alt["logprob"] for alt in t["top_logprobs"]]
        assert len(values) == top and values == sorted(values, reverse=True) and all(v <= 0 for v in values)


def test_node_sdk_chat_stream_and_completions(live: Live):
    out = run_node(live, "logprobs.mjs")
    chat = out["chat"]
    assert len(chat["logprobs"]["content"]) == chat["usage"]["completion_tokens"]
    _check_tokens(chat["logprobs"]["content"], chat["content"], 3)
    for t in chat["logprobs"]["content"]:  # greedy: the chosen token leads its list
        assert t["top_logprobs"][0]["token"] == t["token"]
    stream = out["stream"]
    assert len(stream["tokens"]) == stream["usage"]["completion_tokens"]
    _check_tokens(stream["tokens"], stream["text"], 2)
    legacy = out["completions"]
    lp = legacy["logprobs"]
    assert "".join(lp["tokens"]) == legacy["text"] and len(lp["tokens"]) == legacy["usage"]["completion_tokens"]
    assert len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == len(lp["tokens"])
    assert all(len(alts) == 2 for alts in lp["top_logprobs"])
    assert out["too_many"] == {"raised": "BadRequestError", "status": 400, "param": "top_logprobs"}


def test_litellm_logprobs_streamed_and_not(live: Live):
    args = {"model": "openai/basis-default", "api_base": live.base_url, "api_key": live.api_key, "max_tokens": 8,
            "logprobs": True, "top_logprobs": 2}
    r = litellm.completion(messages=MESSAGES, temperature=0, **args)
    tokens = [t.model_dump() for t in r.choices[0].logprobs.content]
    assert len(tokens) == r.usage.completion_tokens
    _check_tokens(tokens, r.choices[0].message.content, 2)

    async def streamed():
        stream = await litellm.acompletion(messages=MESSAGES, stream=True, stream_options={"include_usage": True},
                                           **args)
        return [c async for c in stream]

    chunks = asyncio.run(streamed())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    tokens = [t.model_dump() if hasattr(t, "model_dump") else dict(t)
              for c in chunks if c.choices and c.choices[0].logprobs
              for t in (c.choices[0].logprobs.content or [])]
    (usage,) = [c.usage for c in chunks if getattr(c, "usage", None) is not None]
    assert len(tokens) == usage.completion_tokens
    _check_tokens(tokens, text, 2)


def test_langchain_logprobs_in_response_metadata(live: Live):
    llm = ChatOpenAI(model="basis-default", base_url=live.base_url, api_key=live.api_key, max_retries=0,
                     max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    msg = llm.invoke("Name three fruits.")
    tokens = msg.response_metadata["logprobs"]["content"]
    assert len(tokens) == msg.usage_metadata["output_tokens"]
    _check_tokens(tokens, msg.content, 2)
    chunks = list(llm.stream("Name three fruits."))
    whole = sum(chunks[1:], chunks[0])
    _check_tokens(whole.response_metadata["logprobs"]["content"], whole.content, 2)


class Answer(BaseModel):
    answer: bool


def test_openai_python_parse_with_logprobs_and_async(live: Live):
    """A classifier's confidence: structured output and the log-probabilities of its tokens, together."""
    client = openai.OpenAI(base_url=live.base_url, api_key=live.api_key, max_retries=0)
    c = client.chat.completions.parse(model="basis-default", messages=[{"role": "user", "content": "Is Rome old?"}],
                                      response_format=Answer, max_tokens=40, temperature=0, logprobs=True,
                                      top_logprobs=2)
    assert isinstance(c.choices[0].message.parsed, Answer)
    tokens = [t.model_dump() for t in c.choices[0].logprobs.content]
    assert len(tokens) == c.usage.completion_tokens
    _check_tokens(tokens, c.choices[0].message.content, 2)

    async def go():
        async with openai.AsyncOpenAI(base_url=live.base_url, api_key=live.api_key, max_retries=0) as client:
            return await client.completions.create(model="basis-default", prompt="1, 2, 3,", max_tokens=4,
                                                   logprobs=1, temperature=0)

    legacy = asyncio.run(go())
    lp = legacy.choices[0].logprobs
    assert "".join(lp.tokens) == legacy.choices[0].text and len(lp.tokens) == legacy.usage.completion_tokens
    assert all(v <= 0 for v in lp.token_logprobs) and all(len(alts) == 1 for alts in lp.top_logprobs)
