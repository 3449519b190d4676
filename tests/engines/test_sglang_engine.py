"""SGLangEngine against a protocol double of sglang's HTTP API (sglang needs CUDA; see
docs/engines.md), and against the real server where sglang and a GPU exist (@gpu)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import pytest
import uvicorn

from basis.engines import EngineError, GenerateRequest
from basis.engines.sglang import SGLangEngine, launch_server, sglang_available
from basis.models import UTF8Matcher
from tests.engines.sglang_double import build_app

pytestmark = pytest.mark.llama


@contextlib.asynccontextmanager
async def serve(app):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def script_for(binding, text: str) -> list[int]:
    return binding.tokenize(text)


async def run(engine, req):
    return [s async for s in engine.generate(req)]


def check(binding, steps):
    m = UTF8Matcher()
    n = sum(m.feed(binding.token_pieces(s.ids), s.text) for s in steps[:-1]) + m.finish(steps[-1].text)
    ids = [i for s in steps for i in s.ids]
    assert n == len(ids)
    return ids, "".join(s.text for s in steps)


@pytest.mark.parametrize("incremental", [False, True])
@pytest.mark.parametrize("mode", [None, "explicit"])
def test_stream_to_steps(binding, incremental, mode):
    text = "Bonjour 🙂 日本"
    eot = binding.vocab.eos_id  # the binding's end of turn (<|im_end|> for SmolLM2; was Gemma's <end_of_turn>)
    script = [*script_for(binding, text), eot]
    app = build_app(script, eos_id=eot, incremental=incremental,
                    pieces=lambda t: binding.token_bytes(t).decode("utf-8", "replace"))

    async def scenario():
        async with serve(app) as url:
            eng = SGLangEngine.for_binding(url, binding, incremental=incremental if mode else None)
            try:
                steps = await run(eng, GenerateRequest(prompt_ids=[2, 105], max_tokens=50, seed=5,
                                                       request_id="job-1", stop_ids=[eot]))
            finally:
                await eng.aclose()
            return steps

    steps = asyncio.run(scenario())
    ids, out = check(binding, steps)
    assert ids == script[:-1] and out == text  # EOT filtered, text rebuilt from ids
    assert steps[-1].finish_reason == "stop" and steps[-1].completion_tokens == len(script)
    req = app.state.requests[0]
    assert req["input_ids"] == [2, 105] and req["stream"] is True and req["rid"] == "job-1"
    assert req["sampling_params"] == {"max_new_tokens": 50, "temperature": 1.0, "top_p": 1.0,
                                      "stop_token_ids": [eot], "sampling_seed": 5}
    assert app.state.aborted == []


def test_length_finish_and_sglang_text_without_binding(binding):
    script = script_for(binding, "one two three four five six")
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


def test_error_event_and_cancel_abort(binding):
    script = script_for(binding, "a b c d e f g h i j k l m n o p")

    async def scenario():
        app = build_app(script, eos_id=1, error_after=2)
        async with serve(app) as url:
            eng = SGLangEngine.for_binding(url, binding)
            with pytest.raises(EngineError, match="out of memory"):
                await run(eng, GenerateRequest(prompt_ids=[2], max_tokens=50, request_id="r-err"))
            await eng.aclose()
        assert app.state.aborted == ["r-err"]

        app2 = build_app(script, eos_id=1, delay=0.05)
        async with serve(app2) as url:
            eng = SGLangEngine.for_binding(url, binding)
            gen = eng.generate(GenerateRequest(prompt_ids=[2], max_tokens=50, request_id="r-cancel"))
            first = await gen.__anext__()
            assert first.ids
            await gen.aclose()
            await eng.aclose()
        assert app2.state.aborted == ["r-cancel"]

    asyncio.run(scenario())


@pytest.mark.gpu
def test_real_sglang_server(binding):
    ok, reason = sglang_available()
    model_path = os.environ.get("BASIS_SGLANG_MODEL")
    if not ok or not model_path:
        why = reason or "BASIS_SGLANG_MODEL (a model path sglang can load) not set"
        print(f"SKIP: no GPU / sglang not installed: {why}")
        pytest.skip(f"no GPU / sglang not installed: {why}")

    async def scenario():
        proc, url = await launch_server(model_path, port=int(os.environ.get("BASIS_SGLANG_PORT", "30123")))
        eng = SGLangEngine(url, ["m"], process=proc)
        try:
            req = GenerateRequest(prompt_ids=[2, 105, 2364, 107], max_tokens=8, temperature=0.0)
            steps = await run(eng, req)
        finally:
            await eng.aclose()
        return steps

    steps = asyncio.run(scenario())
    assert steps[-1].final and 0 < sum(len(s.ids) for s in steps) <= 8
