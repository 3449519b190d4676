"""/admin/keys: the operator's key API (LiteLLM's virtual keys, OpenRouter's key API), behind the
admin key: BASIS_ADMIN_KEY, or ``admin.key`` under the home (`basis up` creates it). An inference
key is never an admin key. Off (404) when neither is set.

    POST   /admin/keys                  create (the key is in this answer only)
    GET    /admin/keys?account=NAME     list (every account's keys without ``account``)
    GET    /admin/keys/{id}             one key: spend, cap, limits, revoked
    PATCH  /admin/keys/{id}             set or lift (null) cap / requests_per_minute / tokens_per_minute
    POST   /admin/keys/{id}/revoke      revoke (at once on every gateway sharing the store)
    DELETE /admin/keys/{id}             the same as revoke (the key's record is kept)
"""

from __future__ import annotations

import secrets
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from basis.domain.pricing import PricingError
from basis.gateway.admin import service
from basis.gateway.admin.schemas import KeyCreate, KeyRevoke, KeyUpdate
from basis.gateway.errors import APIError
from basis.ledger.errors import KeyRevoked, UnknownApiKey


def admin_only(request: Request) -> None:
    runtime = request.app.state.runtime
    expected = runtime.settings.admin_key()
    if expected is None:
        raise APIError(404, "The admin API is off on this gateway: set BASIS_ADMIN_KEY or create admin.key in "
                       "its home (`basis up` does).", code="admin_api_off")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise APIError(401, "The admin API needs the admin key: 'Authorization: Bearer <admin key>'.",
                       code="missing_admin_key")
    if not secrets.compare_digest(given.strip().encode(), expected.encode()):
        raise APIError(401, "Incorrect admin key (an inference API key is never an admin key).",
                       code="invalid_admin_key")


router = APIRouter(prefix="/admin/keys", tags=["admin"], dependencies=[Depends(admin_only)])


def _key_id(key_id: str) -> UUID:
    try:
        return service.key_id_of(key_id)
    except ValueError:
        raise APIError(400, f"Invalid API key id {key_id[:40]!r}: expected a UUID.", param="id",
                       code="invalid_value") from None


def _refusal(exc: Exception) -> APIError:
    if isinstance(exc, UnknownApiKey):
        return APIError(404, str(exc), param="id", code="api_key_not_found")
    if isinstance(exc, KeyRevoked):
        return APIError(409, f"{exc}: a revoked key cannot be changed.", code="api_key_revoked", retry=False)
    if isinstance(exc, PricingError | ValueError):
        return APIError(400, str(exc), code="invalid_value")
    raise exc


@router.post("", status_code=201)
def create_key(request: Request, body: KeyCreate) -> JSONResponse:
    ledger = request.app.state.runtime.ledger
    try:
        out = service.create(ledger, body.account, name=body.name, cap=service.parse_cap(body.cap),
                             requests_per_minute=body.requests_per_minute, tokens_per_minute=body.tokens_per_minute)
    except (PricingError, ValueError) as exc:
        raise _refusal(exc) from None
    return JSONResponse(out, status_code=201)


@router.get("")
def list_keys(request: Request, account: str | None = None, include_revoked: bool = True) -> dict[str, Any]:
    runtime = request.app.state.runtime
    names = [account] if account else [a["name"] for a in runtime.reader().accounts()]
    return {"object": "list", "data": service.list_keys(runtime.ledger, names, include_revoked)}


@router.get("/{key_id}")
def get_key(request: Request, key_id: str) -> dict[str, Any]:
    try:
        return service.describe(request.app.state.runtime.ledger, _key_id(key_id))
    except UnknownApiKey as exc:
        raise _refusal(exc) from None


@router.patch("/{key_id}")
def update_key(request: Request, key_id: str, body: KeyUpdate) -> dict[str, Any]:
    sent = body.model_fields_set
    if not sent:
        raise APIError(400, "Nothing to change: send cap, requests_per_minute and/or tokens_per_minute.",
                       code="invalid_value")
    changes: dict[str, Any] = {f: getattr(body, f) for f in sent}
    try:
        if "cap" in changes:
            changes["cap"] = service.parse_cap(changes["cap"])
        return service.update(request.app.state.runtime.ledger, _key_id(key_id), **changes)
    except (UnknownApiKey, KeyRevoked, PricingError, ValueError) as exc:
        raise _refusal(exc) from None


@router.post("/{key_id}/revoke")
def revoke_key(request: Request, key_id: str, body: KeyRevoke | None = None) -> dict[str, Any]:
    try:
        return service.revoke(request.app.state.runtime.ledger, _key_id(key_id), body.reason if body else "")
    except UnknownApiKey as exc:
        raise _refusal(exc) from None


@router.delete("/{key_id}")
def delete_key(request: Request, key_id: str) -> dict[str, Any]:
    return revoke_key(request, key_id, None)
