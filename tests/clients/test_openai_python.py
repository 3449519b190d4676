"""The official openai Python SDK against the live gateway: what tests/gateway/test_openai_sdk.py (chat: sync,
async, stream) and test_structured_llama.py (sync parse, tools) do not already cover: the async client's
parse, stream helper and streamed tool calls, and every typed error a user of the SDK catches."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from pydantic import BaseModel, Field

from tests.clients.conftest import Live, check_usage
from tests.clients.schemas import City, GetWeather

pytestmark = pytest.mark.llama
HI = [{"role": "user", "content": "Say hi"}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _client(live: Live, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.base_url, api_key=key or live.api_key, max_retries=0)


def test_async_parse_stream_helper_and_streamed_tool_call(live):
    async def go():
        async with openai.AsyncOpenAI(base_url=live.base_url, api_key=live.api_key, max_retries=0) as client:
            parsed = await client.chat.completions.parse(
                model="basis-default", messages=[{"role": "user", "content": "Describe Rome."}], response_format=City,
                max_tokens=160, temperature=0)
            async with client.chat.completions.stream(
                    model="basis-default", messages=[{"role": "user", "content": "Describe Oslo."}],
                    response_format=City, max_tokens=160, temperature=0,
                    stream_options={"include_usage": True}) as stream:
                streamed = await stream.get_final_completion()
            tool = await client.chat.completions.parse(
                model="basis-default", messages=ASK, tools=[openai.pydantic_function_tool(GetWeather)],
                tool_choice="required", max_tokens=80, temperature=0)
            return parsed, streamed, tool

    parsed, streamed, tool = asyncio.run(go())
    for c in (parsed, streamed):
        assert c.choices[0].finish_reason == "stop" and isinstance(c.choices[0].message.parsed, City)
        check_usage(live, c.id, c.usage.prompt_tokens, c.usage.completion_tokens, max_tokens=160)
    (call,) = tool.choices[0].message.tool_calls
    assert call.function.name == "GetWeather" and isinstance(call.function.parsed_arguments, GetWeather)
    assert json.loads(call.function.arguments) == call.function.parsed_arguments.model_dump()


def test_typed_errors_and_nothing_charged(live):
    key = live.key("py-errors")
    client = _client(live, key)
    with pytest.raises(openai.AuthenticationError) as e:
        _client(live, "sk-basis-not-a-key").chat.completions.create(model="basis-default", messages=HI)
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-nothing", messages=HI)
    assert e.value.param == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="basis-default", messages=ASK, tools=[
            openai.pydantic_function_tool(GetWeather)])  # tool_choice defaults to "auto"
    assert (e.value.code, e.value.param) == ("unsupported_parameter", "tool_choice")

    class Count(BaseModel):
        n: int = Field(ge=0)  # pydantic writes "minimum": a keyword the engines cannot enforce

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.parse(model="basis-default", messages=HI, response_format=Count)
    assert e.value.code == "unsupported_schema_keyword" and "minimum" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:  # one more than OpenAI's limit
        client.chat.completions.create(model="basis-default", messages=HI, max_tokens=4, logprobs=True,
                                       top_logprobs=21)
    assert e.value.param == "top_logprobs"
    # The SDK's own error when output is cut short before the JSON is whole.
    ledger = live.gateway.ledger
    assert ledger.get(ledger.authenticate_key(key).account_id).spent == 0  # no 4xx is charged
    with pytest.raises(openai.LengthFinishReasonError):  # served (and charged): the SDK raises on the length cut
        client.chat.completions.parse(model="basis-default", messages=HI, response_format=City, max_tokens=3)


def test_money_and_key_errors(live):
    broke = live.key("py-broke", credit=0)
    with pytest.raises(openai.APIStatusError) as e:  # the SDK has no class of its own for 402
        _client(live, broke).chat.completions.create(model="basis-default", messages=HI, max_tokens=4)
    assert (e.value.status_code, e.value.code) == (402, "insufficient_credit")
    capped = live.key("py-capped", cap=1)
    with pytest.raises(openai.APIStatusError) as e:
        _client(live, capped).chat.completions.create(model="basis-default", messages=HI, max_tokens=4)
    assert (e.value.status_code, e.value.code) == (402, "key_spend_cap_reached")
    limited = live.key("py-limited", requests_per_minute=1)
    _client(live, limited).chat.completions.create(model="basis-default", messages=HI, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as e:
        _client(live, limited).chat.completions.create(model="basis-default", messages=HI, max_tokens=2)
    assert e.value.code == "rate_limit_exceeded"
    revoked = live.key("py-revoked")
    ledger = live.gateway.ledger
    accounts = [ledger.authenticate_key(key).account_id for key in (broke, capped, revoked)]
    ledger.update_api_key(ledger.authenticate_key(revoked).key_id, revoke=True, reason="leaked")
    with pytest.raises(openai.AuthenticationError):
        _client(live, revoked).chat.completions.create(model="basis-default", messages=HI, max_tokens=2)
    assert [ledger.get(account_id).spent for account_id in accounts] == [0, 0, 0]
