"""Read-only queries over the views, for the API, the explorer, the CLI and the auditor."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from basis.ledger.projections.projector import connect

TABLES = {  # table -> primary-key order used for canonical dumps
    "accounts": "account_id",
    "credits": "source, external_id",
    "jobs": "job_id",
    "receipts": "job_id",
    "rewards": "worker",
    "workers": "address",
    "settlement_batches": "batch_id",
    "withdrawals": "book_id, nonce",
    "claims": "tx_hash, log_index",
    "chain_cursors": "cursor_id",
    "api_keys": "key_hash",
    "usage_daily": "usage_key",
    "checks": "job_id",
    "forfeits": "job_id",
    "worker_status": "address",
}


class ViewReader:
    def __init__(self, path: str | Path) -> None:
        self.db = connect(path)
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    # -- receipts ---------------------------------------------------------------------------
    def receipt_json(self, row: sqlite3.Row) -> dict[str, Any]:
        return {
            "core": json.loads(row["core"]),
            "hash": row["hash"],
            "signature": row["signature"],
            "signer": row["signer"],
            "status": row["status"],
            "settlement": json.loads(row["settlement"]) if row["settlement"] else None,
            "issued_at": row["issued_at"],
            "settled_at": row["settled_at"],
            **self.verification(row["job_id"]),
        }

    def verification(self, job_id: str) -> dict[str, Any]:
        """The envelope's ``verification`` (null while unchecked or never checked) and
        ``reward_forfeited`` (DESIGN 1.6)."""
        check = self.db.execute("SELECT status, method, tokens, statistic FROM checks WHERE job_id = ?"
                                " AND status != 'pending'", (job_id,)).fetchone()
        forfeited = self.db.execute("SELECT 1 FROM forfeits WHERE job_id = ?", (job_id,)).fetchone()
        verdict = None if check is None else {"verdict": check["status"], "method": check["method"],
                                              "tokens": check["tokens"], "statistic": json.loads(check["statistic"])}
        return {"verification": verdict, "reward_forfeited": forfeited is not None}

    def receipt(self, job_id_or_hash: str) -> dict[str, Any] | None:
        key = job_id_or_hash.lower()
        col = "hash" if key.startswith("0x") else "job_id"
        row = self.db.execute(f"SELECT * FROM receipts WHERE {col} = ?", (key,)).fetchone()
        return self.receipt_json(row) if row else None

    def receipts(self, *, limit: int = 50, before: int | None = None, worker: str | None = None,
                 status: str | None = None, account_id: str | None = None) -> list[dict[str, Any]]:
        """Newest first; ``before`` is the ``seq`` cursor of the last item of the previous page."""
        rows = self._page("receipts", limit, before, worker=worker.lower() if worker else None, status=status,
                          account_id=account_id)
        return [{**self.receipt_json(r), "seq": r["seq"]} for r in rows]

    def _page(self, table: str, limit: int, before: int | None, **equal: Any) -> list[sqlite3.Row]:
        """Newest first by ``seq``, below the ``before`` cursor, matching the given columns (None: any)."""
        where, args = [], []
        if before is not None:
            where.append("seq < ?")
            args.append(before)
        for column, value in equal.items():
            if value is not None and value != "":
                where.append(f"{column} = ?")
                args.append(value)
        sql = f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(where) if where else "")
        return self.db.execute(sql + " ORDER BY seq DESC LIMIT ?", (*args, limit)).fetchall()

    def iter_receipts(self) -> Iterator[sqlite3.Row]:
        yield from self.db.execute("SELECT * FROM receipts ORDER BY seq")

    def unsettled_receipts(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM receipts WHERE status = 'issued' ORDER BY seq").fetchall()

    # -- accounts, workers, jobs -------------------------------------------------------------
    def account(self, account_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM accounts WHERE account_id = ?", (account_id,)).fetchone()
        return balance_json(row) if row else None

    def accounts(self) -> list[dict[str, Any]]:
        return [balance_json(r) for r in self.db.execute("SELECT * FROM accounts ORDER BY name")]

    def credits_by_source(self, account_id: str) -> dict[str, int]:
        """Credited amount per credit source (grant, deposit, ...), summed as integers."""
        out: dict[str, int] = {}
        for source, amount in self.db.execute("SELECT source, amount FROM credits WHERE account_id = ?",
                                              (account_id,)):
            out[source] = out.get(source, 0) + int(amount)
        return out

    def api_keys(self, account_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT key_hash, prefix, created_at FROM api_keys WHERE account_id = ?"
                               " ORDER BY created_at, key_hash", (account_id,))
        return [dict(r) for r in rows]

    def usage(self, account_id: str, start_day: str, end_day: str) -> list[dict[str, Any]]:
        """Receipted usage rows of one account for UTC days ``start_day``..``end_day`` (inclusive,
        ``YYYY-MM-DD``), by day then model; ``charged`` an int."""
        rows = self.db.execute(
            "SELECT day, model, receipts, prompt_tokens, output_tokens, charged FROM usage_daily"
            " WHERE account_id = ? AND day >= ? AND day <= ? ORDER BY day, model", (account_id, start_day, end_day))
        return [{**dict(r), "charged": int(r["charged"])} for r in rows]

    def rewards(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM rewards ORDER BY worker")]

    def workers(self) -> list[dict[str, Any]]:
        out = []
        for r in self.db.execute(
            "SELECT w.*, COALESCE(rw.accrued, '0') AS accrued, COALESCE(rw.settled, '0') AS settled,"
            " COALESCE(rw.claimed, '0') AS claimed, COALESCE(rw.jobs, 0) AS jobs,"
            " COALESCE(rw.output_tokens, 0) AS output_tokens, COALESCE(rw.forfeited, '0') AS forfeited,"
            " COALESCE(ws.checked, 0) AS checked, COALESCE(ws.failed, 0) AS failed,"
            " COALESCE(ws.status, 'active') AS status, ws.suspended_by, ws.reason AS status_reason,"
            " COALESCE(ws.probation_from, 0) AS probation_from"
            " FROM workers w LEFT JOIN rewards rw ON rw.worker = w.address"
            " LEFT JOIN worker_status ws ON ws.address = w.address ORDER BY w.address"
        ):
            d = dict(r)
            d["models"] = json.loads(d["models"])
            out.append(d)
        return out

    def worker_status(self, address: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM worker_status WHERE address = ?", (address.lower(),)).fetchone()
        return dict(row) if row else None

    def pending_checks(self, limit: int = 100) -> list[dict[str, Any]]:
        """Jobs selected for verification and not yet judged, oldest first (what a verifier does next)."""
        rows = self.db.execute("SELECT job_id, worker, model, requested_at FROM checks WHERE status = 'pending'"
                               " ORDER BY requested_at, job_id LIMIT ?", (limit,))
        return [dict(r) for r in rows]

    def unsettled_of(self, worker: str) -> list[str]:
        """A worker's issued, unsettled receipts (job ids): what its suspension forfeits."""
        rows = self.db.execute("SELECT job_id FROM receipts WHERE worker = ? AND status = 'issued' ORDER BY seq",
                               (worker.lower(),))
        return [r[0] for r in rows]

    def unforfeited_of_suspended(self) -> dict[str, list[str]]:
        """Suspended workers' issued receipts with a reward that no forfeit reached yet, by worker."""
        out: dict[str, list[str]] = {}
        for worker, job_id in self.db.execute(
                "SELECT r.worker, r.job_id FROM receipts r JOIN worker_status w ON w.address = r.worker"
                " WHERE w.status = 'suspended' AND r.status = 'issued' AND r.reward != '0'"
                " AND NOT EXISTS (SELECT 1 FROM forfeits f WHERE f.job_id = r.job_id) ORDER BY r.seq"):
            out.setdefault(worker, []).append(job_id)
        return out

    def job(self, job_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return dict(row) if row else None

    def open_jobs(self, node: str) -> list[str]:
        """Jobs this node accepted that never ended (a crash interrupted them)."""
        rows = self.db.execute(
            "SELECT job_id FROM jobs WHERE node = ? AND status IN ('accepted', 'assigned')", (node,))
        return [r[0] for r in rows]

    def counts(self) -> dict[str, int]:
        return {t: self.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}

    def position(self) -> int:
        row = self.db.execute("SELECT position FROM tracking WHERE view = 'basis'").fetchone()
        return row[0] if row else 0

    # -- settlement ---------------------------------------------------------------------------
    @staticmethod
    def batch_json(row: sqlite3.Row, *, full: bool = False) -> dict[str, Any]:
        d = dict(row)
        d.pop("aggregate_id", None)
        hashes, rewards = d.pop("hashes"), d.pop("rewards")
        if full:
            d["receipt_hashes"] = json.loads(hashes)
            d["rewards"] = json.loads(rewards)
        return d

    def batches(self, *, limit: int = 50, before: int | None = None, status: str | None = None,
                full: bool = False) -> list[dict[str, Any]]:
        """Newest first; ``before`` is the ``seq`` of the last item of the previous page."""
        rows = self._page("settlement_batches", limit, before, status=status)
        return [self.batch_json(r, full=full) for r in rows]

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM settlement_batches WHERE batch_id = ?", (batch_id.lower(),)).fetchone()
        return self.batch_json(row, full=True) if row else None

    def latest_confirmed_batch(self) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT * FROM settlement_batches WHERE status = 'confirmed' ORDER BY seq DESC LIMIT 1").fetchone()
        return self.batch_json(row, full=True) if row else None

    def withdrawals(self, account_id: str | None = None) -> list[dict[str, Any]]:
        if account_id:
            rows = self.db.execute("SELECT * FROM withdrawals WHERE account_id = ? ORDER BY nonce", (account_id,))
        else:
            rows = self.db.execute("SELECT * FROM withdrawals ORDER BY nonce")
        return [dict(r) for r in rows]

    def claims(self, worker: str | None = None) -> list[dict[str, Any]]:
        if worker:
            rows = self.db.execute("SELECT * FROM claims WHERE worker = ? ORDER BY block, log_index", (worker.lower(),))
        else:
            rows = self.db.execute("SELECT * FROM claims ORDER BY block, log_index")
        return [dict(r) for r in rows]

    # -- audit ------------------------------------------------------------------------------
    def dump_rows(self, table: str) -> Iterator[bytes]:
        """Each row as canonical bytes, in primary-key order: the unit of byte-for-byte comparison."""
        cur = self.db.execute(f"SELECT * FROM {table} ORDER BY {TABLES[table]}")
        cols = [c[0] for c in cur.description]
        for row in cur:
            yield json.dumps(dict(zip(cols, tuple(row), strict=True)), sort_keys=True,
                             separators=(",", ":")).encode()

    def digest(self, table: str) -> str:
        h = hashlib.sha256()
        for line in self.dump_rows(table):
            h.update(line + b"\n")
        return h.hexdigest()


def balance_json(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    credit = int(d["granted"]) + int(d["deposited"]) + int(d.get("refunded") or 0)
    spent = int(d["spent_granted"]) + int(d["spent_deposited"])
    d["spent"] = str(spent)
    d["available"] = str(credit - spent - int(d["withdrawn"]) - int(d["reserved"]))
    return d
