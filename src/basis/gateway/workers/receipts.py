"""Relay each signed receipt to the worker that served the job (protocol v2), once durable.

The chat service hands ``finish_job`` to the ledger's job writer and awaits a future that resolves
with the receipt only after the job's end is committed. ``relay_receipts`` wraps the writer's
``submit_async`` so that the resolved receipt of a contributor-served job is queued for its worker
(``WorkerHub.notify``); nothing in the chat code changes, and a receipt never reaches a worker
before the ledger holds it.

Verdicts: when the verifier records a verdict, call ``notify_verdict(hub, receipt, verdict)``
(the hook for the verification code; it builds the ``verdict`` frame from the recorded event).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from basis.protocol import ReceiptFrame, VerdictFrame

log = logging.getLogger("basis.gateway.workers")


def receipt_frame(receipt: dict[str, Any]) -> ReceiptFrame | None:
    core = receipt.get("core") or {}
    if not core.get("worker") or not receipt.get("signature"):
        return None  # gateway-served: nobody to tell
    return ReceiptFrame(job_id=core["job_id"], core=core, hash=receipt["hash"], signature=receipt["signature"])


def relay_receipts(job_writer: Any, hub: Any) -> None:
    original = job_writer.submit_async
    seen: weakref.WeakSet[asyncio.Future[Any]] = weakref.WeakSet()

    def on_recorded(fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        receipt = fut.result()
        if not isinstance(receipt, dict):
            return
        try:
            frame = receipt_frame(receipt)
            if frame is not None:
                hub.notify(frame.core["worker"], frame)
        except Exception:  # a relay problem must never touch the job's own response
            log.exception("relaying the receipt of job %s failed", receipt.get("core", {}).get("job_id"))

    def submit_async(name: str, kwargs: dict[str, Any], waiter: asyncio.Future[Any]) -> None:
        if name == "finish_job" and waiter not in seen:  # a writer restart resubmits the same waiter
            seen.add(waiter)
            waiter.add_done_callback(on_recorded)
        return original(name, kwargs, waiter)

    job_writer.submit_async = submit_async


def notify_verdict(hub: Any, receipt: dict[str, Any], verdict: dict[str, Any]) -> bool:
    """Queue the ``verdict`` frame of a recorded verdict for the job's worker (any thread).

    ``receipt``: the job's receipt (core, hash); ``verdict``: the recorded verdict event's data
    (``verdict``, ``method``, ``tokens``, ``statistic``, ``reward_forfeited``, ``ids_sha256``)."""
    core = receipt.get("core") or {}
    if not core.get("worker"):
        return False
    frame = VerdictFrame(job_id=core["job_id"], hash=receipt["hash"], verdict=verdict["verdict"],
                         method=verdict.get("method", ""), tokens=int(verdict.get("tokens", 0)),
                         statistic=dict(verdict.get("statistic") or {}),
                         reward_forfeited=bool(verdict.get("reward_forfeited", verdict["verdict"] == "failed")),
                         ids_sha256=verdict.get("ids_sha256"))
    hub.notify(core["worker"], frame)
    return True
