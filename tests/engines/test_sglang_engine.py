"""SGLangEngine against a protocol double of sglang's HTTP API, one test per version behaviour
(sglang needs CUDA; see docs/engines.md), and against the real server where sglang and a GPU exist
(@gpu, skipped elsewhere with the reason printed)."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest

from basis.engines import EngineError, GenerateRequest
from basis.engines import sglang as sglang_mod
from basis.engines.sglang import SGLangEngine
from basis.engines.sglang_server import (
    MIN_VERSION_TEXT,
    launch_command,
    launch_server,
    parse_version,
    sglang_available,
)
from basis.models import UTF8Matcher
from tests.engines.sglang_double import Behaviour, build_app, serve

pytestmark = pytest.mark.llama


async def run(engine, req):
    return [s async for s in engine.generate(req)]


def check(binding, steps):
    m = UTF8Matcher()
    n = sum(m.feed(binding.token_pieces(s.ids), s.text) for s in steps[:-1]) + m.finish(steps[-1].text)
    ids = [i for s in steps for i in s.ids]
    assert n == len(ids)
    return ids, "".join(s.text for s in steps)


def eot_of(binding) -> int:
    return binding.vocab.eos_id  # the binding's end of turn (<|im_end|> for SmolLM2; was Gemma's <end_of_turn>)


def scripted(binding, text="Bonjour 🙂 日本"):
    return [*binding.tokenize(text), eot_of(binding)]


def one_job(app, binding, req=None, **engine_kw):
    req = req or GenerateRequest(prompt_ids=[2, 105, 2364, 107, 9, 11], max_tokens=50, request_id="job-1")

    async def scenario():
        async with serve(app) as url:
            eng = SGLangEngine.for_binding(url, binding, startup_timeout=5.0, **engine_kw)
            try:
                return await run(eng, req), eng
            finally:
                await eng.aclose()

    return asyncio.run(scenario())


SUPPORTED = [("0.5.6", False), ("0.5.9", False), ("0.5.10", False), ("0.5.10", True), ("0.5.23", False),
             ("0.5.23", True)]


@pytest.mark.parametrize(("version", "incremental"), SUPPORTED)
@pytest.mark.parametrize("burst", [1, 3])
def test_supported_versions_stream_every_id(binding, version, incremental, burst):
    """Cumulative (0.5.6+) and incremental (0.5.10+, queued deltas merged) streams, chunks queued in bursts."""
    text = "Bonjour 🙂 日本"
    script = scripted(binding, text)
    beh = Behaviour.for_version(version, incremental=incremental)
    app = build_app(script, eos_id=eot_of(binding), behaviour=beh, burst=burst,
                    pieces=lambda t: binding.token_bytes(t).decode("utf-8", "replace"))
    steps, eng = one_job(app, binding)
    ids, out = check(binding, steps)
    assert ids == script[:-1] and out == text  # EOT filtered, text rebuilt from ids
    assert steps[-1].finish_reason == "stop" and steps[-1].completion_tokens == len(script)
    assert eng.server.version == version and eng.server.incremental is incremental
    req = app.state.requests[0]
    assert req["input_ids"] == [2, 105, 2364, 107, 9, 11] and req["stream"] is True and req["rid"] == "job-1"
    assert app.state.aborted == []


@pytest.mark.parametrize(("version", "incremental"), [("0.5.6", False), ("0.5.23", True)])
@pytest.mark.parametrize("burst", [1, 3])
def test_logprobs_come_from_meta_info_aligned_with_the_ids(binding, version, incremental, burst):
    from tests.engines.sglang_double import reference_logprobs

    script = scripted(binding, "Bonjour 🙂")
    ref = reference_logprobs(binding.n_vocab)
    app = build_app(script, eos_id=eot_of(binding), behaviour=Behaviour.for_version(version, incremental=incremental),
                    burst=burst, reference=ref, pieces=lambda t: binding.token_bytes(t).decode("utf-8", "replace"))
    prompt = [2, 105, 2364]
    req = GenerateRequest(prompt_ids=prompt, max_tokens=50, request_id="lp", logprobs=True, top_logprobs=3)
    steps, _ = one_job(app, binding, req, original_logprobs=True)
    ids, _ = check(binding, steps)
    lps = [lp for s in steps[:-1] for lp in s.logprobs]
    assert ids == script[:-1] and len(lps) == len(ids)  # the end-of-turn id's entry is dropped with it
    for pos, (tok, lp) in enumerate(zip(ids, lps, strict=True)):
        row = ref(prompt + script[:pos])
        assert lp.logprob == row[tok] and [i for i, _ in lp.top] == sorted(range(len(row)), key=lambda v: -row[v])[:3]
    sent = app.state.requests[0]
    assert sent["return_logprob"] is True and sent["top_logprobs_num"] == 3 and sent["logprob_start_len"] == -1


def test_logprobs_need_a_server_reporting_them_before_temperature(binding):
    app = build_app(scripted(binding), eos_id=eot_of(binding))
    req = GenerateRequest(prompt_ids=[2, 105], max_tokens=5, logprobs=True)
    assert not SGLangEngine("http://127.0.0.1:9", ["m"]).supports_logprobs
    with pytest.raises(EngineError, match="SGLANG_RETURN_ORIGINAL_LOGPROB"):
        one_job(app, binding, req)
    steps, _ = one_job(app, binding, GenerateRequest(prompt_ids=[2, 105], max_tokens=5), original_logprobs=True)
    assert all(s.logprobs is None for s in steps) and "return_logprob" not in app.state.requests[-1]


def test_every_sampling_parameter_is_explicit_with_the_bindings_eos(binding):
    """top_k/min_p/penalties neutral, the binding's eos and other control ids in stop_token_ids (relaying a
    control id fails the job, so the engine stops there), 0.5.23's strict key check passes,
    and a server's --preferred-sampling-params that only touch keys we send cannot change the job."""
    script = scripted(binding, "hi there")
    beh = Behaviour.for_version("0.5.23", preferred_sampling_params={"top_k": 20, "min_p": 0.1,
                                                                     "repetition_penalty": 1.3})
    app = build_app(script, eos_id=eot_of(binding), behaviour=beh)
    req = GenerateRequest(prompt_ids=[2, 105], max_tokens=7, temperature=0.7, top_p=0.9, stop_ids=[107],
                          request_id="j")
    steps, _ = one_job(app, binding, req)
    assert steps[-1].final
    sp = app.state.requests[0]["sampling_params"]
    eos = sorted(set(binding.eos_token_ids) | set(binding.control_token_ids) | {107})
    assert sp == {"max_new_tokens": 7, "temperature": 0.7, "top_p": 0.9, "top_k": -1, "min_p": 0.0,
                  "frequency_penalty": 0.0, "presence_penalty": 0.0, "repetition_penalty": 1.0,
                  "min_new_tokens": 0, "n": 1, "ignore_eos": False, "stop": None, "stop_regex": None,
                  "json_schema": None, "regex": None, "ebnf": None, "structural_tag": None,
                  "stop_token_ids": eos}
    assert len(binding.eos_token_ids) >= 1 and len(binding.control_token_ids) >= 1


