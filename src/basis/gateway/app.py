"""The gateway's FastAPI app: one router per domain, one runtime behind them."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from basis.gateway.chat.router import router as chat_router
from basis.gateway.errors import install_error_handlers
from basis.gateway.models.router import router as models_router
from basis.gateway.network.router import router as network_router
from basis.gateway.receipts.router import router as receipts_router
from basis.gateway.runtime import GatewayRuntime
from basis.gateway.workers.router import router as workers_router
from basis.observability import metrics

log = logging.getLogger("basis.gateway")

# Areas that arrive with later features; mounted when present.
OPTIONAL_ROUTERS = ("basis.gateway.settlement.router", "basis.explorer.router")


def create_app(runtime: GatewayRuntime) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title="Basis gateway", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible inference API that records what it served.")
    app.state.runtime = runtime
    app.state.worker_hub = runtime.hub
    install_error_handlers(app)
    for r in (chat_router, models_router, receipts_router, network_router, workers_router):
        app.include_router(r)
    for module_name in OPTIONAL_ROUTERS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue
            raise
        mount = getattr(module, "mount", None)
        if mount is not None:
            mount(app)
        elif hasattr(module, "router"):
            app.include_router(module.router)

    app.add_middleware(_Measure)
    return app


class _Measure:
    """Pure ASGI middleware (BaseHTTPMiddleware would cost latency and break streaming disconnects)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            metrics.REQUESTS.labels(path, str(status["code"])).inc()
            metrics.LATENCY.labels(path).observe(time.perf_counter() - started)
