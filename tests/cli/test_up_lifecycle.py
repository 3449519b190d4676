"""`basis up` leaves nothing behind (#15 item 2): SIGKILLed, its anvil, worker and ledger processes
die with it and the next `basis up` starts on the same ports; its own leftovers are recognised and
stopped; a port held by anything else is named with the process that holds it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from basis import lifeline
from basis.chain.anvil import free_port
from basis.cli.main import app
from tests.conftest import require_foundry
from tests.gateway.harness import REPO
from tests.gateway.test_dies_with_gateway import alive, children, comm

pytestmark = pytest.mark.chain


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def start_up(home, port: int, chain_port: int, log) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BASIS_HOME": str(home), "PYTHONPATH": str(REPO / "src")}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "basis.cli.main", "up", "--port", str(port),
                                 "--chain-port", str(chain_port), "--settle-interval", "0", "--worker-threads", "1"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)  # its own process group, as in a terminal


def wait_up(home, port: int, proc: subprocess.Popen[bytes], log) -> dict:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"basis up exited: {log.read_text()[-2000:]}"
        pids = home / "up.pids.json"
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            ready = False
        if ready and pids.exists():
            recorded = json.loads(pids.read_text())
            if recorded.get("up", {}).get("pid") == proc.pid:
                return recorded
        time.sleep(0.2)
    raise AssertionError("basis up did not start")


def test_sigkilled_up_leaves_no_orphan_and_the_next_up_starts(tmp_path):
    require_foundry()
    home, log = tmp_path / "home", tmp_path / "up.log"
    port, chain_port = free_port(), free_port()
    first = start_up(home, port, chain_port, log)
    second = None
    try:
        recorded = wait_up(home, port, first, log)
        family = descendants(first.pid)
        assert {recorded["anvil"]["pid"], recorded["worker"]["pid"]} <= family
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed = time.monotonic()
        while any(alive(p) for p in family) and time.monotonic() - killed < 10:
            time.sleep(0.05)
        survivors = {p: lifeline.describe(p) for p in family if alive(p)}
        assert not survivors, f"orphans of a SIGKILLed basis up: {survivors}"

        second = start_up(home, port, chain_port, log)  # the same ports are free again
        again = wait_up(home, port, second, log)
        assert again["anvil"]["pid"] != recorded["anvil"]["pid"]
        # The Ctrl-C below is an orderly stop of a running network: the writer and projector have
        # started (a Ctrl-C while a child is still importing interrupts that import, as for any program).
        deadline = time.monotonic() + 60
        while not {"basis-writer", "basis-projector"} <= set(map(comm, descendants(second.pid))):
            assert time.monotonic() < deadline, "the writer and projector did not start"
            time.sleep(0.05)
    finally:
        before_ctrl_c = len(log.read_bytes())
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    stop = log.read_bytes()[before_ctrl_c:].decode(errors="replace")
    assert "stopped cleanly" in stop
    assert "Traceback" not in stop, stop  # the writer and projector leave Ctrl-C to the gateway


@pytest.fixture
def _restore_logging():
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_leftovers_are_stopped_and_a_held_port_is_named(tmp_path, monkeypatch, _restore_logging):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("BASIS_HOME", str(home))
    # Stand-ins with SIGINT at its default: a shell's background job (`cmd &`) starts with SIGINT
    # ignored, and a child inherits that, so without this the test would read the SIGKILL fallback.
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    leftover = subprocess.Popen(["sleep", "600"], preexec_fn=default_sigint)  # an anvil an older `basis up` left
    stranger = subprocess.Popen(["sleep", "600"], preexec_fn=default_sigint)  # same command, not recorded: untouched
    try:
        (home / "up.pids.json").write_text(json.dumps({"anvil": lifeline.identity(leftover.pid)}))
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen()
            chain_port = held.getsockname()[1]
            result = CliRunner().invoke(app, ["up", "--port", str(free_port()), "--chain-port", str(chain_port)])
        assert result.exit_code == 2, result.output
        said = " ".join(result.output.replace("│", " ").split())  # unwrapped from typer's error box
        assert f"anvil (pid {leftover.pid})" in said
        assert leftover.wait(5) == -signal.SIGINT
        assert stranger.poll() is None
        assert f"127.0.0.1:{chain_port} is already in use by pid {os.getpid()}" in said, said
        assert "pick another port with --chain-port" in said
    finally:
        for proc in (leftover, stranger):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_running_up_on_the_same_home_is_refused(tmp_path, monkeypatch, _restore_logging):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("BASIS_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "400")  # the error panel keeps the (long, under pytest-xdist) home on one line
    other = subprocess.Popen(["sleep", "600"])  # stands in for the `basis up` still running here
    try:
        # Record it once it has exec'd: before, its command line is still the forking Python's, and the
        # recorded identity would not match the process that then runs (a loaded machine showed this).
        deadline = time.monotonic() + 30
        while lifeline.cmdline(other.pid) != ["sleep", "600"] and time.monotonic() < deadline:
            time.sleep(0.01)
        (home / "up.pids.json").write_text(json.dumps({"up": lifeline.identity(other.pid)}))
        result = CliRunner().invoke(app, ["up", "--port", str(free_port()), "--chain-port", str(free_port())])
        assert result.exit_code == 2 and f"already running on {home}" in result.output
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
