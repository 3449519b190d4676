"""GET /v1/account, /v1/account/receipts, /v1/account/usage: what a key's account can see of itself."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request

from basis.gateway.account import service
from basis.gateway.auth import bearer_account
from basis.gateway.errors import APIError
from basis.ledger import ids
from basis.ledger.service import API_KEY_PREFIX

router = APIRouter(tags=["account"])
MAX_PAGE = 100
DEFAULT_PAGE = 20


@router.get("/v1/account")
def get_account(request: Request, account_id: UUID = Depends(bearer_account)) -> dict[str, Any]:
    runtime = request.app.state.runtime
    key = request.headers["authorization"].partition(" ")[2].strip()  # bearer_account has checked it
    out = service.account_summary(runtime.reader(), runtime.ledger, str(account_id), ids.hash_api_key(key),
                                  key[: len(API_KEY_PREFIX) + 4])
    entry = getattr(request.state, "api_key", None)
    if entry is not None:  # this key's own budget and limits, as its operator set them (docs/keys.md)
        described = runtime.ledger.get(entry.key_id).describe()
        out["key"].update({k: described[k] for k in ("id", "name", "cap", "spent", "reserved", "cap_left",
                                                      "requests_per_minute", "tokens_per_minute")})
    return out


def _int(value: str | None, param: str, default: int | None, highest: int) -> int | None:
    """A positive integer query parameter, refused in OpenAI's error shape (not FastAPI's)."""
    if value is None or value == "":
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 19 or not 1 <= int(value) <= highest:
        raise APIError(400, f"Invalid value for '{param}': expected an integer from 1 to {highest}, got {value!r}.",
                       param=param, code="invalid_value")
    return int(value)


@router.get("/v1/account/receipts")
def list_receipts(request: Request, account_id: UUID = Depends(bearer_account), limit: str | None = None,
                  before: str | None = None, status: str | None = None) -> dict[str, Any]:
    """Your receipts, newest first, ``limit`` a page (1 to 100, default 20); ``before``: the
    ``next_before`` of the previous page; ``status``: issued or settled."""
    size = _int(limit, "limit", DEFAULT_PAGE, MAX_PAGE)
    cursor = _int(before, "before", None, 2**63 - 1)
    if status not in (None, "", "issued", "settled"):
        raise APIError(400, f"Invalid value for 'status': expected 'issued' or 'settled', got {status!r}.",
                       param="status", code="invalid_value")
    reader = request.app.state.runtime.reader()
    rows = reader.receipts(limit=size + 1, before=cursor, status=status, account_id=str(account_id))
    page, more = rows[:size], len(rows) > size
    data = [{"object": "receipt", "job_id": r["core"]["job_id"], **{k: v for k, v in r.items() if k != "seq"}}
            for r in page]
    return {"object": "list", "data": data, "has_more": more, "next_before": page[-1]["seq"] if more else None}


@router.get("/v1/account/usage")
def get_usage(request: Request, account_id: UUID = Depends(bearer_account), start: str | None = None,
              end: str | None = None) -> dict[str, Any]:
    """Receipted usage per UTC day and model, ``start``..``end`` (YYYY-MM-DD, both inclusive)."""
    first, last = service.usage_range(start, end)
    return service.usage_report(request.app.state.runtime.reader(), str(account_id), first, last)
