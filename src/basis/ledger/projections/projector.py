"""Tracking projector: polls the notification log (SQLite has no subscriptions) and applies
each event to the views and the tracking position in ONE transaction, so every event counts
exactly once and a crash resumes where the last commit left off.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable
from importlib import resources
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.persistence import Notification
from eventsourcing.sqlite import SQLiteApplicationRecorder

from basis.domain.receipt import canonical_json
from basis.ledger.projections import chain_views, checks
from basis.ledger.store import LedgerStore
from basis.units import Seconds

VIEW = "basis"
PAGE = 5000
AMOUNT_COLUMNS = {
    "accounts": ("granted", "deposited", "withdrawn", "reserved", "spent_granted", "spent_deposited", "refunded"),
    "rewards": ("accrued", "settled", "claimed", "forfeited"),
    "usage_daily": ("charged",),
}


def _views_version() -> str:
    """Changes whenever the schema or the projection code changes: stale views are rebuilt."""
    pkg = resources.files("basis.ledger.projections")
    digest = hashlib.sha256(pkg.joinpath("schema.sql").read_bytes())
    digest.update(Path(__file__).read_bytes())
    for module in ("checks.py", "chain_views.py"):
        digest.update(pkg.joinpath(module).read_bytes())
    return digest.hexdigest()[:16]


VIEWS_VERSION = _views_version()


def connect(path: str | Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS views_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = db.execute("SELECT value FROM views_meta WHERE key = 'version'").fetchone()
        if row is None or row[0] != VIEWS_VERSION:
            # Views are disposable: another projection version rebuilds them from the event log.
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for t in tables:
                if t != "views_meta":
                    db.execute(f"DROP TABLE {t}")
            db.execute("INSERT OR REPLACE INTO views_meta VALUES ('version', ?)", (VIEWS_VERSION,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.executescript(resources.files("basis.ledger.projections").joinpath("schema.sql").read_text())
    return db


_PK = {"accounts": "account_id", "rewards": "worker", "jobs": "job_id", "usage_daily": "usage_key"}
_JOB_COLUMNS = ("job_id", "account_id", "node", "model", "status", "served_by", "worker", "attempts", "prompt_tokens",
                "output_tokens", "reserved", "outcome", "finish_reason", "reason", "worker_usage", "accepted_at",
                "ended_at")


def _not_serializable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# json.dumps(value, sort_keys=True), minus the encoder JSONEncoder.encode builds on every call (three
# quarters of its time on a job's small usage object); the same text. No circular-reference
# markers: what is encoded came from decoding JSON, a tree.
_sorted_encode = c_make_encoder(None, _not_serializable, encode_basestring_ascii, None, ": ", ", ", True, False, True)


def _sorted_json(value: Any) -> str:
    return "".join(_sorted_encode(value, 0))


class Note(msgspec.Struct, gc=False):
    """One event of the log as the views need it (the id as canonical UUID text). A msgspec struct:
    built in C, a fifth of the time of a class with ``__slots__`` and an ``__init__`` (0.06 against
    0.25 CPU-s per 1,000,000; a replay builds one per event); it holds no other object, so it
    needs no tracking by the cyclic collector (``gc=False``)."""

    id: int
    originator_id: str
    topic: str
    state: bytes


def _uuid_text(raw: str) -> str:
    """eventsourcing stores UUID ids as 32 hex digits; the views use the hyphenated form."""
    if len(raw) == 32:
        return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
    return str(UUID(raw))


_RECEIPT_INSERT = "INSERT INTO receipts VALUES (?, ?, ?, ?, ?, ?, 'issued', NULL, ?, ?, ?, ?, ?, ?, ?, ?, NULL)"
_UPSERTS: dict[tuple[str, tuple[str, ...]], str] = {}  # a batch's INSERT OR REPLACE, by table and columns


class _Batch:
    """Rows that several events change (accounts, rewards, jobs) are read once per page and
    written back once, instead of one statement per event; a receipt's row, written once, waits
    with them (``insert``)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.inserts: list[tuple[str, tuple[Any, ...]]] = []  # (statement, parameters), in event order

    def insert(self, statement: str, params: tuple[Any, ...]) -> None:
        """Run ``statement`` at ``flush`` (or ``write_inserts``), in order with the others: run
        together, each run of one statement is one ``executemany`` (a statement at a time cost
        about a sixth more). What reads their table first calls ``write_inserts``."""
        self.inserts.append((statement, params))

    def write_inserts(self) -> None:
        inserts = self.inserts
        if inserts:
            _run_in_order(self.db, inserts)
            inserts.clear()

    def row(self, table: str, key: str) -> dict[str, Any] | None:
        k = (table, key)
        if k not in self.rows:
            cur = self.db.execute(f"SELECT * FROM {table} WHERE {_PK[table]} = ?", (key,))
            found = cur.fetchone()
            if found is None:
                return None
            row = dict(zip([c[0] for c in cur.description], found, strict=True))
            for col in AMOUNT_COLUMNS.get(table, ()):
                row[col] = int(row[col])
            self.rows[k] = row
        return self.rows[k]

    def put(self, table: str, key: str, row: dict[str, Any]) -> None:
        self.rows[(table, key)] = row

    def flush(self) -> None:
        """The inserts waiting, then each row written back; its statement built once per table and
        set of columns (building it, and a copy of the row with amounts as text, per row: 0.11
        CPU-s per 120,008 events). Each run of rows of one statement is one ``executemany``, in
        the same order (a job's rows follow one another: 166,680 statements per 1,000,020 events)."""
        self.write_inserts()
        writes: list[tuple[str, tuple[Any, ...]]] = []
        for (table, _key), row in self.rows.items():
            columns = tuple(row)
            statement = _UPSERTS.get((table, columns))
            if statement is None:
                marks = ", ".join("?" * len(columns))
                statement = f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) VALUES ({marks})"
                if len(_UPSERTS) < 64:
                    _UPSERTS[(table, columns)] = statement
            amounts = AMOUNT_COLUMNS.get(table)
            if amounts:  # amounts are stored as decimal text
                row = row.copy()
                for col in amounts:
                    if col in row:
                        row[col] = str(row[col])
            writes.append((statement, tuple(row.values())))
        _run_in_order(self.db, writes)
        self.rows.clear()


