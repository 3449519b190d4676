"""The gateway's FastAPI app: one router per domain, one runtime behind them."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

from fastapi import FastAPI, Request

from basis.gateway.account.router import router as account_router
from basis.gateway.admin.router import router as admin_router
from basis.gateway.auth import bearer_account
from basis.gateway.chat.router import chat_completions
from basis.gateway.chat.router import router as chat_router
from basis.gateway.completions.router import router as completions_router
from basis.gateway.errors import APIError, install_error_handlers
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
    for r in (chat_router, completions_router, account_router, models_router, receipts_router, network_router,
              workers_router, admin_router):
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

    app.add_middleware(_ChatFastPath)
    app.add_middleware(_Measure)  # outermost: it measures the fast path too
    return app


_CHAT_ROUTE = SimpleNamespace(path="/v1/chat/completions")  # the metrics label the router would set


class _ChatFastPath:
    """``POST /v1/chat/completions`` straight to its handler, past routing, dependency injection
    and the exception middleware: about a third of a chat request's CPU on the loop in profiles,
    the gateway's hottest path. The route stays declared on the app (OpenAPI schema, 405 for
    other methods); errors keep OpenAI's shape exactly as the app's handlers give them."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != _CHAT_ROUTE.path:
            await self.app(scope, receive, send)
            return
        scope["route"] = _CHAT_ROUTE
        request = Request(scope, receive, send)
        try:
            response = await chat_completions(request, await bearer_account(request))
        except APIError as exc:
            response = exc.response()
        except Exception:
            log.exception("unhandled error")
            response = APIError(500, "The server had an error while processing your request.",
                                code="internal_error", type_="server_error").response()
        await response(scope, receive, send)


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