def test_a_schema_job_sends_sglang_its_json_schema(binding):
    """Structured output / tool calls: sglang decodes under the schema, sent as JSON text."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    app = build_app(scripted(binding, "hi there"), eos_id=eot_of(binding), behaviour=Behaviour.for_version("0.5.23"))
    req = GenerateRequest(prompt_ids=[2, 105], max_tokens=7, request_id="j", json_schema=schema)
    steps, _ = one_job(app, binding, req)
    assert steps[-1].final
    assert json.loads(app.state.requests[0]["sampling_params"]["json_schema"]) == schema


def test_preferred_sampling_params_the_adapter_cannot_override_are_refused(binding):
    beh = Behaviour.for_version("0.5.10", preferred_sampling_params={"logit_bias": {"5": 10.0}})
    app = build_app([1], eos_id=1, behaviour=beh)
    with pytest.raises(EngineError, match="preferred-sampling-params setting logit_bias"):
        one_job(app, binding)
    assert app.state.requests == []


@pytest.mark.parametrize("version", ["0.4.6.post5", "0.5.0", "0.5.1", "0.5.2", "0.5.4", "0.5.5"])
def test_version_gate_refuses_unreadable_streams(binding, version):
    app = build_app(scripted(binding), eos_id=eot_of(binding), behaviour=Behaviour.for_version(version))
    with pytest.raises(EngineError, match=f"sglang {version} is not supported.*minimum is sglang {MIN_VERSION_TEXT}"):
        one_job(app, binding)
    assert app.state.requests == []  # refused before any job


@pytest.mark.parametrize("version", ["0.5.6", "0.5.9"])
def test_version_gate_refuses_stream_output_before_0_5_10(binding, version):
    app = build_app(scripted(binding), eos_id=1, behaviour=Behaviour.for_version(version, incremental=True))
    with pytest.raises(EngineError, match="--stream-output, which drops queued token ids"):
        one_job(app, binding)
    assert app.state.requests == []


def test_version_from_slash_version_and_stream_mode_detected(binding):
    """A front end exposing only /version: the version gates, the mode is detected per stream."""
    script = scripted(binding, "one two three four")
    for incremental in (False, True):
        beh = Behaviour.for_version("0.5.12", incremental=incremental, info="version_only")
        app = build_app(script, eos_id=eot_of(binding), behaviour=beh, burst=2)
        steps, eng = one_job(app, binding)
        assert [i for s in steps for i in s.ids] == script[:-1]
        assert eng.server.source == "/version" and eng.server.incremental is None
        assert app.state.info_calls == ["/server_info", "/get_server_info", "/version"]


def test_stream_output_deltas_detected_on_0_5_8_fail_the_job(binding):
    beh = Behaviour.for_version("0.5.8", incremental=True, info="version_only")
    app = build_app(scripted(binding, "one two three four five"), eos_id=eot_of(binding), behaviour=beh)
    with pytest.raises(EngineError, match="drops queued chunks"):
        one_job(app, binding)
    assert app.state.aborted == ["job-1"]


# -- the end-of-job check: builds that misreport their version cannot relay wrong ids ----------

def test_leaked_prompt_ids_fail_the_job(binding):
    """0.5.1-0.5.4: the first chunk carries up to 5 prompt ids; caught by the completion_tokens check."""
    beh = Behaviour.for_version("0.5.4", incremental=True, reported_version="0.5.10")
    app = build_app(scripted(binding, "a b c"), eos_id=eot_of(binding), behaviour=beh)
    with pytest.raises(EngineError, match=r"counted \d+ completion tokens but streamed \d+ ids"):
        one_job(app, binding)


def test_dropped_chunks_fail_the_job(binding):
    """0.5.5 (and --stream-output 0.5.6-0.5.9): id deltas, only the last queued chunk sent."""
    beh = Behaviour.for_version("0.5.5", incremental=True, reported_version="0.5.10")
    app = build_app(scripted(binding, "one two three four five six"), eos_id=eot_of(binding), behaviour=beh,
                    burst=3)
    with pytest.raises(EngineError, match=r"counted \d+ completion tokens but streamed \d+ ids"):
        one_job(app, binding)


def test_missing_output_ids_fail_the_job(binding):
    """Before 0.5.1 streamed chunks have no output_ids: never a silently empty completion."""
    beh = Behaviour.for_version("0.4.6.post5", reported_version="0.5.10")
    app = build_app(scripted(binding, "a b"), eos_id=eot_of(binding), behaviour=beh)
    with pytest.raises(EngineError, match="no output_ids"):
        one_job(app, binding)


def test_seed_type_error_cut_stream_fails_cleanly(binding):
    """<= 0.5.2 with a seed: the stream stops after the 200 with no finish."""
    beh = Behaviour.for_version("0.5.2", reported_version="0.5.10", deterministic=True)
    app = build_app(scripted(binding, "a b"), eos_id=eot_of(binding), behaviour=beh)
    req = GenerateRequest(prompt_ids=[2], max_tokens=5, seed=3, request_id="s")
    with pytest.raises(EngineError, match="ended without a finish_reason"):
        one_job(app, binding, req)
    assert app.state.aborted == ["s"]


# -- seeds, keys, aborts, errors, startup ------------------------------------------------------

@pytest.mark.parametrize("deterministic", [False, True])
def test_seed_sent_only_when_the_server_is_deterministic(binding, caplog, deterministic):
    beh = Behaviour.for_version("0.5.10", deterministic=deterministic)
    app = build_app(scripted(binding, "a b"), eos_id=eot_of(binding), behaviour=beh)
    req = GenerateRequest(prompt_ids=[2], max_tokens=5, seed=1234, request_id="seeded")
    with caplog.at_level(logging.INFO, logger="basis.engines.sglang"):
        steps, eng = one_job(app, binding, req)
    assert steps[-1].final
    sp = app.state.requests[0]["sampling_params"]
    if deterministic:
        assert sp["sampling_seed"] == 1234 and eng.seeds_not_applied == 0
    else:
        assert "sampling_seed" not in sp and eng.seeds_not_applied == 1
        assert "job seeded: seed 1234 not applied" in caplog.text
        assert "without --enable-deterministic-inference" in caplog.text


def test_unknown_sampling_key_400_on_0_5_23_is_a_clean_error(binding, monkeypatch):
    real = sglang_mod.sampling_params
    monkeypatch.setattr(sglang_mod, "sampling_params", lambda *a, **k: real(*a, **k) | {"top_a": 0.0})
    app = build_app([1], eos_id=1, behaviour=Behaviour.for_version("0.5.23"))
    with pytest.raises(EngineError, match=r"answered 400.*unknown field `top_a`"):
        one_job(app, binding)


def test_api_key_on_every_call_including_abort(binding):
    beh = Behaviour.for_version("0.5.10", api_key="s3cret")
    script = [*binding.tokenize("a b c d e f g h i j k l m n o p")]

    async def scenario():
        app = build_app(script, eos_id=1, behaviour=beh, delay=0.05)
        async with serve(app) as url:
            eng = SGLangEngine.for_binding(url, binding, api_key="s3cret")
            gen = eng.generate(GenerateRequest(prompt_ids=[2], max_tokens=50, request_id="r-cancel"))
            assert (await gen.__anext__()).ids
            await gen.aclose()
            assert eng.aborts_failed == 0
            await eng.aclose()
            nokey = SGLangEngine.for_binding(url, binding)
            with pytest.raises(EngineError, match="refused the API key"):
                await nokey.start()
            await nokey.aclose()
        assert app.state.aborted == ["r-cancel"]

    asyncio.run(scenario())


def test_failed_abort_is_logged_and_the_job_still_ends(binding, caplog):
    script = [*binding.tokenize("a b c d e f g h i j k l m n o p")]

    async def scenario():
        app = build_app(script, eos_id=1, delay=0.05, abort_status=500)
        async with serve(app) as url:
            eng = SGLangEngine.for_binding(url, binding)
            gen = eng.generate(GenerateRequest(prompt_ids=[2], max_tokens=50, request_id="r-x"))
            await gen.__anext__()
            await asyncio.wait_for(gen.aclose(), 10)
            assert eng.aborts_failed == 1
            await eng.aclose()

    with caplog.at_level(logging.WARNING, logger="basis.engines.sglang"):
        asyncio.run(scenario())
    assert "sglang abort of r-x answered 500" in caplog.text


def test_error_frame_and_abort_finish_reason(binding):
    script = [*binding.tokenize("a b c d e f g h i j k l m n o p")]
    app = build_app(script, eos_id=1, error_after=2)
    with pytest.raises(EngineError, match="out of memory"):
        one_job(app, binding, GenerateRequest(prompt_ids=[2], max_tokens=50, request_id="r-err"))
    assert app.state.aborted == ["r-err"]
    app = build_app(script, eos_id=1, abort_after=3)
    with pytest.raises(EngineError, match="aborted the request: Abort before prefill"):
        one_job(app, binding, GenerateRequest(prompt_ids=[2], max_tokens=50, request_id="r-ab"))


def test_503_while_starting(binding):
    script = scripted(binding, "ok")

    async def scenario():
        app = build_app(script, eos_id=eot_of(binding), starting=3)
        async with serve(app) as url:
            eng = SGLangEngine.for_binding(url, binding, startup_timeout=10.0)
            info = await eng.start()  # waits through three 503s on /health
            assert info.version == "0.5.10"
            app.state.starting = 1  # a /generate 503 (a restart under it) is a clean failure
            with pytest.raises(EngineError, match="503 \\(still starting\\)"):
                await run(eng, GenerateRequest(prompt_ids=[2], max_tokens=5))
            steps = await run(eng, GenerateRequest(prompt_ids=[2], max_tokens=5))
            await eng.aclose()
        return steps

    assert asyncio.run(scenario())[-1].final


def test_length_finish_and_sglang_text_without_binding(binding):
    script = binding.tokenize("one two three four five six")
    app = build_app(script, eos_id=1, pieces=lambda t: binding.token_bytes(t).decode())

    async def scenario():
        async with serve(app) as url:
            eng = SGLangEngine(url, ["m"])
            try:
                return await run(eng, GenerateRequest(prompt_ids=[2], max_tokens=3))
            finally:
                await eng.aclose()

    steps = asyncio.run(scenario())
    assert steps[-1].finish_reason == "length"
    assert [i for s in steps for i in s.ids] == script[:3]
    assert "".join(s.text for s in steps) == binding.detokenize(script[:3]).decode()


def test_launch_flags_and_version_parsing():
    assert parse_version("0.4.6.post5") == (0, 4, 6, 5) and parse_version("0.5.23rc1")[:3] == (0, 5, 23)
    cmd = launch_command("/m", port=31000, host="127.0.0.1", api_key="k", version="0.5.12", python="py")
    assert cmd == ["py", "-m", "sglang.launch_server", "--model-path", "/m", "--host", "127.0.0.1", "--port",
                   "31000", "--api-key", "k", "--incremental-streaming-output"]
    cmd = launch_command("/m", port=1, host="h", api_key="k", version="0.5.7", deterministic=True)
    assert "--incremental-streaming-output" not in cmd and "--stream-output" not in cmd
    assert cmd[-1] == "--enable-deterministic-inference"


@pytest.mark.gpu
def test_real_sglang_server(binding):
    ok, reason = sglang_available()
    model_path = os.environ.get("BASIS_SGLANG_MODEL")
    if not ok or not model_path:
        why = reason or "BASIS_SGLANG_MODEL (a model path sglang can load) not set"
        print(f"SKIP: no GPU / sglang not installed: {why}")
        pytest.skip(f"no GPU / sglang not installed: {why}")

    async def scenario():
        proc, url, key = await launch_server(model_path, port=int(os.environ.get("BASIS_SGLANG_PORT", "30123")))
        eng = SGLangEngine(url, ["m"], api_key=key, process=proc)
        try:
            info = await eng.start()
            req = GenerateRequest(prompt_ids=[2, 105, 2364, 107], max_tokens=8, temperature=0.0, seed=7)
            steps = await run(eng, req)
            print(f"real sglang {info.version}: {steps[-1].completion_tokens} tokens, incremental={info.incremental}")
        finally:
            await eng.aclose()
        return steps

    steps = asyncio.run(scenario())
    assert steps[-1].final and 0 < sum(len(s.ids) for s in steps) <= 8
