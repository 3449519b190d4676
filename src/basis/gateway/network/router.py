"""GET /v1/network, /healthz, /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from basis.observability import metrics

router = APIRouter(tags=["network"])


@router.get("/v1/network")
def network(request: Request) -> dict[str, Any]:
    return request.app.state.runtime.network_status()


@router.get("/healthz")
def healthz(request: Request) -> dict[str, Any]:
    runtime = request.app.state.runtime
    head = runtime.ledger.store.recorder.max_notification_id() or 0
    views = runtime.reader().position()
    return {"status": "ok", "ledger_position": head, "views_position": views,
            "workers": len(runtime.hub.workers()), "node": runtime.settings.node_id}


@router.get("/metrics")
def prometheus(request: Request) -> Response:
    runtime = request.app.state.runtime
    head = runtime.ledger.store.recorder.max_notification_id() or 0
    reader = runtime.reader()
    metrics.LEDGER_LAG.set(head - reader.position())
    metrics.ACTIVE_WORKERS.set(len(runtime.hub.workers()))
    unsettled = reader.db.execute("SELECT charged FROM receipts WHERE status = 'issued'").fetchall()
    metrics.UNSETTLED.set(sum(int(r[0]) for r in unsettled))
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)
