"""eventsourcing's SQLite factory, tuned for the ledger's group commits.

``PRAGMA synchronous``: WAL with ``NORMAL`` (the default here) makes a commit durable against a
crash of the process (SIGKILL included) without an fsync per commit: only an OS crash or power
loss can drop the last commits. ``BASIS_SQLITE_SYNCHRONOUS=FULL`` fsyncs every commit (about
4 ms on these disks); group commit amortises that under load.

Inserts: one ``executemany`` per batch instead of one ``execute`` per event, and writers queue
on a file lock (FIFO, woken the moment the holder commits) instead of SQLite's busy handler,
which sleeps 1, 2, 5 … 100 ms between retries and so idles a second writer process.
"""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore, SQLiteFactory

LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")


class LedgerSQLiteRecorder(SQLiteApplicationRecorder):
    def __init__(self, datastore: SQLiteDatastore, events_table_name: str = "stored_events") -> None:
        super().__init__(datastore, events_table_name)
        pool = datastore.pool
        self._thread_lock = threading.Lock()
        self.last_inserted: tuple[int, int] | None = None  # notification ids of the last batch
        self._lock_fd: int | None = None
        if not pool.is_sqlite_memory_mode:
            self._lock_fd = os.open(pool.db_name + ".write-lock", os.O_RDWR | os.O_CREAT, 0o600)
            weakref.finalize(self, os.close, self._lock_fd)

    @contextmanager
    def _write_turn(self) -> Iterator[None]:
        with self._thread_lock:
            if self._lock_fd is None:
                yield
                return
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # blocks without the GIL
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        """Insert a batch in one transaction. Returns no notification ids: nothing here reads
        them (projections poll the notification log)."""
        params = [(s.originator_id.hex if isinstance(s.originator_id, UUID) else s.originator_id,
                   s.originator_version, s.topic, s.state) for s in stored_events]
        with self._write_turn(), self.datastore.transaction(commit=True) as c:
            c.executemany(self.insert_events_statement, params)
            c.execute(self.select_max_notification_id_statement)  # ours are the last: we hold the lock
            last = c.fetchone()[0]
        self.last_inserted = (last - len(params) + 1, last)  # one writer thread per recorder

    def changes_since(self, after: int, limit: int) -> list[tuple[int, UUID, int]]:
        """(notification id, aggregate id, version) after ``after``: no event state read."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT rowid, originator_id, originator_version FROM {self.events_table_name} "
                      "WHERE rowid > ? ORDER BY rowid LIMIT ?", (after, limit))
            return [(r[0], UUID(r[1]), r[2]) for r in c.fetchall()]


class TunedSQLiteFactory(SQLiteFactory):
    application_recorder_class = LedgerSQLiteRecorder

    def __init__(self, env) -> None:
        super().__init__(env)
        level = (env.get("SQLITE_SYNCHRONOUS") or "NORMAL").upper()
        if level not in LEVELS:
            raise ValueError(f"BASIS_SQLITE_SYNCHRONOUS must be one of {LEVELS}")
        pool = self.datastore.pool
        create = pool._create_connection

        def create_tuned():
            conn = create()
            conn._sqlite_conn.execute(f"PRAGMA synchronous={level}")
            return conn

        pool._create_connection = create_tuned  # type: ignore[method-assign]
