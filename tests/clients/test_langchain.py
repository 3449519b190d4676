"""LangChain's ChatOpenAI (langchain-openai) with base_url, against the live gateway: invoke, ainvoke,
streaming with usage, with_structured_output(method="json_schema"), bind_tools, typed errors."""

from __future__ import annotations

import asyncio

import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_openai import ChatOpenAI

from tests.clients.conftest import Live, check_usage
from tests.clients.schemas import City, GetWeather

pytestmark = pytest.mark.llama


def _llm(live: Live, key: str | None = None, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(model="basis-default", base_url=live.base_url, api_key=key or live.api_key, max_retries=0,
                      **kwargs)


def _check(live: Live, msg: AIMessage, max_tokens: int) -> None:
    usage = msg.usage_metadata
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    check_usage(live, msg.response_metadata["id"], usage["input_tokens"], usage["output_tokens"], max_tokens)


def test_invoke(live):
    msg = _llm(live, max_tokens=12).invoke([("system", "You are terse."), ("human", "Say hi")])
    assert isinstance(msg, AIMessage) and isinstance(msg.content, str)
    assert msg.response_metadata["finish_reason"] in ("stop", "length")
    _check(live, msg, 12)


def test_streaming_with_usage(live):
    key = live.key("langchain-stream")  # streamed chunks carry no chat id: this key's receipt is the one
    chunks = list(_llm(live, key, max_tokens=10, stream_usage=True).stream("Say hi"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    whole = sum(chunks[1:], chunks[0])  # LangChain's own way to join chunks
    assert whole.content and whole.usage_metadata["output_tokens"] <= 10
    assert whole.response_metadata["finish_reason"] in ("stop", "length")
    usage = whole.usage_metadata
    check_usage(live, None, usage["input_tokens"], usage["output_tokens"], 10, key=key)


def test_ainvoke_and_astream_in_one_event_loop(live):
    """langchain-openai keeps one async HTTP client per base URL for the whole process (an lru_cache),
    bound to the event loop that first used it: its async calls belong in one loop, as in an app.
    (A second asyncio.run here failed with "Event loop is closed".)"""
    key = live.key("langchain-async")
    llm = _llm(live, key, max_tokens=10, stream_usage=True)

    async def go() -> tuple[AIMessage, list[AIMessageChunk]]:
        return await llm.ainvoke("Say hi"), [c async for c in llm.astream("Say hi")]

    msg, chunks = asyncio.run(go())
    _check(live, msg, 10)
    whole = sum(chunks[1:], chunks[0])
    assert whole.content
    usage = whole.usage_metadata
    check_usage(live, None, usage["input_tokens"], usage["output_tokens"], 10, key=key)


def test_with_structured_output_json_schema(live):
    structured = _llm(live, max_tokens=160, temperature=0).with_structured_output(City, method="json_schema",
                                                                                 include_raw=True)
    out = structured.invoke("Describe Paris.")
    assert out["parsing_error"] is None and isinstance(out["parsed"], City)
    assert City.model_validate_json(out["raw"].content) == out["parsed"]


def test_bind_tools_required_and_named(live):
    llm = _llm(live, max_tokens=80, temperature=0)
    msg = llm.bind_tools([GetWeather], tool_choice="required").invoke("What is the weather in Paris?")
    (call,) = msg.tool_calls
    assert call["name"] == "GetWeather" and call["id"].startswith("call_") and isinstance(call["args"]["city"], str)
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    named = llm.bind_tools([GetWeather, City], tool_choice="GetWeather").invoke("What is the weather in Oslo?")
    (call,) = named.tool_calls
    assert call["name"] == "GetWeather" and GetWeather.model_validate(call["args"])


def test_typed_errors_and_nothing_charged(live):
    broke = live.key("langchain-broke", credit=0)
    account_id = live.gateway.ledger.authenticate_key(broke).account_id
    with pytest.raises(openai.AuthenticationError):
        _llm(live, "sk-basis-not-a-key").invoke("hi")
    with pytest.raises(openai.BadRequestError) as e:
        _llm(live).bind_tools([GetWeather], tool_choice="auto").invoke("hi")
    assert e.value.code == "unsupported_parameter" and e.value.param == "tool_choice"
    with pytest.raises(openai.NotFoundError):
        ChatOpenAI(model="gpt-nothing", base_url=live.base_url, api_key=live.api_key, max_retries=0).invoke("hi")
    with pytest.raises(openai.APIStatusError) as e:  # the openai SDK underneath has no 402 class of its own
        _llm(live, broke, max_tokens=4).invoke("hi")
    assert e.value.status_code == 402 and e.value.code == "insufficient_credit"
    assert live.gateway.ledger.get(account_id).spent == 0
