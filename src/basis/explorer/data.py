"""Read-side adapters over the views: the explorer only reads, and it tolerates views that are
still being added (the settlement tables) by falling back to what the receipts already carry."""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any

from basis.explorer.format import base_units, sum_amounts

log = logging.getLogger(__name__)

# Names the settlement session may give its batch table, newest guess first.
BATCH_TABLES = ("settlement_batches", "batches", "settlements")
# Canonical field -> column names it may appear under.
BATCH_FIELDS: dict[str, tuple[str, ...]] = {
    "batch_id": ("batch_id", "id", "batch"),
    "receipts_root": ("receipts_root", "receipt_root", "root"),
    "rewards_root": ("rewards_root", "reward_root"),
    "tx_hash": ("tx_hash", "tx", "transaction_hash", "settle_tx"),
    "chain_id": ("chain_id",),
    "status": ("status", "state"),
    "receipts": ("receipts", "receipt_count", "receipts_count", "n_receipts", "count", "leaves"),
    "charged": ("charged", "total_charged", "charged_total"),
    "reward": ("reward", "rewards", "total_reward", "reward_total", "rewards_total"),
    "fee": ("fee", "fees", "total_fee", "fee_total"),
    "from_deposit": ("from_deposit", "deposit_backed", "charged_deposit", "vault_amount"),
    "to_treasury": ("to_treasury",),
    "reward_top_up": ("reward_top_up",),
    "block": ("block", "block_number"),
    "created_at": ("proposed_at", "created_at", "posted_at", "settled_at", "at", "timestamp"),
    "closed_at": ("closed_at", "confirmed_at"),
    "anchor_position": ("anchor_position",),
    "anchor_head": ("anchor_head",),
}


def _pick(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    return None


def normalize_batch(raw: dict[str, Any]) -> dict[str, Any]:
    out = {field: _pick(raw, names) for field, names in BATCH_FIELDS.items()}
    if isinstance(out["receipts"], list | tuple):
        out["receipts"] = len(out["receipts"])
    if out["fee"] is None and base_units(out["charged"]) and base_units(out["reward"]):
        out["fee"] = str(int(base_units(out["charged"])) - int(base_units(out["reward"])))
    return out


def _batch_table(db: sqlite3.Connection) -> str | None:
    marks = ", ".join("?" for _ in BATCH_TABLES)
    names = {r[0] for r in db.execute(
        f"SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name IN ({marks})", BATCH_TABLES)}
    return next((t for t in BATCH_TABLES if t in names), None)


def _batches_from_table(reader: Any, limit: int) -> list[dict[str, Any]] | None:
    """Rows of the settlement session's batch view, or None when there is none yet."""
    method = getattr(reader, "batches", None) or getattr(reader, "settlement_batches", None)
    if callable(method):
        try:
            rows = method(limit=limit)
        except TypeError:
            rows = method()
        return [dict(r) for r in rows][:limit]
    db = getattr(reader, "db", None)
    if db is None:
        return None
    table = _batch_table(db)
    if table is None:
        return None
    cur = db.execute(f"SELECT * FROM {table} ORDER BY rowid DESC LIMIT ?", (limit,))
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur]


def _batches_from_receipts(reader: Any, limit: int) -> list[dict[str, Any]]:
    """Batches as the settled receipts' envelopes point at them (no roots: those live in the batch view)."""
    groups: dict[str, dict[str, Any]] = {}
    for row in reader.db.execute(
            "SELECT settlement, charged, reward, settled_at FROM receipts WHERE settlement IS NOT NULL ORDER BY seq"):
        pointer = json.loads(row[0])
        g = groups.setdefault(str(pointer.get("batch_id")), {
            "batch_id": pointer.get("batch_id"), "tx_hash": pointer.get("tx_hash"),
            "chain_id": pointer.get("chain_id"), "status": "settled", "receipts": 0,
            "charged": [], "reward": [], "created_at": row[3]})
        g["receipts"] += 1
        g["charged"].append(row[1])
        g["reward"].append(row[2])
    out = []
    for g in groups.values():
        g["charged"] = str(sum_amounts(g["charged"]))
        g["reward"] = str(sum_amounts(g["reward"]))
        out.append(g)
    return list(reversed(out))[:limit]


