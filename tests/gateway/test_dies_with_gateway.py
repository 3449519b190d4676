"""Nothing outlives its gateway (#15 item 2): a `basis serve` SIGKILLed under load takes its ledger
writer and projector processes with it, and the writer commits nothing after the kill."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from basis.chain.anvil import free_port
from basis.config import Settings
from basis.ledger.service import Ledger
from tests.gateway.harness import REPO


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class Store:
    """The gateway's event store, seen from the test: its last notification id, and its write lock."""

    def __init__(self, home: Path, database_url: str | None) -> None:
        self.home, self.url = home, database_url

    def max_notification_id(self) -> int:
        if self.url is None:
            with sqlite3.connect(self.home / "events.sqlite3", timeout=30) as db:
                (table,) = db.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE '%events'").fetchone()
                return db.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute("SELECT max(notification_id) FROM basis_events").fetchone()[0] or 0

    def hold_write_lock(self):
        """Take the lock every insert waits for; returns what lets it go."""
        if self.url is None:
            db = sqlite3.connect(self.home / "events.sqlite3", timeout=30, isolation_level=None)
            db.execute("BEGIN IMMEDIATE")
        else:
            import psycopg

            db = psycopg.connect(self.url)
            db.execute("LOCK TABLE basis_events IN EXCLUSIVE MODE")  # inserts take this lock too; reads go on

        def release() -> None:
            db.rollback()
            db.close()

        return release


def start_serve(home: Path, port: int, log: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BASIS_HOME": str(home), "PYTHONPATH": str(REPO / "src"), **extra_env}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "basis.cli.main", "serve", "--port", str(port),
                                 "--engine", "instant", "--log-level", "warning"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the gateway exited while starting"
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("the gateway did not start")


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sigkilled_gateway_takes_its_processes_and_commits_nothing_after(tmp_path, request, engine):
    home = tmp_path / "home"
    url = request.getfixturevalue("pg_dsn") if engine == "postgres" else None
    store = Store(home, url)
    env = {"BASIS_DATABASE_URL": url} if url else {}
    ledger = Ledger(Settings(home=home, database_url=url))
    _, key = ledger.create_api_key("load")
    ledger.grant("load", 10**24)
    ledger.close()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    gateway = start_serve(home, port, tmp_path / "serve.log", **env)
    try:
        wait_ready(base, gateway)
        helpers = children(gateway.pid)
        assert len(helpers) >= 2, f"expected the writer and projector processes, found {helpers}"
        deadline = time.monotonic() + 60  # each names itself once it has started (spawn imports first)
        while not {"basis-writer", "basis-projector"} <= (names := set(map(comm, children(gateway.pid)))):
            assert time.monotonic() < deadline, names  # named for ps and top
            time.sleep(0.1)
        helpers = children(gateway.pid)

        stop = threading.Event()
        served = [0]

        def load() -> None:
            with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {key}"}) as client:
                while not stop.is_set():
                    try:
                        r = client.post(f"{base}/v1/chat/completions", json={
                            "model": "basis-default", "max_tokens": 4,
                            "messages": [{"role": "user", "content": "hi"}]})
                        served[0] += r.status_code == 200
                    except httpx.HTTPError:
                        time.sleep(0.05)  # the gateway is gone: keep knocking until told to stop

        threads = [threading.Thread(target=load, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while served[0] < 20 and time.monotonic() < deadline:  # well into the load
            time.sleep(0.05)
        assert served[0] >= 20, "the gateway did not serve under load"

        # Hold the store's write lock, so the writer is caught mid-commit with a batch in hand (as
        # a slow or contended store catches it) when its gateway dies; the lock goes after the kill.
        release = store.hold_write_lock()
        time.sleep(0.5)
        gateway.send_signal(signal.SIGKILL)
        gateway.wait()
        at_kill = store.max_notification_id()
        killed = time.monotonic()
        time.sleep(0.3)
        release()
        while any(alive(p) for p in helpers) and time.monotonic() - killed < 5:
            time.sleep(0.02)
        gone_after = time.monotonic() - killed
        survivors = [p for p in helpers if alive(p)]
        time.sleep(2.0)  # a writer that lived on would commit the jobs it had read by now
        later = store.max_notification_id()
        stop.set()
        for t in threads:
            t.join(15)
        assert not survivors, f"processes outlived their gateway: {survivors}"
        assert gone_after < 2.0, f"the gateway's processes took {gone_after:.2f} s to go"
        assert served[0] >= 20
        assert later == at_kill, f"{later - at_kill} event(s) committed after the gateway was killed"

        gateway = start_serve(home, port, tmp_path / "serve.log", **env)  # restart resumes on the same home
        wait_ready(base, gateway)
        chat = {"model": "basis-default", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=chat,
                       timeout=30)
        assert r.status_code == 200, r.text
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        for p in children(gateway.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
