"""GET /v1/receipts, GET /v1/receipts/{job_id} (public): core, hash and envelope."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from basis.gateway.errors import APIError

router = APIRouter(tags=["receipts"])


@router.get("/v1/receipts")
def list_receipts(request: Request, limit: int = Query(20, ge=1, le=100), before: int | None = Query(None, ge=1),
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
    r = request.app.state.runtime.reader().receipt(job_id.removeprefix("chatcmpl-"))
    if r is None:
        raise APIError(404, f"No receipt for '{job_id}' (yet). Jobs that ended before any output token get none.",
                       param="job_id", code="receipt_not_found")
    return {"object": "receipt", "job_id": r["core"]["job_id"], **r}
