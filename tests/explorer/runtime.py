"""A stand-in for the gateway runtime the explorer reads through (``app.state.runtime``), built
on a real ledger and real projections, plus a real uvicorn server on a loopback port."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from basis.explorer.router import router
from basis.ledger.projections import ViewReader
from basis.ledger.service import Ledger


class StandInRuntime:
    """Exactly the four methods the explorer uses (docs/explorer.md)."""

    def __init__(self, ledger: Ledger, views_path: Path, *, online: set[str] | None = None,
                 chain_id: int | None = 31337, token: str | None = None) -> None:
        self.ledger = ledger
        self.views_path = views_path
        self.online = {a.lower() for a in (online or set())}
        self.chain_id = chain_id
        self.token = token
        self._local = threading.local()
        self._readers: list[ViewReader] = []
        self._lock = threading.Lock()

    def reader(self) -> ViewReader:
        found = getattr(self._local, "reader", None)
        if found is None:
            found = self._local.reader = ViewReader(self.views_path)
            with self._lock:
                self._readers.append(found)
        return found

    def close(self) -> None:
        with self._lock:
            for r in self._readers:
                r.close()
            self._readers.clear()

    def network_status(self) -> dict[str, Any]:
        token = {"status": "live", "address": self.token} if self.token else {"status": "pending", "address": None}
        return {
            "runtime": {"status": "live"},
            "token": token,
            "vault": {"status": "pending", "address": None},
            "distributor": {"status": "pending", "address": None},
            "chain_id": self.chain_id,
            "gateway_signer": self.ledger.signer.address,
        }

    def models_status(self) -> list[dict[str, Any]]:
        serving: dict[str, int] = {}
        for w in self.reader().workers():
            if w["address"].lower() in self.online:
                for m in w["models"]:
                    serving[m] = serving.get(m, 0) + 1
        out = []
        for spec in self.ledger.pricing.models.values():
            n = serving.get(spec.id, 0)
            out.append({"id": spec.id, "context_window": spec.context_window,
                        "max_output_tokens": spec.max_output_tokens, "multiplier_bps": spec.multiplier_bps,
                        "status": "live" if n else "planned", "workers": n,
                        "backing_model": spec.backing.get("gguf"), "binding_hash": "0x" + "5e" * 32})
        return out

    def online_workers(self) -> set[str]:
        return set(self.online)


def build_app(runtime: StandInRuntime) -> FastAPI:
    """The explorer mounted as the gateway mounts it, plus stand-ins for the three public JSON
    endpoints `basis status` reads (the real ones belong to the gateway)."""
    app = FastAPI()
    app.state.runtime = runtime

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:  # the gateway's shape
        head = runtime.ledger.store.recorder.max_notification_id() or 0
        return {"status": "ok", "ledger_position": head, "views_position": runtime.reader().position(),
                "workers": len(runtime.online_workers()), "node": "gateway-test"}

    @app.get("/v1/network")
    def network() -> dict[str, Any]:
        return runtime.network_status()

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"object": "model", "owned_by": "basis", **m}
                                           for m in runtime.models_status()]}

    app.include_router(router)
    return app


class LiveServer:
    """uvicorn in a background thread on a free loopback port."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="explorer-test-server", daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
