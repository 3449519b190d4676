"""Structured output and tool calls against a live gateway and a llama.cpp worker (SmolLM2-135M-Instruct):
random schemas decode to valid JSON, and the official openai SDK's own helpers parse the results."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from tests.gateway.test_worker_failures import receipt_for

pytestmark = pytest.mark.llama
MAX_TOKENS = 160  # every generated schema's longest valid output fits well inside this
NAMES = st.sampled_from(["name", "city", "count", "ok", "color", "tags", "level", "note", "size", "id"])


def _leaves() -> st.SearchStrategy[dict]:
    short_words = st.lists(st.sampled_from(["red", "green", "blue", "yes", "no", "low", "high"]), min_size=1,
                           max_size=3, unique=True)
    return st.one_of(
        st.just({"type": "integer"}),
        st.just({"type": "boolean"}),
        st.just({"type": "null"}),
        st.integers(1, 8).map(lambda n: {"type": "string", "maxLength": n}),
        short_words.map(lambda words: {"enum": words}),
        st.sampled_from(["ok", 3, True, None]).map(lambda v: {"const": v}),
        short_words.map(lambda words: {"type": "array", "items": {"enum": words}, "minItems": 1, "maxItems": 2}),
    )


def _objects(values: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
    def build(props: dict, optional: set) -> dict:
        return {"type": "object", "properties": props, "required": [p for p in props if p not in optional],
                "additionalProperties": False}

    return st.dictionaries(NAMES, values, min_size=1, max_size=3).flatmap(
        lambda props: st.sets(st.sampled_from(sorted(props))).map(lambda optional: build(props, optional)))


SCHEMAS = st.one_of(
    _leaves(),
    _objects(_leaves()),
    _objects(st.one_of(_leaves(), _objects(_leaves()))),
    st.lists(_leaves(), min_size=2, max_size=2).map(lambda alts: {"anyOf": alts}),
)


def _client(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base + "/v1", api_key=key, max_retries=0)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=SCHEMAS)
def test_random_schemas_decode_to_output_that_validates(llama_gateway, schema):
    key = _key(llama_gateway)
    r = httpx.post(f"{llama_gateway.base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   timeout=120, json={
                       "model": "basis-default", "max_tokens": MAX_TOKENS, "temperature": 0,
                       "messages": [{"role": "user", "content": "Reply in JSON."}],
                       "response_format": {"type": "json_schema",
                                           "json_schema": {"name": "out", "schema": schema, "strict": True}}})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop", (schema, choice)
    jsonschema.validate(json.loads(choice["message"]["content"]), schema)


_keys: dict[int, str] = {}


def _key(gw) -> str:
    if id(gw) not in _keys:
        _keys[id(gw)] = gw.account("structured-llama", 10**23)[1]
    return _keys[id(gw)]


class Answer(BaseModel):
    answer: Literal["yes", "no"]


class City(BaseModel):
    name: str = Field(max_length=16)
    country: str = Field(max_length=16)
    capital: bool


def _parse(client: openai.OpenAI):
    """client.chat.completions.parse where the SDK has it, else client.beta.chat.completions.parse."""
    chat = client.chat.completions
    return chat.parse if hasattr(chat, "parse") else client.beta.chat.completions.parse


def test_sdk_parse_with_a_pydantic_model_and_a_contributor_receipt(llama_gateway):
    client = _client(llama_gateway, _key(llama_gateway))
    c = _parse(client)(model="basis-default", messages=[{"role": "user", "content": "Describe Paris."}],
                       response_format=City, max_tokens=MAX_TOKENS, temperature=0)
    msg = c.choices[0].message
    assert c.choices[0].finish_reason == "stop" and isinstance(msg.parsed, City), msg
    assert City.model_validate_json(msg.content) == msg.parsed
    core = receipt_for(llama_gateway, c.id.removeprefix("chatcmpl-"))["core"]
    assert core["outcome"] == "completed" and core["served_by"] == "contributor" and core["reward_bps"] > 0

    # The SDK's streaming helper assembles and parses the streamed content.
    with client.chat.completions.stream(model="basis-default", messages=[{"role": "user", "content": "Describe Oslo."}],
                                        response_format=City, max_tokens=MAX_TOKENS, temperature=0) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, City) and final.choices[0].finish_reason == "stop"

    obj = client.chat.completions.create(model="basis-default", max_tokens=MAX_TOKENS, temperature=0,
                                         messages=[{"role": "user", "content": "A JSON object about cats."}],
                                         response_format={"type": "json_object"})
    if obj.choices[0].finish_reason == "stop":  # a free-form object may run to the limit: then it is cut short
        assert isinstance(json.loads(obj.choices[0].message.content), dict)
    else:
        assert obj.choices[0].finish_reason == "length"


class GetWeather(BaseModel):
    city: str = Field(max_length=16)
    unit: str = Field(json_schema_extra={"enum": ["celsius", "fahrenheit"]})


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_sdk_tool_calls_required_and_named(llama_gateway):
    client = _client(llama_gateway, _key(llama_gateway))
    c = client.chat.completions.create(model="basis-default", messages=ASK, tools=[WEATHER, ADD],
                                       tool_choice="required", max_tokens=MAX_TOKENS, temperature=0)
    choice = c.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in ("get_weather", "add")
    schema = (WEATHER if call.function.name == "get_weather" else ADD)["function"]["parameters"]
    jsonschema.validate(json.loads(call.function.arguments), schema)

    named = client.chat.completions.create(
        model="basis-default", messages=ASK, tools=[WEATHER, ADD], max_tokens=MAX_TOKENS, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = named.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and named.choices[0].finish_reason == "tool_calls"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])

    # The tool's answer goes back in the history, and the conversation goes on.
    follow = client.chat.completions.create(model="basis-default", max_tokens=8, messages=[
        *ASK, named.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"}])
    assert follow.choices[0].message.content is not None


def test_sdk_tool_calls_streamed_and_parsed(llama_gateway):
    client = _client(llama_gateway, _key(llama_gateway))
    stream = client.chat.completions.create(model="basis-default", messages=ASK, tools=[WEATHER],
                                            tool_choice="required", max_tokens=MAX_TOKENS, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    deltas = [d for ch in chunks if ch.choices for d in (ch.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"

    parsed = _parse(client)(model="basis-default", messages=ASK, max_tokens=MAX_TOKENS, temperature=0,
                            tools=[openai.pydantic_function_tool(GetWeather)], tool_choice="required")
    (call,) = parsed.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, GetWeather)
    assert call.function.parsed_arguments.unit in ("celsius", "fahrenheit")


def test_llama_grammar_keeps_control_characters_out_of_strings():
    """llama-cpp-python's bundled converter lets a string hold raw control characters (a newline:
    not JSON); the engine's grammar uses JSON's own string character rule."""
    from tests.models.support import require_llama

    require_llama()
    from basis.engines.llama_cpp import _grammar

    rules = _grammar(json.dumps({"type": "object"}))._grammar.splitlines()
    (char,) = [r for r in rules if r.startswith("char ::= ")]
    assert "\\x00-\\x1F" in char


def test_llama_workers_advertise_constrained_decoding_and_replays_keep_the_call(llama_gateway):
    assert all("json_schema" in c.features for c in llama_gateway.runtime.hub._conns.values())
    key = _key(llama_gateway)
    body = {"model": "basis-default", "messages": ASK, "tools": [WEATHER], "max_tokens": MAX_TOKENS,
            "temperature": 0, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "tool-call-once"}
    url = f"{llama_gateway.base}/v1/chat/completions"
    first = httpx.post(url, json=body, headers=headers, timeout=120)
    again = httpx.post(url, json=body, headers=headers, timeout=120)
    assert first.status_code == 200 and again.headers["basis-idempotent-replay"] == "true"
    assert again.json() == first.json() and first.json()["choices"][0]["finish_reason"] == "tool_calls"


def test_the_gateways_own_llama_engine_serves_constrained_jobs(tmp_path):
    from tests.models.support import require_llama

    require_llama()
    from basis.gateway.runtime import GatewayOptions
    from tests.gateway.harness import Gateway

    gw = Gateway(tmp_path / "home", GatewayOptions(engine="llama-cpp", engine_models=["basis-default"],
                                                   heartbeat_interval=1.0))
    try:
        _, key = gw.account("structured-gateway", 10**21)
        c = _parse(_client(gw, key))(model="basis-default", messages=[{"role": "user", "content": "Is Rome old?"}],
                                     response_format=Answer, max_tokens=MAX_TOKENS, temperature=0)
        assert isinstance(c.choices[0].message.parsed, Answer)
        core = receipt_for(gw, c.id.removeprefix("chatcmpl-"))["core"]
        assert core["served_by"] == "gateway" and core["outcome"] == "completed"
    finally:
        gw.close()


_NAMES = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=6)
_ANY_LEAF = st.one_of(
    st.sampled_from([{"type": "integer"}, {"type": "number"}, {"type": "string"}, {"type": "boolean"},
                     {"type": ["string", "null"]}, {}, {"type": "object"}, {"type": "array"}]),
    st.integers(0, 5).map(lambda n: {"type": "string", "minLength": 0, "maxLength": n}),
    st.lists(st.one_of(st.text(max_size=4), st.integers(), st.none(), st.booleans()), min_size=1,
             max_size=4).map(lambda values: {"enum": values}),
    st.one_of(st.text(max_size=4), st.integers(), st.none()).map(lambda v: {"const": v}),
)
_ANY_SCHEMA = st.recursive(_ANY_LEAF, lambda kids: st.one_of(
    st.dictionaries(_NAMES, kids, min_size=1, max_size=3).flatmap(
        lambda props: st.sets(st.sampled_from(sorted(props))).map(lambda req: {
            "type": "object", "properties": props, "required": sorted(req), "additionalProperties": False})),
    st.tuples(kids, st.integers(0, 2), st.integers(2, 4)).map(
        lambda t: {"type": "array", "items": t[0], "minItems": t[1], "maxItems": t[2]}),
    st.lists(kids, min_size=1, max_size=3).map(lambda alts: {"anyOf": alts})), max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(schema=_ANY_SCHEMA)
def test_every_schema_the_gateway_admits_compiles_to_a_llama_grammar(schema):
    """No model run: what check_schema accepts must become a grammar llama.cpp's own parser takes
    (else a worker would fail the job before its first token). Found: an empty `items` schema and
    strings with backslash escapes break llama-cpp-python's converter; both are now refused (400)."""
    import llama_cpp

    from basis.engines.llama_cpp import _grammar
    from basis.gateway.chat.structured import check_schema
    from basis.gateway.errors import APIError
    from tests.models.support import default_bindings

    try:
        check_schema(schema, "schema")
    except APIError as exc:
        assert exc.status == 400
        return
    vocab = default_bindings()["basis-default"].vocab._vocab_handle()
    grammar = _grammar(json.dumps(schema, sort_keys=True))._grammar
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler, grammar
    llama_cpp.llama_sampler_free(sampler)
