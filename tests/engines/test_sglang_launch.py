"""`basis worker run --engine sglang` and `launch_server`: the process started with the adapter's
flags, waited for, gated and stopped with the worker (with a stand-in for sglang.launch_server,
which needs CUDA)."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
import uvicorn

from basis.engines import GenerateRequest
from basis.engines.sglang import SGLangEngine
from basis.engines.sglang_server import MIN_VERSION_TEXT, launch_server, sglang_available
from tests.engines.sglang_double import Behaviour, build_app

pytestmark = pytest.mark.llama


async def run(engine, req):
    return [s async for s in engine.generate(req)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_launch_starts_waits_for_health_and_stops_with_the_engine(tmp_path, monkeypatch, binding):
    """launch_server's process handling, with a stand-in for sglang.launch_server (sglang needs CUDA)."""
    import json
    import sys

    from basis.engines import sglang_server

    monkeypatch.setattr(sglang_server, "sglang_available", lambda: (True, ""))
    monkeypatch.setattr(sglang_server, "installed_version", lambda: "0.5.10")
    argv_file = tmp_path / "argv.json"
    monkeypatch.setenv("FAKE_SGLANG_ARGV", str(argv_file))
    monkeypatch.setenv("FAKE_SGLANG_EOS", str(binding.vocab.eos_id))
    fake = tmp_path / "python"
    script = os.path.join(os.path.dirname(__file__), "fake_sglang_launch.py")
    fake.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    fake.chmod(0o755)

    async def scenario():
        proc, url, key = await launch_server("/models/x", port=_free_port(), python=str(fake), startup_timeout=60)
        eng = SGLangEngine.for_binding(url, binding, api_key=key, process=proc)
        try:
            info = await eng.start()
            steps = await run(eng, GenerateRequest(prompt_ids=[2], max_tokens=8))
        finally:
            await eng.aclose()
        return proc, key, info, steps

    proc, key, info, steps = asyncio.run(scenario())
    assert proc.poll() is not None  # stopped with the engine
    argv = json.loads(argv_file.read_text())
    assert argv[:3] == ["-m", "sglang.launch_server", "--model-path"] and "--incremental-streaming-output" in argv
    assert argv[argv.index("--api-key") + 1] == key and len(key) >= 24
    assert info.incremental is True and [i for s in steps for i in s.ids] == [300, 301, 302]


def _invoke_worker(args):
    from typer.testing import CliRunner

    from basis.cli.main import app

    return CliRunner().invoke(app, ["worker", "run", "--new-key", *args])


def test_worker_cli_refuses_an_unsupported_server_clearly(tmp_path, binding):
    import threading

    app = build_app([1], eos_id=1, behaviour=Behaviour.for_version("0.5.4"))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            threading.Event().wait(0.02)
        result = _invoke_worker(["--key-file", str(tmp_path / "w.key"), "--engine", "sglang",
                                 "--sglang-url", f"http://127.0.0.1:{port}", "--gateway", "ws://127.0.0.1:9/x"])
    finally:
        server.should_exit = True
        thread.join(10)
    assert result.exit_code == 2, result.output
    assert "sglang 0.5.4 is not supported" in result.output and f"minimum is sglang {MIN_VERSION_TEXT}" in result.output


def test_worker_cli_launch_without_sglang_says_why(tmp_path):
    ok, reason = sglang_available()
    if ok:
        pytest.skip("sglang and a GPU are present: --launch would really start it")
    result = _invoke_worker(["--key-file", str(tmp_path / "w.key"), "--engine", "sglang", "--launch", "/models/x"])
    assert result.exit_code == 2 and f"cannot launch sglang: {reason}" in result.output
