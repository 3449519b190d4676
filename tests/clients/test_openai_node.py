"""The official openai Node SDK (npm `openai`, pinned in package.json) under node, against the live gateway:
tests/clients/node/openai_sdk.mjs runs each feature once and prints JSON; each test here checks one part."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.clients.conftest import Live, check_usage, run_node

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def broke_account(live: Live) -> tuple[str, str]:
    key = live.key("node-broke", credit=0)
    return live.gateway.ledger.authenticate_key(key).account_id, key


@pytest.fixture(scope="module")
def report(live: Live, broke_account) -> dict:
    return run_node(live, "openai_sdk.mjs", BASIS_BROKE_KEY=broke_account[1])


def test_chat_and_concurrent_requests(live, report):
    chat = report["chat"]
    assert chat["object"] == "chat.completion" and chat["message"]["role"] == "assistant"
    assert isinstance(chat["message"]["content"], str) and chat["finish_reason"] in ("stop", "length")
    usage = chat["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    check_usage(live, chat["id"], usage["prompt_tokens"], usage["completion_tokens"], max_tokens=12)
    assert len(set(chat["concurrent_ids"])) == 2


def test_streaming_with_usage(live, report):
    stream = report["stream"]
    (chat_id,) = stream["ids"]
    assert stream["text"] and stream["finish_reasons"] in (["stop"], ["length"]) and stream["last_choices"] == 0
    check_usage(live, chat_id, stream["usage"]["prompt_tokens"], stream["usage"]["completion_tokens"],
                max_tokens=10)


def test_structured_output_parsed_with_zod(report):
    parse = report["parse"]
    assert parse["finish_reason"] == "stop"
    assert json.loads(parse["content"]) == parse["parsed"]
    assert set(parse["parsed"]) == {"name", "country", "capital"} and isinstance(parse["parsed"]["capital"], bool)
    assert all(isinstance(parse["parsed"][k], str) and len(parse["parsed"][k]) <= 16 for k in ("name", "country"))


def test_tool_calls_required_named_and_parsed_by_zod_function(report):
    required = report["tools"]["required"]
    assert required["finish_reason"] == "tool_calls" and required["message"]["content"] is None
    (call,) = required["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_") and call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 16}}, "required": ["city"],
        "additionalProperties": False})
    named = report["tools"]["named"]
    (call,) = named["calls"]
    assert named["finish_reason"] == "tool_calls" and call["name"] == "get_forecast"
    assert json.loads(call["arguments"]) == call["parsed_arguments"]
    assert call["parsed_arguments"]["unit"] in ("celsius", "fahrenheit")


def test_typed_errors_and_nothing_charged(live, report, broke_account):
    errors = report["errors"]
    expected = {"bad_key": ("AuthenticationError", 401, "invalid_api_key"),
                "unknown_model": ("NotFoundError", 404, "model_not_found"),
                "tool_choice_auto": ("BadRequestError", 400, "unsupported_parameter"),
                "bad_schema": ("BadRequestError", 400, "unsupported_schema_keyword"),
                "zod_int": ("BadRequestError", 400, "unsupported_schema_keyword"),
                # The SDK has no class of its own for 402: its base APIError, with the status and code.
                "no_credit": ("APIError", 402, "insufficient_credit")}
    for case, (cls, status, code) in expected.items():
        err = errors[case]
        assert (err["raised"], err["status"], err["code"]) == (cls, status, code), (case, err)
        assert "APIError" in err["instance_of"] and err["message"]
    assert errors["tool_choice_auto"]["param"] == "tool_choice" and "required" in errors["tool_choice_auto"]["message"]
    assert "'minimum'" in errors["zod_int"]["message"] or "'maximum'" in errors["zod_int"]["message"]
    assert live.gateway.ledger.get(broke_account[0]).spent == 0
