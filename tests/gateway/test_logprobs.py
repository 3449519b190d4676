"""Log-probabilities (issue 14 item 3) through the official openai SDK: chat and legacy completions,
streamed and not, against a gateway and a real llama.cpp worker (protocol v3); bad input and a
gateway whose only worker speaks v2 are refused in OpenAI's shape, charging nothing."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

pytestmark = pytest.mark.llama
MESSAGES = [{"role": "user", "content": "Name three fruits."}]


def _client(gw, key) -> OpenAI:
    return OpenAI(base_url=gw.base + "/v1", api_key=key, max_retries=0)


def _joined(tokens) -> str:
    return b"".join(bytes(t.bytes) for t in tokens).decode("utf-8", "replace")


def _check_entry(entry, top: int) -> None:
    assert entry.logprob <= 0 and len(entry.top_logprobs) == top
    values = [t.logprob for t in entry.top_logprobs]
    assert values == sorted(values, reverse=True)
    for t in entry.top_logprobs:
        assert t.logprob <= 0 and bytes(t.bytes).decode("utf-8", "replace") == t.token
    assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token


def test_chat_logprobs_greedy_not_streamed(llama_gateway):
    _, key = llama_gateway.account("lp-chat", 10**21)
    c = _client(llama_gateway, key).chat.completions.create(
        model="basis-default", messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens
    assert _joined(content) == c.choices[0].message.content
    for entry in content:
        _check_entry(entry, 3)
        # greedy: the chosen token is the most likely one, with the same number
        assert entry.top_logprobs[0].token == entry.token and entry.top_logprobs[0].logprob == entry.logprob


def test_chat_logprobs_streamed_each_chunk_carries_its_tokens(llama_gateway):
    _, key = llama_gateway.account("lp-chat-stream", 10**21)
    stream = _client(llama_gateway, key).chat.completions.create(
        model="basis-default", messages=MESSAGES, max_tokens=10, logprobs=True, top_logprobs=2, seed=3, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text, tokens = "", []
    for ch in chunks:
        if not ch.choices:
            continue
        delta, lp = ch.choices[0].delta.content or "", ch.choices[0].logprobs
        if delta:  # text arrives with the logprobs of the tokens that made it
            assert lp is not None and lp.content
        if lp is not None:
            tokens.extend(lp.content)
        text += delta
    assert len(tokens) == chunks[-1].usage.completion_tokens and _joined(tokens) == text
    for entry in tokens:
        _check_entry(entry, 2)


def test_chat_without_logprobs_has_none(llama_gateway):
    _, key = llama_gateway.account("lp-none", 10**21)
    c = _client(llama_gateway, key).chat.completions.create(model="basis-default", messages=MESSAGES, max_tokens=3)
    assert c.choices[0].logprobs is None
    c = _client(llama_gateway, key).chat.completions.create(model="basis-default", messages=MESSAGES, max_tokens=3,
                                                            logprobs=True)
    assert len(c.choices[0].logprobs.content) == c.usage.completion_tokens
    assert all(e.top_logprobs == [] for e in c.choices[0].logprobs.content)


def _check_legacy(lp, text: str, top: int, start: int = 0) -> None:
    assert "".join(lp.tokens) == text
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs) == len(lp.text_offset)
    assert all(v <= 0 for v in lp.token_logprobs)
    offset = start
    for token, off, alternatives in zip(lp.tokens, lp.text_offset, lp.top_logprobs, strict=True):
        assert off == offset
        offset += len(token)
        assert 1 <= len(alternatives) <= top and all(v <= 0 for v in alternatives.values())


def test_completions_logprobs_streamed_and_not(llama_gateway):
    _, key = llama_gateway.account("lp-legacy", 10**21)
    client = _client(llama_gateway, key)
    c = client.completions.create(model="basis-default", prompt="The capital of France is", max_tokens=8,
                                  temperature=0, logprobs=2)
    _check_legacy(c.choices[0].logprobs, c.choices[0].text, 2)
    assert len(c.choices[0].logprobs.tokens) == c.usage.completion_tokens
    text, offsets = "", []
    for ch in client.completions.create(model="basis-default", prompt="One, two,", max_tokens=6, logprobs=1,
                                        seed=1, stream=True):
        choice = ch.choices[0]
        if choice.text:
            assert choice.logprobs is not None
            _check_legacy(choice.logprobs, choice.text, 1, start=len(text))
            offsets += choice.logprobs.text_offset
        text += choice.text
    assert text and offsets[0] == 0


@pytest.mark.parametrize(("endpoint", "extra", "param"), [
    ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("chat", {"top_logprobs": 2}, "top_logprobs"),
    ("chat", {"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
    ("chat", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ("completions", {"logprobs": 6}, "logprobs"),
    ("completions", {"logprobs": 1, "echo": True}, "echo"),
])
def test_bad_logprobs_requests_are_400s_that_charge_nothing(llama_gateway, endpoint, extra, param):
    account_id, key = llama_gateway.account(f"lp-bad-{endpoint}-{param}-{len(extra)}-{extra.get('logprobs')}", 10**21)
    before = llama_gateway.ledger.get(account_id).available
    client = _client(llama_gateway, key)
    with pytest.raises(openai.BadRequestError) as bad:
        if endpoint == "chat":
            client.chat.completions.create(model="basis-default", messages=MESSAGES, max_tokens=2, **extra)
        else:
            client.completions.create(model="basis-default", prompt="x", max_tokens=2, **extra)
    assert bad.value.status_code == 400 and bad.value.param == param
    assert bad.value.body["type"] == "invalid_request_error"
    assert llama_gateway.ledger.get(account_id).available == before


def test_a_v2_worker_never_gets_a_logprobs_job_and_the_client_gets_a_clean_503(gateway):
    # The instant engine reports no logprobs, so its worker speaks protocol 2.
    gateway.start_worker(engine="instant")
    assert {c.protocol_version for c in gateway.runtime.hub._conns.values()} == {2}
    account_id, key = gateway.account("lp-v2", 10**21)
    client = _client(gateway, key)
    before = gateway.ledger.get(account_id).available
    for call in (lambda: client.chat.completions.create(model="basis-default", messages=MESSAGES, max_tokens=4,
                                                        logprobs=True),
                 lambda: client.completions.create(model="basis-default", prompt="x", max_tokens=4, logprobs=0)):
        with pytest.raises(openai.InternalServerError) as refused:
            call()
        assert refused.value.status_code == 503 and refused.value.code == "no_worker_available"
        assert "logprobs" in refused.value.message
    assert gateway.ledger.get(account_id).available == before
    # everything else still goes to the v2 worker
    c = client.chat.completions.create(model="basis-default", messages=MESSAGES, max_tokens=4)
    assert c.usage.completion_tokens == 4 and c.choices[0].logprobs is None
    r = httpx.get(f"{gateway.base}/v1/receipts/{c.id.removeprefix('chatcmpl-')}").json()
    assert r["core"]["served_by"] == "contributor"


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
                   "required": ["city"], "additionalProperties": False}}}


def test_logprobs_with_a_tool_call_stop_sequences_and_an_idempotent_replay(llama_gateway):
    _, key = llama_gateway.account("lp-misc", 10**21)
    client = _client(llama_gateway, key)
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    # a forced tool call: the entries cover the generated call, streamed with its tool_calls chunk too
    c = client.chat.completions.create(model="basis-default", messages=ask, tools=[WEATHER], temperature=0,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                       max_tokens=40, logprobs=True, top_logprobs=1)
    call = c.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert _joined(c.choices[0].logprobs.content) == call.function.arguments
    stream = client.chat.completions.create(model="basis-default", messages=ask, tools=[WEATHER], temperature=0,
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                            max_tokens=40, logprobs=True, top_logprobs=1, stream=True)
    streamed = [t for ch in stream if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content]
    assert _joined(streamed) == call.function.arguments
    # a stop sequence: the tokens that completed it are charged and listed, their text is not returned
    c = client.chat.completions.create(model="basis-default", messages=MESSAGES, max_tokens=30, temperature=0,
                                       stop=[" "], logprobs=True)
    content = c.choices[0].logprobs.content
    assert c.choices[0].finish_reason == "stop" and len(content) == c.usage.completion_tokens
    assert " " not in c.choices[0].message.content and " " in _joined(content)
    # an idempotent repeat replays the recorded text, without logprobs (they are not recorded)
    first = client.chat.completions.create(model="basis-default", messages=MESSAGES, max_tokens=4, logprobs=True,
                                           extra_headers={"Idempotency-Key": "lp-replay"})
    again = client.chat.completions.create(model="basis-default", messages=MESSAGES, max_tokens=4, logprobs=True,
                                           extra_headers={"Idempotency-Key": "lp-replay"})
    assert first.choices[0].logprobs is not None and again.choices[0].logprobs is None
    assert again.choices[0].message.content == first.choices[0].message.content


def test_the_gateways_own_llama_engine_serves_logprobs(tmp_path):
    from basis.gateway.runtime import GatewayOptions
    from tests.gateway.harness import Gateway

    gw = Gateway(tmp_path / "home", GatewayOptions(engine="llama-cpp", engine_models=["basis-default"],
                                                   heartbeat_interval=1.0))
    try:
        _, key = gw.account("lp-gateway-engine", 10**21)
        c = _client(gw, key).chat.completions.create(model="basis-default", messages=MESSAGES, max_tokens=6,
                                                     temperature=0, logprobs=True, top_logprobs=2)
        content = c.choices[0].logprobs.content
        assert len(content) == c.usage.completion_tokens and _joined(content) == c.choices[0].message.content
        assert all(e.top_logprobs[0].logprob == e.logprob for e in content)
        r = httpx.get(f"{gw.base}/v1/receipts/{c.id.removeprefix('chatcmpl-')}").json()
        assert r["core"]["served_by"] == "gateway"
    finally:
        gw.close()
