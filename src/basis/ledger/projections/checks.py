"""Projection of verification events (DESIGN 1.6): checks, verdicts, forfeits, worker status.

The job's check request carries the ids the verifier needs; the views keep only their SHA-256.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from basis.verification.sequential import WorkerEvidence

if TYPE_CHECKING:
    from basis.ledger.projections.projector import Projector, _Batch


def _ts(d: dict[str, Any]) -> str:
    return d["timestamp"].isoformat()


def reward_row(b: _Batch, worker: str) -> dict[str, Any]:
    row = b.row("rewards", worker)
    if row is None:
        row = {"worker": worker, "accrued": 0, "settled": 0, "claimed": 0, "jobs": 0, "output_tokens": 0,
               "forfeited": 0}
        b.put("rewards", worker, row)
    return row


def check_requested(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    job = p._job(b, n)
    p.db.execute("INSERT INTO checks VALUES (?, ?, ?, ?, 'pending', ?, NULL, NULL, NULL, NULL, ?, NULL)",
                 (job["job_id"], job["worker"], job["model"], d["reason"], d["ids_sha256"], _ts(d)))


def verified(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    p.db.execute("UPDATE checks SET status = ?, method = ?, tokens = ?, statistic = ?, evidence = ?, judged_at = ?"
                 " WHERE job_id = ?", (d["verdict"], d["method"], d["tokens"],
                                       json.dumps(d["statistic"], sort_keys=True), d["evidence"], _ts(d),
                                       str(n.originator_id)))


def reward_forfeited(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    job = p._job(b, n)
    worker = job["worker"]
    amount = int(d.get("amount", 0))
    p.db.execute("INSERT INTO forfeits VALUES (?, ?, ?, ?, ?, ?)",
                 (job["job_id"], worker, str(amount), d["reason"], json.dumps(d["evidence"]), _ts(d)))
    reward_row(b, worker)["forfeited"] += amount


def _status_row(p: Projector, n: Any, d: dict[str, Any]) -> dict[str, Any]:
    found = p.db.execute("SELECT address FROM workers WHERE worker_id = ?", (str(n.originator_id),)).fetchone()
    assert found is not None, f"event for unknown worker {n.originator_id}"
    cur = p.db.execute("SELECT * FROM worker_status WHERE address = ?", (found[0],))
    row = cur.fetchone()
    if row is None:
        return {"address": found[0], "checked": 0, "failed": 0, "upper": 0.0, "lower": 0.0, "status": "active",
                "suspended_by": None, "reason": None, "evidence": None, "updated_at": _ts(d), "probation_from": 0,
                "e_level": 0.0, "fast": 0.0}
    return dict(zip([c[0] for c in cur.description], row, strict=True))


def _put_status(p: Projector, row: dict[str, Any]) -> None:
    cols = ", ".join(row)
    p.db.execute(f"INSERT OR REPLACE INTO worker_status ({cols}) VALUES ({', '.join('?' for _ in row)})",
                 tuple(row.values()))


def worker_checked(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    row = _status_row(p, n, d)
    ev = WorkerEvidence(row["checked"], row["failed"], row["upper"], row["lower"], row["e_level"],
                        row["fast"]).fold_checked(d)
    row.update(checked=ev.checked, failed=ev.failed, upper=ev.upper, lower=ev.lower, e_level=ev.e_level,
               fast=ev.fast, updated_at=_ts(d))
    _put_status(p, row)


def worker_suspended(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    row = _status_row(p, n, d)
    row.update(status="suspended", suspended_by=d["by"], reason=d["reason"], evidence=json.dumps(d["evidence"]),
               updated_at=_ts(d))
    _put_status(p, row)


def worker_reinstated(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    row = _status_row(p, n, d)
    row.update(status="active", suspended_by=None, reason=d["reason"], evidence=None, upper=0.0, lower=0.0,
               e_level=0.0, fast=0.0, updated_at=_ts(d))
    _put_status(p, row)


def worker_probation_started(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    row = _status_row(p, n, d)
    row.update(probation_from=int(d["from_checked"]), updated_at=_ts(d))
    _put_status(p, row)


HANDLERS = {
    "basis:Job.CheckRequested.v1": check_requested,
    "basis:Job.Verified.v1": verified,
    "basis:Job.RewardForfeited.v1": reward_forfeited,
    "basis:Worker.Checked.v1": worker_checked,
    "basis:Worker.Suspended.v1": worker_suspended,
    "basis:Worker.Reinstated.v1": worker_reinstated,
    "basis:Worker.ProbationStarted.v1": worker_probation_started,
}
