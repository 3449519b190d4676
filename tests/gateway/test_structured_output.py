"""Structured output and tool calls by schema: what the gateway refuses, routes and fails, without a
real model (the instant engine cannot decode under a schema; a rogue worker breaks one)."""

from __future__ import annotations

import json

import httpx
import pytest

from basis.gateway.chat.structured import constraint_for, render_history
from basis.gateway.errors import APIError
from basis.protocol import Hello, Job, parse_worker_message
from tests.gateway.test_api import CHAT, assert_error, post, spent
from tests.gateway.test_worker_failures import receipt_for

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


def schema_format(schema, name="person"):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


BAD = [
    # (extra request fields, param, code)
    ({"response_format": {"type": "xml"}}, "response_format.type", "invalid_value"),
    ({"response_format": "json"}, "response_format", "invalid_value"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "invalid_value"),
    ({"response_format": schema_format(PERSON, name="no spaces allowed")}, "response_format.json_schema.name",
     "invalid_value"),
    ({"response_format": schema_format({"type": "strng"})}, "response_format.json_schema.schema", "invalid_schema"),
    ({"response_format": schema_format({"type": "object", "required": "name"})},
     "response_format.json_schema.schema", "invalid_schema"),
    ({"response_format": schema_format({"type": "object", "properties": {}, "required": ["ghost"]})},
     "response_format.json_schema.schema", "invalid_schema"),
    ({"response_format": schema_format([1, 2])}, "response_format.json_schema.schema", "invalid_schema"),
    ({"response_format": schema_format({"type": "string", "pattern": "^a+$"})},
     "response_format.json_schema.schema", "unsupported_schema_keyword"),
    ({"response_format": schema_format({"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}}})},
     "response_format.json_schema.schema", "unsupported_schema_keyword"),
    ({"response_format": schema_format({"oneOf": [{"type": "string"}, {"type": "integer"}]})},
     "response_format.json_schema.schema", "unsupported_schema_keyword"),
    ({"response_format": schema_format({"$ref": "https://example.com/s.json"})},
     "response_format.json_schema.schema", "unsupported_schema_keyword"),
    ({"tools": [WEATHER]}, "tool_choice", "unsupported_parameter"),  # "auto": SmolLM2's template has no tools
    ({"tools": [WEATHER], "tool_choice": "auto"}, "tool_choice", "unsupported_parameter"),
    ({"tools": [], "tool_choice": "required"}, "tools", "invalid_value"),
    ({"tools": [{"type": "function"}], "tool_choice": "required"}, "tools[0]", "invalid_value"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}], "tool_choice": "required"},
     "tools[0].function.name", "invalid_value"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],
      "tool_choice": "required"}, "tools[0].function.parameters", "invalid_value"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": 3}}}],
      "tool_choice": "required"}, "tools[0].function.parameters", "invalid_schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string", "format": "email"}}}}}], "tool_choice": "required"},
     "tools[0].function.parameters", "unsupported_schema_keyword"),
    ({"tools": [WEATHER, WEATHER], "tool_choice": "required"}, "tools[1].function.name", "invalid_value"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "invalid_value"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
    ({"tool_choice": "required"}, "tool_choice", "invalid_value"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
     "response_format", "invalid_value"),
    ({"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
    ({"response_format": schema_format({"type": "object", "properties": {"x": True}})},
     "response_format.json_schema.schema", "unsupported_schema_keyword"),
    ({"response_format": schema_format({"enum": []})}, "response_format.json_schema.schema", "invalid_schema"),
    ({"response_format": schema_format({"$ref": "#/$defs/missing"})}, "response_format.json_schema.schema",
     "invalid_schema"),
    ({"response_format": schema_format({"$ref": "#/$defs/a/properties/b", "$defs": {"a": {"type": "object"}}})},
     "response_format.json_schema.schema", "unsupported_schema_keyword"),
    ({"tools": [WEATHER], "tool_choice": "required", "stop": ["}"]}, "stop", "invalid_value"),
    ({"response_format": schema_format({"type": "array", "items": {}})}, "response_format.json_schema.schema",
     "unsupported_schema_keyword"),
    ({"response_format": schema_format({"enum": ['say "hi"']})}, "response_format.json_schema.schema",
     "unsupported_schema_keyword"),
    ({"response_format": schema_format({"type": "object", "properties": {"a\\b": {"type": "integer"}}})},
     "response_format.json_schema.schema", "unsupported_schema_keyword"),
]


@pytest.mark.parametrize(("extra", "param", "code"), BAD)
def test_bad_constraints_are_refused_with_the_parameter_named(extra, param, code):
    with pytest.raises(APIError) as caught:
        constraint_for(extra, "basis-default", extra.get("stop"))
    err = caught.value.body()["error"]
    assert (caught.value.status, err["param"], err["code"]) == (400, param, code), err
    assert err["message"] and err["type"] == "invalid_request_error"


def test_constraints_the_engines_enforce():
    assert constraint_for({"response_format": {"type": "text"}}, "m") is None
    assert constraint_for({"response_format": {"type": "json_object"}}, "m").schema == {"type": "object"}
    c = constraint_for({"response_format": schema_format(PERSON)}, "m")
    assert c.kind == "json_schema" and c.problem('{"name": "Ada", "age": 36}') is None
    assert "age" in c.problem('{"name": "Ada", "age": "old"}') and "not JSON" in c.problem('{"name": "Ada"')
    named = constraint_for({"tools": [WEATHER], "tool_choice": {"type": "function",
                                                                 "function": {"name": "get_weather"}}}, "m")
    assert named.tool.name == "get_weather" and named.schema == WEATHER["function"]["parameters"]
    call = named.tool_calls('{"city": "Paris"} ', "0e5f4a3c-0000-4000-8000-000000000000")[0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert call["id"].startswith("call_") and call["type"] == "function"
    add = {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/N"}}, "required": ["a"],
        "$defs": {"N": {"type": "integer"}}}}}
    either = constraint_for({"tools": [WEATHER, add], "tool_choice": "required"}, "m")
    assert either.tool is None and either.problem('{"name": "add", "arguments": {"a": 2}}') is None
    assert either.problem('{"name": "add", "arguments": {"a": "2"}}') is not None  # the hoisted $ref holds
    assert either.problem('{"name": "get_weather", "arguments": {"a": 2}}') is not None
    assert either.tool_calls('{"name": "add", "arguments": {"a": 2}}', "x")[0]["function"] == {
        "name": "add", "arguments": '{"a": 2}'}
    assert constraint_for({"tools": [WEATHER], "tool_choice": "none"}, "m") is None


def test_tool_history_renders_for_any_template():
    from basis.gateway.chat.schemas import Message

    history = [Message(role="user", content="Weather in Paris?"),
               Message(role="assistant", content=None, tool_calls=[
                   {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                     "arguments": '{"city": "Paris"}'}}]),
               Message(role="tool", content="18C, sunny", tool_call_id="call_1")]
    rendered = render_history(history, "Call a function.")
    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "user"]
    assert "get_weather" in rendered[2]["content"] and rendered[3]["content"].startswith("Result of get_weather")
    with pytest.raises(APIError):
        render_history([Message(role="tool", content="x")], None)
    with pytest.raises(APIError):
        render_history([Message(role="assistant", tool_calls=[{"function": {"name": 3}}])], None)


