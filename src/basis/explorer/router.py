"""Server-rendered explorer pages (read-only): overview, models, receipts, workers, settlement.

Data comes from ``request.app.state.runtime`` (see docs/explorer.md for the exact contract):
``reader()``, ``network_status()``, ``models_status()`` and ``online_workers()``. Handlers are
plain ``def`` so SQLite reads run in the threadpool, never on the event loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from basis.domain.receipt import recompute_problems
from basis.explorer import data
from basis.explorer.format import base_units, format_basis, format_int, format_multiplier, short_hex

log = logging.getLogger(__name__)

router = APIRouter(tags=["explorer"], include_in_schema=False)

STATIC_PREFIX = "/explorer-static"
STATIC_FILES = {"explorer.css": "text/css; charset=utf-8", "verify.js": "text/javascript; charset=utf-8"}
PAGE_SIZE = 25
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")
COMPONENTS = (
    ("runtime", "Inference runtime"),
    ("token", "$BASIS token"),
    ("vault", "Credit vault contract"),
    ("distributor", "Reward distributor contract"),
)


@cache
def _static(name: str) -> tuple[bytes, str]:
    body = resources.files("basis.explorer").joinpath("static", name).read_bytes()
    return body, hashlib.sha256(body).hexdigest()[:16]


def _env() -> Environment:
    env = Environment(loader=PackageLoader("basis.explorer", "templates"), autoescape=select_autoescape(),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(basis=format_basis, base_units=lambda v: base_units(v) or "", intcomma=format_int,
                       multiplier=format_multiplier, short=short_hex)
    return env


templates = Jinja2Templates(env=_env())


def _runtime(request: Request) -> Any:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise HTTPException(503, "the explorer has no runtime (app.state.runtime is not set)")
    return runtime


def _render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    def path_for(route: str, **params: Any) -> str:
        return request.url_for(route, **{k: str(v) for k, v in params.items()}).path

    def static(name: str) -> str:  # content-hashed, so the long cache lifetime is safe
        return f"{path_for('explorer_static', name=name)}?v={_static(name)[1]}"

    context.setdefault("active", "")
    return templates.TemplateResponse(request, name, {"path_for": path_for, "static": static, **context},
                                      status_code=status_code)


# -- static ------------------------------------------------------------------------------------
@router.get(STATIC_PREFIX + "/{name}", name="explorer_static")
def explorer_static(name: str) -> Response:
    if name not in STATIC_FILES:
        raise HTTPException(404, "no such file")
    body, etag = _static(name)
    return Response(body, media_type=STATIC_FILES[name],
                    headers={"Cache-Control": "public, max-age=86400", "ETag": f'"{etag}"',
                             "X-Content-Type-Options": "nosniff"})


# -- pages ---------------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse, name="explorer_overview")
def overview(request: Request) -> HTMLResponse:
    rt = _runtime(request)
    reader = rt.reader()
    network = rt.network_status() or {}
    models = rt.models_status() or []
    online = rt.online_workers() or set()
    components = [{"key": key, "label": label, **_component(network.get(key))} for key, label in COMPONENTS]
    return _render(
        request, "overview.html", active="overview", network=network, components=components,
        models=models, live_models=sum(1 for m in models if m.get("status") == "live"),
        online=len(online), totals=data.receipt_totals(reader), unsettled=data.unsettled_summary(reader),
        workers=len(reader.workers()), recent=reader.receipts(limit=5))


def _component(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {"status": "pending", "address": None}
    status = value.get("status") if value.get("status") in ("live", "pending") else "pending"
    detail = value.get("detail")
    if value.get("stand_in"):
        detail = "local stand-in ERC20 for development, not the real $BASIS token"
    return {"status": status, "address": value.get("address"), "detail": detail}


@router.get("/models", response_class=HTMLResponse, name="explorer_models")
def models_page(request: Request) -> HTMLResponse:
    models = _runtime(request).models_status() or []
    return _render(request, "models.html", active="models", models=models)


@router.get("/receipts", response_class=HTMLResponse, name="explorer_receipts")
def receipts_page(request: Request, q: str | None = Query(None, max_length=200),
                  before: str | None = Query(None, max_length=20), worker: str | None = Query(None, max_length=42),
                  limit: int = Query(PAGE_SIZE, ge=1, le=100)) -> Response:
    reader = _runtime(request).reader()
    if q is not None and q.strip():
        key = q.strip()
        found = reader.receipt(key) if (_UUID.match(key) or _HASH.match(key)) else None
        if found is not None:
            return RedirectResponse(request.url_for("explorer_receipt", key=found["core"]["job_id"]).path,
                                    status_code=303)
        return _render(request, "receipts.html", status_code=404, active="receipts", receipts=[], query=key,
                       worker=None, before=None, next_before=None, limit=limit,
                       error=f"No receipt has the job id or hash {key!r}. "
                             "Search with a full job id (UUID) or a receipt hash (0x + 64 hex).")
    cursor = None
    if before:
        if not (before.isascii() and before.isdigit()) or int(before) > 2**63 - 1:  # SQLite's INTEGER range
            return _render(request, "receipts.html", status_code=400, active="receipts", receipts=[], query="",
                           worker=worker, before=None, next_before=None, limit=limit,
                           error="The page cursor is not a number.")
        cursor = int(before)
    rows = reader.receipts(limit=limit + 1, before=cursor, worker=worker)
    next_before = rows[limit - 1]["seq"] if len(rows) > limit else None
    return _render(request, "receipts.html", active="receipts", receipts=rows[:limit], query="", worker=worker,
                   before=cursor, next_before=next_before, limit=limit, error=None)


@router.get("/receipts/{key}", response_class=HTMLResponse, name="explorer_receipt")
def receipt_page(request: Request, key: str) -> Response:
    reader = _runtime(request).reader()
    found = reader.receipt(key) if (_UUID.match(key) or _HASH.match(key)) else None
    if found is None:
        return _render(request, "not_found.html", status_code=404, active="receipts",
                       message=f"No receipt has the job id or hash {key!r}.")
    job_id = found["core"]["job_id"]
    if key != job_id:  # one canonical address per receipt
        return RedirectResponse(request.url_for("explorer_receipt", key=job_id).path, status_code=308)
    core = found["core"]
    charged, reward = base_units(core.get("charged")), base_units(core.get("reward"))
    fee = str(int(charged) - int(reward)) if charged is not None and reward is not None else None
    worker = reader.worker_status(core["worker"]) if core.get("worker") else None
    return _render(
        request, "receipt.html", active="receipts", r=found, core=core, fee=fee,
        core_pretty=json.dumps(core, indent=2, ensure_ascii=False), problems=recompute_problems(core),
        job=reader.job(job_id), worker=worker, thresholds=_worker_thresholds(_runtime(request)))


def _worker_thresholds(rt: Any) -> dict[str, float] | None:
    """The published per-worker suspension levels (None: the runtime publishes no policy, or it is off)."""
    policy = getattr(rt, "verification", None)
    if policy is None or not policy.enabled:
        return None
    from basis.verification.sequential import e_threshold

    return {"cusum": float(policy.worker_threshold), "e": e_threshold(policy.worker_e_alpha),
            "e_alpha": float(policy.worker_e_alpha), "fast": float(policy.fast_threshold),
            "fast_drift": float(policy.fast_drift)}


@router.get("/workers", response_class=HTMLResponse, name="explorer_workers")
def workers_page(request: Request) -> HTMLResponse:
    rt = _runtime(request)
    online = {a.lower() for a in (rt.online_workers() or set())}
    policy = getattr(rt, "verification", None)  # optional: the published verification policy
    probation = policy.probation_jobs if policy is not None and policy.enabled else None
    rows = data.worker_rows(rt.reader(), online, probation_jobs=probation)
    return _render(request, "workers.html", active="workers", workers=rows,
                   online=sum(1 for w in rows if w["online"]))


@router.get("/settlement", response_class=HTMLResponse, name="explorer_settlement")
def settlement_page(request: Request) -> HTMLResponse:
    rt = _runtime(request)
    reader = rt.reader()
    batches, source = data.settlement_batches(reader)
    status = getattr(rt, "settlement_status", lambda: None)()  # None: the gateway does not settle
    delay, roots = _root_states(rt)
    return _render(request, "settlement.html", active="settlement", batches=batches, source=source,
                   unsettled=data.unsettled_summary(reader), status=status, root_delay=delay, roots=roots)


def _root_states(rt: Any) -> tuple[int | None, dict[str, Any]]:
    """The distributor's delay and each posted rewards root's fate, read from the chain (read-only);
    (None, {}) without a chain or when it cannot be read: the page then says so."""
    web3, deployment = getattr(rt, "web3", None), getattr(rt, "deployment", None)
    if web3 is None or not deployment:
        return None, {}
    try:
        from basis.chain.contracts import BasisContracts
        from basis.chain.roots import root_history

        contracts = BasisContracts.from_manifest(web3, deployment)
        history = root_history(contracts, int(deployment.get("deploy_block") or 0))
        return contracts.root_delay(), {r.batch_id: r for r in history}
    except Exception as exc:  # the chain may be unreachable; the page shows the ledger's side only
        log.warning("rewards-root states unreadable: %s", exc)
        return None, {}
