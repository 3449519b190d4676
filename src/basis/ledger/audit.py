"""The auditor's tool: replay every event into empty views and check everything.

Checks (each failure is named):
- the live views equal a fresh replay, table by table, byte for byte;
- every receipt: core well-formed, charge and reward recomputed from the core, hash recomputed
  with RFC 8785 + SHA-256, signature recovers to the operator's published address;
- money invariants: charged = reward + fee with fee >= 0; per account credits - spent -
  withdrawn - reserved = available >= 0, spent = sum of its receipts' charges; per worker
  accrued reward = sum of its receipts' rewards; account aggregates equal their views;
- per API key: no reservation ever took its spend past the cap it had then, and what it spent
  is exactly its jobs' receipted charges.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from basis.ledger.projections import Projector, ViewReader
from basis.ledger.projections.reader import TABLES
from basis.ledger.receipt_audit import ReceiptTally, check_receipt
from basis.ledger.snapshot import LedgerSnapshot, fold_events
from basis.ledger.store import LedgerStore
from basis.ledger.verification_audit import check_verification


@dataclass
class AuditReport:
    events: int = 0
    receipts: int = 0
    accounts: int = 0
    workers: int = 0
    open_jobs: int = 0
    charged_total: int = 0
    reward_total: int = 0
    position: int = 0  # the log position audited: everything up to it, nothing after (a live snapshot)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not a difference (a batch in flight)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "events": self.events, "receipts": self.receipts, "accounts": self.accounts,
            "workers": self.workers, "open_jobs": self.open_jobs, "charged_total": str(self.charged_total),
            "reward_total": str(self.reward_total), "fee_total": str(self.charged_total - self.reward_total),
            "position": self.position, "problems": self.problems, "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)


def audit(store: LedgerStore, live_views: str | Path | None, *, signer: str | None = None,
          on_progress: Callable[[int, int], None] | None = None, replay_path: str | Path | None = None,
          replayed: bool = False, receipts: ReceiptTally | None = None, snapshot: LedgerSnapshot | None = None,
          account_views: dict[str, dict[str, int]] | None = None) -> AuditReport:
    """``live_views`` None: no live views to compare (an export replayed elsewhere). ``replay_path``:
    keep the fresh replay's views there (else they are deleted). ``replayed``: the views at
    ``replay_path`` already are the fresh replay of the whole store (an export projected as it was
    read). ``receipts``: the store's receipt events already checked one by one (else the receipts of
    the replayed views are checked here). ``snapshot`` (with no live views): the store as of its
    position, and ``account_views`` some of its account aggregates' ``snapshot_view()`` already
    rebuilt there, by account id (the others are rebuilt here).

    Gateways may write while it runs: it audits one snapshot, the log up to one position (the live
    views' position, read in the same read transaction as every live table), with aggregates read
    at their versions there (``report.position``)."""
    report = AuditReport()
    current = None
    if live_views is not None:
        live = Projector(store, live_views)
        live.catch_up()
        live.stop()
        current = ViewReader(live_views)
        current.db.execute("BEGIN")  # one read snapshot of the live views while their projector goes on
        position = current.position()
    elif snapshot is not None:
        position = snapshot.position
    else:
        position = store.recorder.max_notification_id() or 0
    report.position = total = position
    if snapshot is None or snapshot.position != position:
        snapshot, account_views = LedgerSnapshot(store, position), None

    with tempfile.TemporaryDirectory(prefix="basis-audit-") as tmp:
        fresh_path = Path(replay_path) if replay_path is not None else Path(tmp) / "replay.sqlite3"
        if not replayed:
            fresh = Projector(store, fresh_path)
            done = 0
            while n := fresh.run_once(stop=position):
                done += n
                if on_progress:
                    on_progress(done, total)
            fresh.stop()

        replay = ViewReader(fresh_path)
        try:
            report.events = replay.position()
            if current is not None:
                _compare_views(replay, current, report)
            if receipts is None:
                _check_receipts(replay, report, signer)
            else:
                _add_receipts(report, receipts)
            _check_money(replay, snapshot, report, account_views or {})
            check_verification(replay, store, report.problems, upto=snapshot.position)
            _check_key_caps(replay, snapshot, report)
            counts = replay.counts()
            report.accounts, report.workers = counts["accounts"], counts["workers"]
            report.open_jobs = replay.db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status IN ('accepted', 'assigned')").fetchone()[0]
        finally:
            replay.close()
            if current is not None:
                current.close()
    return report


def _compare_views(replay: ViewReader, live: ViewReader, report: AuditReport) -> None:
    if replay.position() != live.position():
        report.problems.append(f"live views at position {live.position()}, replay at {replay.position()}")
    for table in TABLES:
        if replay.digest(table) == live.digest(table):
            continue
        a, b = list(replay.dump_rows(table)), list(live.dump_rows(table))
        detail = f"{len(a)} rows replayed, {len(b)} live"
        for x, y in zip(a, b, strict=False):
            if x != y:
                detail = f"first difference: replay {x.decode()[:300]} / live {y.decode()[:300]}"
                break
        report.problems.append(f"view {table!r} differs from its replay ({detail})")


def _check_receipts(replay: ViewReader, report: AuditReport, signer: str | None) -> None:
    tally = ReceiptTally()
    for row in replay.iter_receipts():
        check_receipt(tally, row["job_id"], json.loads(row["core"]), row["hash"], row["signature"], row["signer"],
                      signer)
    _add_receipts(report, tally)


def _add_receipts(report: AuditReport, tally: ReceiptTally) -> None:
    report.receipts += tally.receipts
    report.charged_total += tally.charged_total
    report.reward_total += tally.reward_total
    report.problems.extend(tally.problems)


def _check_money(replay: ViewReader, snapshot: LedgerSnapshot, report: AuditReport,
                 account_views: dict[str, dict[str, int]]) -> None:
    spent_by_account: dict[str, int] = defaultdict(int)
    reward_by_worker: dict[str, int] = defaultdict(int)
    for r in replay.db.execute("SELECT account_id, worker, charged, reward FROM receipts"):
        spent_by_account[r["account_id"]] += int(r["charged"])
        if r["worker"]:
            reward_by_worker[r["worker"]] += int(r["reward"])
    credits: dict[tuple[str, str], int] = defaultdict(int)
    for r in replay.db.execute("SELECT account_id, source, amount FROM credits"):
        credits[(r["account_id"], r["source"])] += int(r["amount"])
    for acc in replay.accounts():
        aid = acc["account_id"]
        if (credits[(aid, "grant")] != int(acc["granted"]) or credits[(aid, "deposit")] != int(acc["deposited"])
                or credits[(aid, "refund")] != int(acc["refunded"])):
            report.problems.append(f"account {acc['name']}: credits do not add up to its balance")
        for col in ("available", "reserved", "spent"):
            if int(acc[col]) < 0:
                report.problems.append(f"account {acc['name']}: {col} is negative ({acc[col]})")
        if int(acc["spent"]) != spent_by_account.get(aid, 0):
            report.problems.append(
                f"account {acc['name']}: spent {acc['spent']} != sum of its receipts {spent_by_account.get(aid, 0)}")
        aggregate = account_views.get(aid)
        if aggregate is None:
            aggregate = snapshot.get(UUID(aid)).snapshot_view()
        view = {k: int(acc[k]) for k in ("granted", "deposited", "refunded", "withdrawn", "spent", "reserved",
                                         "available")}
        if aggregate != view:
            report.problems.append(f"account {acc['name']}: aggregate {aggregate} != view {view}")
    for row in replay.rewards():
        if int(row["accrued"]) != reward_by_worker.get(row["worker"], 0):
            report.problems.append(f"worker {row['worker']}: accrued reward != sum of its receipts' rewards")


def _key_streams(store: LedgerStore) -> list[UUID]:
    """Every API key's stream, from the log itself (in an export, key hashes are redacted)."""
    out, start = [], 0
    while True:
        page = store.recorder.select_notifications(start, 5000, topics=["basis:ApiKey.Issued.v1"],
                                                   inclusive_of_start=False)
        out.extend(n.originator_id for n in page)
        if len(page) < 5000:
            return out
        start = page[-1].id


def _check_key_caps(replay: ViewReader, snapshot: LedgerSnapshot, report: AuditReport) -> None:
    """Walk each key's own stream, as of the audited snapshot: caps are checked when each
    reservation was made."""
    store = snapshot.store

    def charged(job_id: str) -> int:  # read when needed: memory stays flat however many receipts
        row = replay.db.execute("SELECT charged FROM receipts WHERE job_id = ?", (job_id,)).fetchone()
        return int(row[0]) if row else 0

    for key_id in _key_streams(store):
        name = f"API key {key_id}"
        version = snapshot.version_of(key_id)
        if version is None:  # issued after the snapshot
            continue
        cap: int | None = None
        held: dict[str, int] = {}
        spent = 0
        for e in store.events.get(key_id, lte=version):
            kind = type(e).__name__
            if kind == "CapSet":
                cap = e.cap
            elif kind == "Reserved":
                held[e.job_id] = e.amount
                if cap is None or spent + sum(held.values()) > cap:
                    report.problems.append(f"{name}: job {e.job_id} reserved past its cap {cap}")
            elif kind == "ReservationSettled":
                held.pop(e.job_id, None)
                spent += e.charged
                if e.charged != (receipted := charged(e.job_id)):
                    report.problems.append(f"{name}: job {e.job_id} spent {e.charged}, its receipt charged {receipted}")
        try:
            record = store.repository.get(key_id, version=version, projector_func=fold_events)
        except Exception as exc:  # the aggregate's own rules refuse its history
            report.problems.append(f"{name}: its stream does not replay ({type(exc).__name__}: {exc})")
            continue
        if (record.spent, record.reserved) != (spent, sum(held.values())):
            report.problems.append(f"{name}: aggregate spend does not match its events")