def test_protocol_carries_the_schema_and_an_old_hello_has_no_features():
    job = Job(job_id="j", model="m", prompt_ids=[1], max_tokens=4, json_schema=PERSON)
    assert Job.model_validate_json(job.model_dump_json()).json_schema == PERSON
    old = '{"type":"hello","protocol_version":1,"worker_address":"0x0","signature":"0x","models":[]}'
    hello = parse_worker_message(old)
    assert isinstance(hello, Hello) and hello.features == []


def test_bad_input_over_http_is_a_400_in_openai_shape_and_charges_nothing(gateway):
    gateway.start_worker()
    account_id, key = gateway.account("structured-bad", 10**21)
    ok = {"model": "basis-default", "messages": CHAT, "max_tokens": 4}
    for extra, param, code in BAD:
        err = assert_error(post(gateway, key, {**ok, **extra}), 400, code)
        assert err["param"] == param
    bad_history = [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]}]
    assert_error(post(gateway, key, {**ok, "messages": [*CHAT, *bad_history]}), 400)
    assert spent(gateway, account_id) == 0 and gateway.ledger.get(account_id).reserved == 0


def test_workers_without_constrained_decoding_never_get_such_jobs(gateway):
    """The instant worker does not advertise "json_schema": a constrained job is not sent to it (it
    would ignore the schema); with no capable worker the client gets a clear 503, nothing charged."""
    gateway.start_worker()
    account_id, key = gateway.account("structured-old", 10**21)
    assert all(not c.features for c in gateway.runtime.hub._conns.values())
    body = {"model": "basis-default", "messages": CHAT, "max_tokens": 4, "response_format": {"type": "json_object"}}
    err = assert_error(post(gateway, key, body), 503, "no_worker_available")
    assert "structured output" in err["message"]
    tool = {**body, "response_format": None, "tools": [WEATHER], "tool_choice": "required"}
    assert_error(post(gateway, key, tool), 503, "no_worker_available")
    plain = post(gateway, key, {"model": "basis-default", "messages": CHAT, "max_tokens": 4})
    assert plain.status_code == 200  # the same worker still serves unconstrained jobs
    core = receipt_for(gateway, plain.headers["basis-job-id"])["core"]
    assert spent(gateway, account_id) == int(core["charged"])  # the plain job only: the 503s cost nothing
    assert gateway.ledger.get(account_id).reserved == 0


