"""An export replayed as it is read (``basis audit --events``): each page of lines, once stored in
the temporary store, is projected into fresh views, and its receipt events go to the receipt
checks. Where the platform forks, both run on processes of their own while the first one reads,
verifies and imports the next pages: the projection reads each page back from the temporary store
(decoding a stored state with msgspec costs about 2 µs) by its range of positions. Inline, a page is
projected straight from the parsed lines. Either way, what results is what ``audit`` would build by
replaying the store: the same events, in the same order, decoded to the same values.

When the lines are not in position order (or one appears twice), the store's order is not the
file's: the views built here are dropped and ``audit`` replays the store as it always did.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from basis.ledger.account_fold import ACCOUNT_TOPICS, AccountFold
from basis.ledger.export import decode_line
from basis.ledger.projections import Projector
from basis.ledger.projections.projector import Note, _Batch, _uuid_text
from basis.ledger.receipt_audit import RECEIPT_TOPIC, ReceiptChecker
from basis.ledger.replay import PageRow
from basis.ledger.store import LedgerStore
from basis.ledger.temporary_store import prepare_temporary_store


def transcoded(value: Any, object_hook: Callable[[dict[str, Any]], Any]) -> Any:
    """``value`` (as plain JSON parsing gives it) as the store's transcoder decodes the same text:
    ``object_hook`` applied to every object, innermost first, as the JSON decoder applies it. Objects
    and arrays are rewritten in place."""
    if type(value) is dict:
        for k, v in value.items():
            if type(v) is dict:
                # a typed value ({"_type_": "…", "_data_": "…"}) holds nothing to decode first:
                # the hook straight away, without a call per value (a tenth of the walk)
                value[k] = object_hook(v) if len(v) == 2 and type(v.get("_data_")) is str \
                    and type(v.get("_type_")) is str else transcoded(v, object_hook)
            elif type(v) is list:
                value[k] = transcoded(v, object_hook)
        # eventsourcing's hook reads only {"_type_": …, "_data_": …}: every other object passes as it is
        return object_hook(value) if len(value) == 2 else value
    if type(value) is list:
        for i, v in enumerate(value):
            if type(v) is dict or type(v) is list:
                value[i] = transcoded(v, object_hook)
    return value


class StoredStateDecoder:
    """A stored state decoded as the store's transcoder decodes it (the same values: a property test
    holds it), with msgspec's parser: a fifth of the time of the ``json`` module's. (For the receipt
    checks it made no difference above the noise: signature recovery is most of their time.)"""

    def __init__(self, object_hook: Callable[[dict[str, Any]], Any]) -> None:
        self.object_hook = object_hook

    def __call__(self, data: bytes) -> Any:
        return transcoded(decode_line(data)[0], self.object_hook)


def defer_indexes(db: sqlite3.Connection) -> list[str]:
    """Make the fresh, empty views ``db`` a throwaway bulk target: no journal on disk, no sync, and
    none of the views' own indexes (returns their ``CREATE INDEX`` statements, to run once the
    projection is done). The projection itself looks rows up by primary key or UNIQUE columns only,
    which stay; the other indexes, kept row by row, were a third of a receipt's insert. A unique one
    (a receipt's hash) checks what it always did when it is built: a duplicate fails the replay with
    the same ``IntegrityError`` (``UNIQUE constraint failed: receipts.hash``), at the end."""
    db.execute("PRAGMA journal_mode=MEMORY")  # rollback still works; a crash loses only a temporary file
    db.execute("PRAGMA synchronous=OFF")
    rows = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL").fetchall()
    for name, _ in rows:
        db.execute(f'DROP INDEX "{name}"')
    return [sql for _, sql in rows]


# events projected in one transaction of the views (several pages of the export): each job's
# row then spans fewer transactions, so fewer are read back and written again (the projection's
# CPU per 120,008 events: 1.70-1.90 s a page, 5,000, at a time; 1.45-1.60 s at 20,000; per
# 1,000,020: 19.5-20.0 s against 15.4-15.9 with the journal in a file, 14.6 in memory; 50,000: 17.4)
TRANSACTION_EVENTS = 20_000

# pages the projection's process may fall behind the reading: beyond that, the reader waits for it.
# The projection is the most work of the three processes (at 1,000,020 events about 18 CPU-s
# against 15 for the reading and 14 for the receipts); left to the scheduler's equal shares it fell
# about 25 pages (5 s) behind, and ran those, its indexes and then the checks alone while the other
# core idled. Bounded, the reader yields its core while the projection catches up, and what the
# projection has left at the end runs beside the reading's own last checks (the stream index and the
# stream versions: about 2 CPU-s, some 16 pages of the projection).
PROJECTION_BEHIND = 16


class _PageProjection:
    """The projection on its own process: pages of the temporary store, by range of positions,
    into the fresh views (the process was forked from the reader: ``store``'s transcoder is
    inherited, its connections are not used here)."""

    def __init__(self, store: LedgerStore, events_db: str, events_table: str, path: Path,
                 fold: AccountFold | None = None) -> None:
        self.projector = Projector(store, path)
        self.fold = fold  # handed each page's events and their decoded states, once projected
        self.deferred_indexes = defer_indexes(self.projector.db)
        # the rollback journal in a file (no sync): in memory it holds a copy of every page a
        # transaction of TRANSACTION_EVENTS changes: 95 MB for the process at 1,000,020 events
        # instead of 73 (79 at 5,000 a transaction). Not OFF: a failed page must still roll back
        self.projector.db.execute("PRAGMA journal_mode=TRUNCATE")
        self.decode = StoredStateDecoder(store.mapper.transcoder.decoder.object_hook)
        self.events = sqlite3.connect(events_db, isolation_level=None)
        self.select = (f"SELECT rowid, originator_id, topic, state, originator_version FROM {events_table} "
                       "WHERE rowid BETWEEN ? AND ? ORDER BY rowid")
        self.error: Exception | None = None
        self.batch: _Batch | None = None  # the open transaction's rows, over several pages
        self.in_batch = 0  # events applied to it
        self.position = 0  # the last of them

    def project(self, first: int, last: int) -> None:
        if self.error is not None:
            return
        try:
            rows = self.events.execute(self.select, (first, last)).fetchall()
            if rows:
                decode = self.decode
                if self.batch is None:
                    self.projector.db.execute("BEGIN IMMEDIATE")
                    self.batch = _Batch(self.projector.db)
                # each stream's id as text once a page (a job's events: 5 to a stream)
                ids = {raw: _uuid_text(raw) for raw in {r[1] for r in rows}}
                states = [decode(r[3]) for r in rows]
                self.projector.handle(self.batch, [Note(r[0], ids[r[1]], r[2], b"") for r in rows], states)
                if self.fold is not None:  # the same decoded states (the projection only reads them)
                    self.fold.page([(r[1], r[4], r[2], r[3], state) for r, state in zip(rows, states, strict=True)
                                    if r[2].startswith(ACCOUNT_TOPICS)])
                self.in_batch += len(rows)
                self.position = rows[-1][0]
                if self.in_batch >= TRANSACTION_EVENTS:
                    self._commit()
        except Exception as exc:  # a broken export can break the replay itself
            self.error = exc
            if self.fold is not None:  # the pages after are not folded: nothing it folded is used
                self.fold.failed = True
            if self.batch is not None:
                self.batch = None
                self.projector.db.execute("ROLLBACK")

    def _commit(self) -> None:
        assert self.batch is not None
        self.projector.close_batch(self.batch, self.position)
        self.projector.db.execute("COMMIT")
        self.batch, self.in_batch = None, 0

    def finish(self) -> Exception | None:
        try:
            if self.error is None:
                if self.batch is not None:
                    self._commit()
                for sql in self.deferred_indexes:
                    self.projector.db.execute(sql)
        except Exception as exc:
            self.error = exc
        finally:
            self.projector.stop()
            self.events.close()
        return self.error


_projection: _PageProjection | None = None


def _start_projection(store: LedgerStore, events_db: str, events_table: str, path: Path,
                      fold: AccountFold | None = None) -> None:
    global _projection
    _projection = _PageProjection(store, events_db, events_table, path, fold)


def _project_pages(first: int, last: int) -> None:
    assert _projection is not None
    _projection.project(first, last)


def _folded_accounts() -> dict[str, dict[str, int]] | None:
    """The fold's result, once the pages handed over before are projected (None without one)."""
    assert _projection is not None
    return _projection.fold.result() if _projection.fold is not None else None


def _finish_projection() -> tuple[Exception | None, float]:
    """(the projection's error, the CPU seconds its process used)."""
    assert _projection is not None
    return _projection.finish(), time.process_time()


class ExportReplay:
    """``on_page`` for ``read_export``: projects into ``path`` and checks receipts as pages arrive."""

    def __init__(self, store: LedgerStore, path: Path, operator: str | None, *, parallel: bool = True,
                 on_progress: Callable[[int, int | None], None] | None = None, accounts: int = 0) -> None:
        """``accounts``: how many account aggregates the receipts' process folds as the pages go by
        (``account_views``), at most."""
        transcoder = store.mapper.transcoder
        self.path = path
        prepare_temporary_store(path)  # the views' file, with the temporary store's page size
        self.projector: Projector | None = None
        self.deferred_indexes: list[str] = []
        self._pool: ProcessPoolExecutor | None = None
        self._pages: deque[Future[None]] = deque()  # handed to the projection's process, not yet projected
        self.projection_cpu_seconds: float | None = None  # of its own process, when it had one
        self._finishing: Future[tuple[Exception | None, float]] | None = None
        if parallel and "fork" in multiprocessing.get_all_start_methods():
            rec = store.recorder
            # the projection's process also folds the account aggregates, from the states it decodes
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("fork"), initializer=_start_projection,
                initargs=(store, rec.datastore.pool.db_name, rec.events_table_name, path,  # type: ignore[attr-defined]
                          AccountFold(store, accounts)))
        else:
            self.projector = Projector(store, path)
            self.deferred_indexes = defer_indexes(self.projector.db)
        self.object_hook = transcoder.decoder.object_hook
        self.receipts = ReceiptChecker(transcoder.decode, operator, parallel=parallel)
        self.error: Exception | None = None  # the projection failed here: report it as a failed replay
        self.events = 0
        self.on_progress = on_progress

    @property
    def needs_states(self) -> bool:
        """Whether ``on_page`` needs each row's parsed state (inline it projects them; its own
        process reads the page back from the store)."""
        return self._pool is None

    def on_page(self, rows: list[PageRow]) -> None:
        self.receipts.add([(stream, stored) for _, stream, topic, _, stored in rows if topic == RECEIPT_TOPIC])
        if self._pool is not None:
            # stored and committed: the projection reads the page back (lines in file order are in
            # position order, else the views are dropped anyway: see ``finish``)
            pages = self._pages
            with contextlib.suppress(BrokenProcessPool):  # its process died: ``finish`` reports it
                pages.append(self._pool.submit(_project_pages, rows[0][0], rows[-1][0]))
            while pages and pages[0].done():  # (a failure is kept on the process, and ``finish`` reports it)
                pages.popleft()
            if len(pages) > PROJECTION_BEHIND:
                wait([pages[0]])
            self._count(rows)
            return
        if self.projector is None or self.error is not None:
            return
        hook = self.object_hook
        notes = [Note(position, stream, topic, b"") for position, stream, topic, _, _ in rows]
        states = [transcoded(state, hook) for _, _, _, state, _ in rows]
        try:
            self.projector.apply(notes, states)
        except Exception as exc:  # a broken export can break the replay itself
            self.error = exc
        self._count(rows)

    def pages_done(self) -> None:
        """``on_pages_done`` for ``read_export``: no page follows, so the projection's process goes on
        to close the views (its last transaction and the deferred indexes: about 0.6 CPU-s at
        1,000,020 events) while the reading runs its own last checks, instead of after them, alone.
        Its error (or its process's death) is reported by ``finish``, as before."""
        if self._pool is not None and self._finishing is None:
            with contextlib.suppress(BrokenProcessPool):  # its process died: ``finish`` asks again, reports it
                self._finishing = self._pool.submit(_finish_projection)

    def _count(self, rows: list[PageRow]) -> None:
        self.events += len(rows)
        if self.on_progress:
            self.on_progress(self.events, None)

    def account_views(self) -> dict[str, dict[str, int]] | None:
        """The account aggregates folded as the pages went by (``AccountFold``), by id; None where
        nothing folded them, or the fold failed. Waits for the pages handed over to be projected."""
        if self._pool is None:
            return None
        try:
            return self._pool.submit(_folded_accounts).result()
        except Exception:  # the checks rebuild them from the store
            return None

    def finish(self, irregular: bool) -> bool:
        """Close the views; True when they are the store's replay (else they are deleted)."""
        if self._pool is not None:
            try:
                for page in self._pages:
                    page.result()
                self._pages.clear()
                finishing = self._finishing or self._pool.submit(_finish_projection)
                self.error, self.projection_cpu_seconds = finishing.result()
            except Exception as exc:  # the projection's process died
                self.error = exc
            self._pool.shutdown(wait=True)
            self._pool = None
        if self.projector is not None:
            try:
                if self.error is None:
                    for sql in self.deferred_indexes:  # the audit's checks read through them; built once, sorted
                        self.projector.db.execute(sql)
            except Exception as exc:  # a unique index the export breaks (two receipts of one hash)
                self.error = exc
            self.projector.stop()
            self.projector = None
        if irregular:
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            self.error = None
            return False
        return True

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self.projector is not None:
            self.projector.stop()
            self.projector = None
        self.receipts.close()
