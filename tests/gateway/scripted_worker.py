"""A hand-written protocol-v1 worker (docs/worker-protocol.md) that plays scripted frames: a test
double for a hostile or broken contributor, beside a real gateway (tests/gateway/harness.Gateway).

A script is chosen per job by its ``max_tokens`` (``worker.scripts[max_tokens] = [...]``). Each
entry is a frame dict (``job_id`` is filled in), or ``sleep(s)``. Heartbeats go on whatever the script does, so a
script that ends without ``done`` is a worker that stays connected and never finishes.
Every message the gateway sends is kept in ``received`` (e.g. to see a ``cancel``).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import websockets
from eth_account import Account

from basis.protocol import challenge_text, sign_challenge


def tokens(ids: list[int], text: str) -> dict[str, Any]:
    return {"type": "tokens", "ids": ids, "text": text}


def done(finish_reason: str = "stop", completion_tokens: int = 0) -> dict[str, Any]:
    return {"type": "done", "finish_reason": finish_reason, "text": "",
            "usage": {"prompt_tokens": 1, "completion_tokens": completion_tokens}}


def sleep(seconds: float) -> dict[str, Any]:
    """Not a frame: the script waits (heartbeats go on)."""
    return {"type": "sleep", "seconds": seconds}


class ScriptedWorker:
    def __init__(self, ws_url: str, binding_hashes: dict[str, str], key: str = "0x" + "42" * 32,
                 capacity: int = 8) -> None:
        self.ws_url = ws_url
        self.binding_hashes = binding_hashes
        self.key = key
        self.address = Account.from_key(key).address
        self.capacity = capacity
        self.scripts: dict[int, list[dict[str, Any]]] = {}
        self.received: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)
        self._thread.start()

    def cancels(self) -> list[str]:
        return [m["job_id"] for m in list(self.received) if m.get("type") == "cancel"]

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with websockets.connect(self.ws_url, max_size=None) as ws:
            ch = json.loads(await ws.recv())
            text = challenge_text(gateway_address=ch["gateway_address"], chain_id=ch["chain_id"], nonce=ch["nonce"],
                                  expires_at=ch["expires_at"], protocol_version=1)
            await ws.send(json.dumps({
                "type": "hello", "protocol_version": 1, "worker_address": self.address,
                "signature": sign_challenge(self.key, text), "software": "scripted/0",
                "models": [{"model": m, "binding_hash": h, "capacity": self.capacity}
                           for m, h in self.binding_hashes.items()]}))
            welcome = json.loads(await ws.recv())
            assert welcome["type"] == "welcome", welcome

            async def beat() -> None:
                while True:
                    await asyncio.sleep(0.3)
                    await ws.send(json.dumps({"type": "heartbeat", "active_jobs": 0}))

            async def play(job: dict[str, Any]) -> None:
                for frame in self.scripts.get(job["max_tokens"], []):
                    if frame["type"] == "sleep":
                        await asyncio.sleep(frame["seconds"])
                        continue
                    await ws.send(json.dumps({**frame, "job_id": job["job_id"]}))
                    await asyncio.sleep(0.005)

            hb = asyncio.create_task(beat())
            plays: set[asyncio.Task[None]] = set()
            reader = asyncio.create_task(self._read(ws, play, plays))
            await self._stop.wait()
            hb.cancel()
            reader.cancel()

    async def _read(self, ws: Any, play: Any, plays: set[asyncio.Task[None]]) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            self.received.append(msg)
            if msg.get("type") == "job":
                t = asyncio.create_task(play(msg))
                plays.add(t)
                t.add_done_callback(plays.discard)

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def gateway_with_scripted_worker(home) -> Iterator[tuple[Any, ScriptedWorker]]:
    """A test gateway on ``home`` with one ScriptedWorker online for every model (a fixture body:
    ``yield from``); both are closed afterwards."""
    from tests.gateway.harness import Gateway

    gw = Gateway(home)
    b = gw.runtime.bindings
    worker = ScriptedWorker(gw.ws, {m: b[m].binding_hash for m in b})
    gw.until(lambda: gw.runtime.hub.workers(), what="the scripted worker")
    try:
        yield gw, worker
    finally:
        worker.close()
        gw.close()
