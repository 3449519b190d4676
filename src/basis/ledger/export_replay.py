"""An export replayed as it is read (``basis audit --events``): each page of lines, once stored in
the temporary store, is projected into fresh views straight from the parsed lines (not read back
from the store and decoded a second time), and its receipt events go to the receipt checks on a
second core. What results is what ``audit`` would build by replaying the store: the same events,
in the same order, decoded to the same values.

When the lines are not in position order (or one appears twice), the store's order is not the
file's: the views built here are dropped and ``audit`` replays the store as it always did.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from basis.ledger.projections import Projector
from basis.ledger.projections.projector import Note
from basis.ledger.receipt_audit import RECEIPT_TOPIC, ReceiptChecker
from basis.ledger.replay import PageRow
from basis.ledger.store import LedgerStore


def transcoded(value: Any, object_hook: Callable[[dict[str, Any]], Any]) -> Any:
    """``value`` (as plain JSON parsing gives it) as the store's transcoder decodes the same text:
    ``object_hook`` applied to every object, innermost first, as the JSON decoder applies it. Objects
    and arrays are rewritten in place."""
    if type(value) is dict:
        for k, v in value.items():
            if type(v) is dict or type(v) is list:
                value[k] = transcoded(v, object_hook)
        # eventsourcing's hook reads only {"_type_": …, "_data_": …}: every other object passes as it is
        return object_hook(value) if len(value) == 2 else value
    if type(value) is list:
        for i, v in enumerate(value):
            if type(v) is dict or type(v) is list:
                value[i] = transcoded(v, object_hook)
    return value


def defer_indexes(db: sqlite3.Connection) -> list[str]:
    """Make the fresh, empty views ``db`` a throwaway bulk target: no journal on disk, no sync, and
    none of the views' secondary indexes (returns their ``CREATE INDEX`` statements, to run once the
    projection is done). The projection itself looks rows up by primary key or UNIQUE columns only,
    which stay; the other indexes, kept row by row, were a third of a receipt's insert."""
    db.execute("PRAGMA journal_mode=MEMORY")  # rollback still works; a crash loses only a temporary file
    db.execute("PRAGMA synchronous=OFF")
    rows = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL").fetchall()
    for name, _ in rows:
        db.execute(f'DROP INDEX "{name}"')
    return [sql for _, sql in rows]


class ExportReplay:
    """``on_page`` for ``read_export``: projects into ``path`` and checks receipts as pages arrive."""

    def __init__(self, store: LedgerStore, path: Path, operator: str | None, *, parallel: bool = True,
                 on_progress: Callable[[int, int | None], None] | None = None) -> None:
        transcoder = store.mapper.transcoder
        self.path = path
        self.projector: Projector | None = Projector(store, path)
        self.deferred_indexes = defer_indexes(self.projector.db)
        self.object_hook = transcoder.decoder.object_hook
        self.receipts = ReceiptChecker(transcoder.decode, operator, parallel=parallel)
        self.error: Exception | None = None  # the projection failed here: report it as a failed replay
        self.events = 0
        self.on_progress = on_progress

    def on_page(self, rows: list[PageRow]) -> None:
        self.receipts.add([(stream, stored) for _, stream, topic, _, stored in rows if topic == RECEIPT_TOPIC])
        if self.projector is None or self.error is not None:
            return
        hook = self.object_hook
        notes = [Note(position, stream, topic, b"") for position, stream, topic, _, _ in rows]
        states = [transcoded(state, hook) for _, _, _, state, _ in rows]
        try:
            self.projector.apply(notes, states)
        except Exception as exc:  # a broken export can break the replay itself
            self.error = exc
        self.events += len(rows)
        if self.on_progress:
            self.on_progress(self.events, None)

    def finish(self, irregular: bool) -> bool:
        """Close the views; True when they are the store's replay (else they are deleted)."""
        if self.projector is not None:
            for sql in self.deferred_indexes:  # the audit's checks read through them; built once, sorted
                self.projector.db.execute(sql)
            self.projector.stop()
            self.projector = None
        if irregular:
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            self.error = None
            return False
        return True

    def close(self) -> None:
        if self.projector is not None:
            self.projector.stop()
            self.projector = None
        self.receipts.close()