def settlement_batches(reader: Any, limit: int = 50) -> tuple[list[dict[str, Any]], str]:
    """(batches newest first, source): source is "batches" (the settlement view), "receipts" (only
    derived from settled receipts' pointers: no roots), "mixed" (both) or "none" (no view yet).
    Each batch is normalised to the keys of BATCH_FIELDS (None where unknown)."""
    batches: list[dict[str, Any]] = []
    source = "none"
    try:
        rows = _batches_from_table(reader, limit)
        if rows is not None:
            batches = [normalize_batch(r) for r in rows]
            _fill_counts(reader, batches)
            source = "batches"
    except (sqlite3.Error, AttributeError, KeyError, TypeError, ValueError) as exc:
        log.warning("settlement batch view unreadable, falling back to receipts: %s", exc)
    try:  # receipts settled into a batch the batch view does not (yet) show
        known = {str(b["batch_id"]) for b in batches}
        derived = [normalize_batch(r) for r in _batches_from_receipts(reader, limit)
                   if str(r["batch_id"]) not in known]
    except (sqlite3.Error, AttributeError, KeyError, TypeError, ValueError) as exc:
        log.warning("settlement pointers unreadable: %s", exc)
        derived = []
    if derived:
        batches += derived
        source = "receipts" if source == "none" else "mixed"
    return batches[:limit], source


def _fill_counts(reader: Any, batches: list[dict[str, Any]]) -> None:
    for b in batches:
        if b["receipts"] is None and b["batch_id"] is not None:
            try:
                b["receipts"] = reader.db.execute(
                    "SELECT COUNT(*) FROM receipts WHERE json_extract(settlement, '$.batch_id') = ?",
                    (b["batch_id"],)).fetchone()[0]
            except (sqlite3.Error, AttributeError):
                return


def unsettled_summary(reader: Any) -> dict[str, Any]:
    """Count and integer totals of issued-but-unsettled receipts."""
    rows = reader.db.execute("SELECT charged, reward FROM receipts WHERE status = 'issued'").fetchall()
    return {"receipts": len(rows), "charged": str(sum_amounts([r[0] for r in rows])),
            "reward": str(sum_amounts([r[1] for r in rows]))}


def receipt_totals(reader: Any) -> dict[str, Any]:
    row = reader.db.execute("SELECT COUNT(*), COUNT(DISTINCT worker) FROM receipts").fetchone()
    return {"receipts": row[0], "workers_paid": row[1]}


REWARD_FIELDS = ("accrued", "settled", "claimed", "jobs", "output_tokens")


def worker_rows(reader: Any, online: set[str], probation_jobs: int | None = None) -> list[dict[str, Any]]:
    """Registered workers plus any address that earned rewards without a registration row, online
    first. Addresses are matched lowercase: the workers view may hold a checksummed address while
    receipts and rewards hold it lowercase, so the rewards are joined here rather than in SQL.
    With ``probation_jobs`` (verification on), an active worker still in its probation (every job
    checked: its first N checked jobs, and N again after a reinstatement) gets ``probation_left``."""
    rewards = {r["worker"].lower(): r for r in reader.rewards()}
    empty = {"accrued": "0", "settled": "0", "claimed": "0", "jobs": 0, "output_tokens": 0}
    rows: dict[str, dict[str, Any]] = {}
    for w in reader.workers():
        addr = w["address"].lower()
        earned = rewards.get(addr, empty)
        rows[addr] = {**w, **{k: earned[k] for k in REWARD_FIELDS}, "address": addr, "registered": True}
    for addr, r in rewards.items():
        if addr not in rows:
            rows[addr] = {"address": addr, "models": [], "software": "", "registered": False, "registered_at": None,
                          **{k: r[k] for k in REWARD_FIELDS}}
    out = []
    for addr, w in rows.items():
        w["online"] = addr in online
        left = None
        if probation_jobs and w.get("registered") and w.get("status", "active") == "active":
            left = max(0, int(w.get("probation_from") or 0) + probation_jobs - int(w.get("checked") or 0)) or None
        w["probation_left"] = left
        out.append(w)
    out.sort(key=lambda w: (not w["online"], w["address"]))
    return out
