"""A real gateway (uvicorn on loopback, real SQLite ledger) and real worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from basis.chain.anvil import free_port
from basis.config import Settings
from basis.gateway.app import create_app
from basis.gateway.runtime import GatewayOptions, GatewayRuntime

REPO = Path(__file__).resolve().parents[2]



class Gateway:
    def __init__(self, home: Path, options: GatewayOptions | None = None, *, rpc_url: str | None = None,
                 database_url: str | None = None) -> None:
        self.settings = Settings(home=home, database_url=database_url)
        self.runtime = GatewayRuntime(self.settings, options or GatewayOptions(heartbeat_interval=1.0))
        if rpc_url is not None:  # settlement runs when the test says so (scheduler.tick), not on a timer
            self.runtime.enable_chain(rpc_url, settle_interval=3600)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/v1/workers/connect"
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.runtime), host="127.0.0.1", port=self.port,
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)
        self.workers: list[subprocess.Popen[bytes]] = []

    @property
    def ledger(self) -> Any:
        return self.runtime.ledger

    def account(self, name: str, credit: int) -> tuple[Any, str]:
        account_id, key = self.ledger.create_api_key(name)
        if credit:
            self.ledger.grant(name, credit)
        return account_id, key

    def start_worker(self, *, engine: str = "instant", models: tuple[str, ...] = ("basis-default",),
                     capacity: int = 4, rogue: str | None = None, wait: bool = True) -> subprocess.Popen[bytes]:
        key_file = self.settings.home / f"worker-{len(self.workers)}.key"
        from basis.worker import new_key_file

        new_key_file(key_file)
        before = {w.address for w in self.runtime.hub.workers()}
        if rogue:
            cmd = [sys.executable, "-m", "tests.gateway.rogue_worker", "--gateway", self.ws, "--key-file",
                   str(key_file), "--mode", rogue, "--model", models[0], "--capacity", str(capacity)]
        else:
            cmd = [sys.executable, "-m", "basis.cli.main", "worker", "run", "--gateway", self.ws, "--key-file",
                   str(key_file), "--engine", engine, "--capacity", str(capacity), "--log-level", "warning",
                   "--threads", "1"]
            for m in models:
                cmd += ["--model", m]
        env = {**os.environ, "BASIS_HOME": str(self.settings.home)}
        env.pop("BASIS_DATABASE_URL", None)  # a worker never touches the ledger
        proc = subprocess.Popen(cmd, cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.workers.append(proc)
        if wait:
            self.until(lambda: len({w.address for w in self.runtime.hub.workers()} - before) >= 1,
                       what="the worker to connect", timeout=90)
        return proc

    @staticmethod
    def until(predicate: Any, *, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def kill_workers(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(10)
        self.workers.clear()
        self.until(lambda: not self.runtime.hub.workers(), what="workers to disconnect", timeout=30)

    def views_caught_up(self) -> None:
        store = self.ledger.store
        self.until(lambda: self.runtime.reader().position() >= (store.recorder.max_notification_id() or 0),
                   what="projections to catch up", timeout=30)

    def close(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                p.kill()
                with contextlib.suppress(Exception):
                    p.wait(10)
        self.server.should_exit = True
        self.thread.join(30)


def run(coro: Any) -> Any:
    return asyncio.run(coro)
