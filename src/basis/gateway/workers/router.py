"""WebSocket endpoint ``/v1/workers/connect`` (docs/worker-protocol.md).

The app must set ``app.state.worker_hub`` to a ``WorkerHub`` (or use ``build_router(hub)``).
"""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from basis.gateway.workers.service import WorkerHub

CONNECT_PATH = "/v1/workers/connect"

router = APIRouter(tags=["workers"])


@router.websocket(CONNECT_PATH)
async def workers_connect(websocket: WebSocket) -> None:
    hub: WorkerHub = websocket.app.state.worker_hub
    await hub.serve(websocket)


def build_router(hub: WorkerHub) -> APIRouter:
    """A router bound to ``hub`` directly (no app.state needed)."""
    r = APIRouter(tags=["workers"])

    @r.websocket(CONNECT_PATH)
    async def _connect(websocket: WebSocket) -> None:
        await hub.serve(websocket)

    return r