def test_a_worker_whose_output_breaks_the_schema_fails_the_job_without_reward(gateway):
    gateway.start_worker(rogue="break-schema")
    account_id, key = gateway.account("structured-rogue", 10**21)
    body = {"model": "basis-default", "messages": CHAT, "max_tokens": 8, "response_format": schema_format(PERSON)}
    r = post(gateway, key, body)
    err = assert_error(r, 502, "invalid_structured_output")
    assert "schema" in err["message"] and err["type"] == "server_error"
    gateway.views_caught_up()
    (only,) = httpx.get(f"{gateway.base}/v1/receipts").json()["data"]  # this gateway's one job so far
    core = receipt_for(gateway, only["job_id"])["core"]
    assert core["outcome"] == "failed" and core["served_by"] == "contributor"
    assert core["reward"] == "0" and core["reward_bps"] == 0
    assert gateway.ledger.get(account_id).spent == int(core["charged"])

    stream = post(gateway, key, {**body, "stream": True})
    events = [json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: {")]
    assert events[-1]["error"]["code"] == "invalid_structured_output"
    assert not any(e.get("choices") and e["choices"][0]["finish_reason"] for e in events[:-1])
    tool = post(gateway, key, {**body, "response_format": None, "tools": [WEATHER], "tool_choice": "required"})
    assert_error(tool, 502, "invalid_structured_output")


def test_a_worker_whose_engine_cannot_constrain_refuses_such_a_job_before_any_token():
    """Defence in depth: the gateway never sends it one, but if it did, the worker says so at once."""
    import asyncio

    from eth_account import Account

    from basis.protocol import Error, ModelOffer
    from basis.worker import Worker

    class PlainEngine:  # a test double: any engine without supports_json_schema; never asked to generate
        models = ("basis-default",)

        def generate(self, request):
            raise AssertionError("a constrained job must not reach an engine that cannot constrain")

        async def aclose(self):
            return None

    worker = Worker(gateway_url="ws://unused", private_key=Account.create().key.hex(), engine=PlainEngine(),
                    offers=[ModelOffer(model="basis-default", binding_hash="0x00", capacity=1)])
    assert worker.features == []
    sent = []

    async def send(msg):
        sent.append(msg)

    job = Job(job_id="j1", model="basis-default", prompt_ids=[1, 2], max_tokens=4, json_schema=PERSON)
    asyncio.run(worker._run_job(job, send))
    assert len(sent) == 1 and isinstance(sent[0], Error) and "JSON schema" in sent[0].message


def test_a_gateway_engine_that_cannot_constrain_does_not_serve_such_jobs(tmp_path):
    from basis.gateway.runtime import GatewayOptions
    from tests.gateway.harness import Gateway

    gw = Gateway(tmp_path / "home", GatewayOptions(engine="instant", heartbeat_interval=1.0))
    try:
        account_id, key = gw.account("structured-instant", 10**21)
        body = {"model": "basis-default", "messages": CHAT, "max_tokens": 4}
        assert post(gw, key, body).status_code == 200  # the instant engine serves plain chat
        err = assert_error(post(gw, key, {**body, "response_format": {"type": "json_object"}}), 503,
                           "no_worker_available")
        assert "structured output" in err["message"]
        gw.views_caught_up()
        assert gw.ledger.get(account_id).reserved == 0
    finally:
        gw.close()
