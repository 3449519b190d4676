"""Loopback harness: a real uvicorn server hosting the hub router, plus misbehaving engines."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import uvicorn
from eth_account import Account
from fastapi import FastAPI

from basis.engines.base import GenerateRequest, TokenStep
from basis.gateway.workers.router import router
from basis.gateway.workers.service import WorkerHub

GATEWAY_KEY = Account.create()
CHAIN_ID = 31337


def make_hub(binding_hashes, **kw) -> WorkerHub:
    return WorkerHub(
        gateway_address=GATEWAY_KEY.address, chain_id=CHAIN_ID, binding_hashes=binding_hashes, **kw
    )


@contextlib.asynccontextmanager
async def serve_hub(hub: WorkerHub, port: int = 0):
    app = FastAPI()
    app.state.worker_hub = hub
    app.include_router(router)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"ws://127.0.0.1:{port}/v1/workers/connect"
    finally:
        await hub.close()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


async def until(predicate, *, tries: int = 500, step: float = 0.02) -> None:
    """Poll a condition (bounded; not a timing assertion)."""
    for _ in range(tries):
        if predicate():
            return
        await asyncio.sleep(step)
    raise AssertionError("condition never became true")


class StallEngine:
    """Deliberately misbehaving: emits ``first`` tokens, then hangs forever."""

    def __init__(self, models, first: list[int] | None = None, text: str = "") -> None:
        self.models = tuple(models)
        self.first = first or []
        self.text = text
        self.started = asyncio.Event()
        self.cancelled = 0
        self.calls = 0

    async def generate(self, request: GenerateRequest):
        self.calls += 1
        self.started.set()
        try:
            if self.first:
                yield TokenStep(ids=self.first, text=self.text)
            await asyncio.Event().wait()
        finally:
            self.cancelled += 1

    async def aclose(self) -> None:
        return None


class FailingEngine:
    def __init__(self, models) -> None:
        self.models = tuple(models)

    async def generate(self, request: GenerateRequest):
        from basis.engines.base import EngineError

        raise EngineError("boom")
        yield  # pragma: no cover

    async def aclose(self) -> None:
        return None
