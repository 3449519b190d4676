"""GET /v1/receipts, GET /v1/receipts/{job_id} (public): core, hash and envelope."""

from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.application import AggregateNotFoundError
from fastapi import APIRouter, Query, Request

from basis.gateway.errors import APIError

router = APIRouter(tags=["receipts"])


@router.get("/v1/receipts")
def list_receipts(request: Request, limit: int = Query(20, ge=1, le=100),
                  before: int | None = Query(None, ge=1, le=2**63 - 1),  # a log position: the store's int64
                  worker: str | None = None, status: str | None = Query(None, pattern="^(issued|settled)$"),
                  ) -> dict[str, Any]:
    rows = request.app.state.runtime.reader().receipts(limit=limit + 1, before=before, worker=worker, status=status)
    page = rows[:limit]
    data = [{"object": "receipt", "job_id": r["core"]["job_id"], **{k: v for k, v in r.items() if k != "seq"}}
            for r in page]
    return {"object": "list", "data": data, "has_more": len(rows) > limit,
            "next_before": page[-1]["seq"] if len(rows) > limit else None}


@router.get("/v1/receipts/{job_id}")
def get_receipt(job_id: str, request: Request) -> dict[str, Any]:
    """By job id (UUID) or by receipt hash (0x…)."""
    runtime = request.app.state.runtime
    key = job_id.removeprefix("chatcmpl-")
    r = runtime.reader().receipt(key) or _from_ledger(runtime, key)
    if r is None:
        raise APIError(404, f"No receipt for '{job_id}' (yet). Jobs that ended before any output token get none.",
                       param="job_id", code="receipt_not_found")
    return {"object": "receipt", "job_id": r["core"]["job_id"], **r}


def _from_ledger(runtime: Any, job_id: str) -> dict[str, Any] | None:
    """Read your writes: a receipt issued moments ago may not be in the views yet."""
    try:
        job = runtime.ledger.get(uuid.UUID(job_id))
    except (ValueError, AggregateNotFoundError):
        return None
    if getattr(job, "receipt", None) is None:
        return None
    rec = job.receipt
    return {"core": rec["core"], "hash": rec["hash"], "signature": rec["signature"], "signer": rec["signer"],
            "status": "settled" if job.settlement else "issued", "settlement": job.settlement,
            "issued_at": None, "settled_at": None}
