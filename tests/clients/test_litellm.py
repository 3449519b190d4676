"""LiteLLM's SDK as a client (the `openai/` provider with api_base) against the live gateway: completion,
acompletion, streaming with usage, response_format with a pydantic model, tool calls, typed errors.
LiteLLM runs offline here (conftest.OFFLINE_ENV: its bundled cost map; test_offline.py checks it)."""

from __future__ import annotations

import asyncio
import json

import litellm
import pytest

from tests.clients.conftest import Live, check_usage
from tests.clients.schemas import City

pytestmark = [pytest.mark.llama,  # LiteLLM's own pydantic models warn at first use: not ours to fix
              pytest.mark.filterwarnings("ignore::UserWarning:pydantic", "ignore::DeprecationWarning:litellm")]
litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banner on every expected error
MODEL = "openai/basis-default"
HI = [{"role": "user", "content": "Say hi"}]


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
                   "required": ["city"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _args(live: Live, key: str | None = None) -> dict:
    return {"model": MODEL, "api_base": live.base_url, "api_key": key or live.api_key}


def test_completion(live):
    r = litellm.completion(**_args(live), messages=HI, max_tokens=12)
    msg = r.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str) and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    check_usage(live, r.id, r.usage.prompt_tokens, r.usage.completion_tokens, max_tokens=12)


def test_streaming_with_usage(live):
    chunks = list(litellm.completion(**_args(live), messages=HI, max_tokens=10, stream=True,
                                     stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    (usage,) = [c.usage for c in chunks if getattr(c, "usage", None) is not None]
    assert text and len({c.id for c in chunks}) == 1
    check_usage(live, chunks[0].id, usage.prompt_tokens, usage.completion_tokens, max_tokens=10)
    # LiteLLM's own helper rebuilds the whole response from the chunks, usage included.
    rebuilt = litellm.stream_chunk_builder(chunks, messages=HI)
    assert rebuilt.choices[0].message.content == text and rebuilt.usage.completion_tokens == usage.completion_tokens


def test_acompletion_and_async_stream(live):
    async def go():
        plain = await litellm.acompletion(**_args(live), messages=HI, max_tokens=6)
        stream = await litellm.acompletion(**_args(live), messages=HI, max_tokens=6, stream=True,
                                           stream_options={"include_usage": True})
        return plain, [c async for c in stream]

    plain, chunks = asyncio.run(go())
    check_usage(live, plain.id, plain.usage.prompt_tokens, plain.usage.completion_tokens, max_tokens=6)
    (usage,) = [c.usage for c in chunks if getattr(c, "usage", None) is not None]
    check_usage(live, chunks[0].id, usage.prompt_tokens, usage.completion_tokens, max_tokens=6)


def test_response_format_with_a_pydantic_model(live):
    r = litellm.completion(**_args(live), messages=[{"role": "user", "content": "Describe Paris."}],
                           response_format=City, max_tokens=160, temperature=0)
    assert r.choices[0].finish_reason == "stop"
    city = City.model_validate_json(r.choices[0].message.content)
    assert isinstance(city.capital, bool)


def test_tool_calls_required_and_named(live):
    r = litellm.completion(**_args(live), messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=80,
                           temperature=0)
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert call.id.startswith("call_") and isinstance(json.loads(call.function.arguments)["city"], str)
    named = litellm.completion(**_args(live), messages=ASK, tools=[WEATHER], max_tokens=80, temperature=0,
                               tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = named.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and set(json.loads(call.function.arguments)) == {"city"}


def test_typed_errors_and_nothing_charged(live):
    broke = live.key("litellm-broke", credit=0)
    account_id = live.gateway.ledger.authenticate_key(broke).account_id
    with pytest.raises(litellm.AuthenticationError) as e:
        litellm.completion(**_args(live, "sk-basis-not-a-key"), messages=HI, max_tokens=4)
    assert e.value.status_code == 401
    with pytest.raises(litellm.BadRequestError) as e:
        litellm.completion(**_args(live), messages=ASK, tools=[WEATHER], max_tokens=4)  # tool_choice "auto"
    assert e.value.status_code == 400 and "required" in str(e.value)
    with pytest.raises(litellm.NotFoundError) as e:
        litellm.completion(model="openai/gpt-nothing", api_base=live.base_url, api_key=live.api_key, messages=HI)
    assert e.value.status_code == 404
    # LiteLLM maps no exception class to 402: it raises its generic APIError with the status and message.
    with pytest.raises(litellm.APIError) as e:
        litellm.completion(**_args(live, broke), messages=HI, max_tokens=4)
    assert e.value.status_code == 402 and "Insufficient credit" in str(e.value)
    assert live.gateway.ledger.get(account_id).spent == 0