def _run_in_order(db: sqlite3.Connection, writes: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Each (statement, parameters) in order: each run of one statement by one ``executemany``."""
    start = 0
    for i in range(1, len(writes) + 1):
        if i == len(writes) or writes[i][0] != writes[start][0]:
            statement = writes[start][0]
            if i - start == 1:
                db.execute(statement, writes[start][1])
            else:
                db.executemany(statement, [params for _, params in writes[start:i]])
            start = i


def _plain(value: Any) -> Any:
    """A field as the view stores it; in a replay of a public export (basis audit --events) a
    secret arrives as ``{"redacted_sha256": hex}`` (docs/audit.md) and is stored as that digest."""
    if isinstance(value, dict) and "redacted_sha256" in value:
        return "redacted:" + str(value["redacted_sha256"])
    return value


class Projector:
    def __init__(self, store: LedgerStore, path: str | Path) -> None:
        self.store = store
        self.path = str(path)
        self.db = connect(self.path)
        self._decode = store.mapper.transcoder.decode
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.handlers: dict[str, Callable[[_Batch, Notification, dict[str, Any]], None]] = {
            "basis:Account.Opened.v1": self._account_opened,
            "basis:Account.ApiKeyAdded.v1": self._api_key_added,
            "basis:Account.Credited.v1": self._credited,
            "basis:Account.Reserved.v1": self._reserved,
            "basis:Account.ReservationSettled.v1": self._reservation_settled,
            "basis:Job.Accepted.v1": self._job_accepted,
            "basis:Job.Assigned.v1": self._job_assigned,
            "basis:Job.Ended.v1": self._job_ended,
            "basis:Job.ReceiptIssued.v1": self._receipt_issued,
            "basis:Job.Settled.v1": self._job_settled,
            "basis:Worker.Registered.v1": self._worker_registered,
            "basis:Worker.Advertised.v1": self._worker_advertised,
            **{topic: (lambda b, n, d, f=f: f(self, b, n, d))
               for topic, f in (*checks.HANDLERS.items(), *chain_views.HANDLERS.items())},
        }

    # -- driving ----------------------------------------------------------------------------
    @property
    def position(self) -> int:
        row = self.db.execute("SELECT position FROM tracking WHERE view = ?", (VIEW,)).fetchone()
        return row[0] if row else 0

    def run_once(self, limit: int = PAGE, stop: int | None = None) -> int:
        """Apply the next page of events (none past position ``stop``); returns how many were applied."""
        self.db.execute("BEGIN IMMEDIATE")  # re-read the position under the write lock
        try:
            start = self.position
            notes = self._select(start, limit)
            if stop is not None:
                notes = [n for n in notes if n.id <= stop]
            if not notes:
                self.db.execute("ROLLBACK")
                return 0
            self._apply(notes, [self._decode(n.state) for n in notes])
            self.db.execute("COMMIT")
            return len(notes)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def apply(self, notes: list[Any], states: list[dict[str, Any]]) -> None:
        """Apply events already read and decoded (``states[i]`` is ``notes[i]``'s state, as the
        store's transcoder decodes it), in one transaction: how an export's lines are projected as
        they are read, without storing them and reading them back first."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self._apply(notes, states)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _apply(self, notes: list[Any], states: list[dict[str, Any]]) -> None:
        batch = _Batch(self.db)
        self.handle(batch, notes, states)
        self.close_batch(batch, notes[-1].id)

    def handle(self, batch: _Batch, notes: list[Any], states: list[dict[str, Any]]) -> None:
        """Apply events to ``batch`` (in the transaction the caller opened): rows several events
        change stay in it until ``close_batch``."""
        handlers = self.handlers
        for n, d in zip(notes, states, strict=True):
            handler = handlers.get(n.topic)
            if handler is not None:
                handler(batch, n, d)

    def close_batch(self, batch: _Batch, position: int) -> None:
        """Write ``batch``'s rows and the tracked ``position`` (the caller commits)."""
        batch.flush()
        self.db.execute("INSERT OR REPLACE INTO tracking (view, position) VALUES (?, ?)", (VIEW, position))

    def _select(self, start: int, limit: int) -> list[Any]:
        """The next page of the log. On SQLite, read it directly: eventsourcing's reader turns every
        id into a UUID object that the views only turn back into text (a fifth of a replay)."""
        rec = self.store.recorder
        if not isinstance(rec, SQLiteApplicationRecorder):
            return list(rec.select_notifications(start, limit, inclusive_of_start=False))
        with rec.datastore.transaction(commit=False) as cur:
            cur.execute(f"SELECT rowid, originator_id, topic, state FROM {rec.events_table_name} "
                        "WHERE rowid > ? ORDER BY rowid LIMIT ?", (start, limit))
            return [Note(r[0], _uuid_text(r[1]), r[2], r[3]) for r in cur.fetchall()]

    def catch_up(self, on_progress: Callable[[int], None] | None = None) -> int:
        total = 0
        while n := self.run_once():
            total += n
            if on_progress:
                on_progress(n)
        return total

    def start(self, wake: threading.Event, interval: Seconds = 0.5, gather: Seconds = 0.1) -> None:
        """Poll every ``interval`` s, or soon after ``wake`` is set: waiting ``gather`` s first
        lets one page take many commits instead of competing with the writer for every one."""

        def loop() -> None:
            while not self._stop.is_set():
                if wake.wait(interval):
                    self._stop.wait(gather)
                wake.clear()
                try:
                    self.catch_up()
                except Exception:  # keep serving; the next poll retries from the tracked position
                    import logging

                    logging.getLogger(__name__).exception("projection failed; will retry")
                    self._stop.wait(1.0)

        self._thread = threading.Thread(target=loop, name="basis-projector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        self.db.close()

    # -- handlers -----------------------------------------------------------------------------
    @staticmethod
    def _ts(d: dict[str, Any]) -> str:
        return d["timestamp"].isoformat()

    def _account_opened(self, b: _Batch, n: Notification, d: dict[str, Any]) -> None:
        b.put("accounts", str(n.originator_id), {
            "account_id": str(n.originator_id), "name": d["name"], "opened_at": self._ts(d),
            "granted": 0, "deposited": 0, "withdrawn": 0, "reserved": 0, "spent_granted": 0,
            "spent_deposited": 0, "refunded": 0, "api_keys": 0, "jobs": 0, "receipts": 0, "updated_at": self._ts(d),
        })

    def _account(self, b: _Batch, n: Notification, d: dict[str, Any]) -> dict[str, Any]:
        row = b.row("accounts", str(n.originator_id))
        assert row is not None, f"event for unknown account {n.originator_id}"
        row["updated_at"] = self._ts(d)
        return row

    def _api_key_added(self, b: _Batch, n: Notification, d: dict[str, Any]) -> None:
        self._account(b, n, d)["api_keys"] += 1
        self.db.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?)",
                        (_plain(d["key_hash"]), str(n.originator_id), _plain(d["prefix"]), self._ts(d)))

    def _credited(self, b: _Batch, n: Notification, d: dict[str, Any]) -> None:
        row = self._account(b, n, d)
        row[{"grant": "granted", "deposit": "deposited"}.get(d["source"], "refunded")] += d["amount"]
        self.db.execute("INSERT INTO credits VALUES (?, ?, ?, ?, ?, ?)",
                        (d["source"], d["external_id"], str(n.originator_id), str(d["amount"]),
                         d.get("memo", ""), self._ts(d)))

    def _reserved(self, b: _Batch, n: Notification, d: dict[str, Any]) -> None:
        row = self._account(b, n, d)
        row["reserved"] += d["amount"]
        row["jobs"] += 1

    def _reservation_settled(self, b: _Batch, n: Notification, d: dict[str, Any]) -> None:
        row = self._account(b, n, d)
        row["reserved"] -= d["released"]
        row["spent_granted"] += d["from_grant"]
        row["spent_deposited"] += d["from_deposit"]

    def _job(self, b: _Batch, n: Notification) -> dict[str, Any]:
        row = b.row("jobs", str(n.originator_id))
        assert row is not None, f"event for unknown job {n.originator_id}"
        return row

    def _job_accepted(self, b: _Batch, n: Notification, d: dict[str, Any]) -> None:
        job_id = str(n.originator_id)
        b.put("jobs", job_id, dict(zip(_JOB_COLUMNS, (
            job_id, str(d["account_id"]), d.get("node", ""), d["model"], "accepted", None, None, 0,
            d["prompt_tokens"], 0, str(d["reserved"]), None, None, None, None, self._ts(d), None), strict=True)))

    def _job_assigned(self, b: _Batch, n: Notification, d: dict[str, Any]) -> None:
        row = self._job(b, n)
        row.update(status="assigned", served_by=d["served_by"], worker=d["worker"].lower() if d["worker"] else None)
        row["attempts"] += 1

    def _job_ended(self, b: _Batch, n: Notification, d: dict[str, Any]) -> None:
        usage = _sorted_json(d["worker_usage"]) if d.get("worker_usage") is not None else None
        self._job(b, n).update(status=d["outcome"], outcome=d["outcome"], output_tokens=d["output_tokens"],
                               finish_reason=d.get("finish_reason"), reason=d.get("reason"), worker_usage=usage,
                               ended_at=self._ts(d))

    def _receipt_issued(self, b: _Batch, n: Notification, d: dict[str, Any]) -> None:
        core = d["core"]
        job_id = str(n.originator_id)
        job = self._job(b, n)
        account_id = job["account_id"]
        issued_at = self._ts(d)
        b.insert(
            _RECEIPT_INSERT,
            (job_id, n.id, d["hash"], canonical_json(core).decode(), d["signature"], d["signer"], account_id,
             core["model"], core["served_by"], core["worker"], core["outcome"], core["charged"], core["reward"],
             issued_at))
        job["status"] = "receipted"
        acc = b.row("accounts", account_id)
        assert acc is not None
        acc["receipts"] += 1
        self._usage(b, account_id, issued_at[:10], core)
        if core["worker"]:
            row = checks.reward_row(b, core["worker"])
            row["accrued"] += int(core["reward"])
            row["jobs"] += 1
            row["output_tokens"] += core["output_tokens"]

    @staticmethod
    def _usage(b: _Batch, account_id: str, day: str, core: dict[str, Any]) -> None:
        """Receipted usage per account, UTC day (of the receipt) and model."""
        key = f"{account_id}|{day}|{core['model']}"
        row = b.row("usage_daily", key)
        if row is None:
            row = {"usage_key": key, "account_id": account_id, "day": day, "model": core["model"], "receipts": 0,
                   "prompt_tokens": 0, "output_tokens": 0, "charged": 0}
            b.put("usage_daily", key, row)
        row["receipts"] += 1
        row["prompt_tokens"] += core["prompt_tokens"]
        row["output_tokens"] += core["output_tokens"]
        row["charged"] += int(core["charged"])

    def _job_settled(self, b: _Batch, n: Notification, d: dict[str, Any]) -> None:
        settlement = {k: d[k] for k in ("batch_id", "leaf_index", "tx_hash", "chain_id")}
        job_id = str(n.originator_id)
        b.write_inserts()  # the receipts' rows waiting in the batch: this reads that table
        self.db.execute("UPDATE receipts SET status = 'settled', settlement = ?, settled_at = ? WHERE job_id = ?",
                        (_sorted_json(settlement), self._ts(d), job_id))
        self._job(b, n)["status"] = "settled"
        found = self.db.execute("SELECT worker, reward FROM receipts WHERE job_id = ?", (job_id,)).fetchone()
        if found and found[0]:
            row = b.row("rewards", found[0])
            assert row is not None
            forfeited = self.db.execute("SELECT 1 FROM forfeits WHERE job_id = ?", (job_id,)).fetchone()
            row["settled"] += 0 if forfeited else int(found[1])  # a forfeited reward went to the treasury

    def _worker_registered(self, b: _Batch, n: Notification, d: dict[str, Any]) -> None:
        self.db.execute("INSERT INTO workers VALUES (?, ?, '[]', '', ?, ?)",
                        (d["address"].lower(), str(n.originator_id), self._ts(d), self._ts(d)))

    def _worker_advertised(self, b: _Batch, n: Notification, d: dict[str, Any]) -> None:
        self.db.execute("UPDATE workers SET models = ?, software = ?, updated_at = ? WHERE worker_id = ?",
                        (json.dumps(sorted(d["models"])), d.get("software", ""), self._ts(d), str(n.originator_id)))
