"""The temporary store an export is imported into (``read_export``): its file, created with its own
page size; its events table's (stream, version) index, built once after the import instead of row
by row; and the check that each stream's versions run 1, 2, 3 … in log order, one pass over that
index."""

from __future__ import annotations

import heapq
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from basis.ledger.replay import ExportReading

# The page size of the files of an audit of an export: its temporary store, whose events are
# written once, in rowid order, and read back by ranges, and the views projected from them. At 16
# KiB instead of SQLite's 4 KiB, per 1,000,020 events: the import 10.3-11.3 CPU-s instead of
# 11.6-11.7 (fewer pages to write to the WAL and copy back, its index built faster); the projection
# 14.5-15.6 instead of 15.3-17.1 (four runs each, alternating).
TEMPORARY_PAGE_SIZE = 16384


def prepare_temporary_store(path: Path) -> None:
    """Create the empty SQLite file of a temporary store (``read_export``'s) or of its views at
    ``path`` with ``TEMPORARY_PAGE_SIZE``; the tables are then created in it as in any other. A
    page size is fixed once the file holds a table: here it is set before (a file already there is
    left as it is)."""
    if Path(path).exists():
        return
    db = sqlite3.connect(path)
    try:
        db.execute(f"PRAGMA page_size={TEMPORARY_PAGE_SIZE}")
        db.execute("VACUUM")  # writes the empty file's header, with the page size
    finally:
        db.close()


_STREAM_KEY = ", PRIMARY KEY (originator_id, originator_version))"


def defer_stream_index(db: sqlite3.Connection, table: str) -> bool:
    """Recreate the empty events table without its primary key on (stream, version): its index is
    built once, sorted, after the import (``index_streams``); kept row by row, a random stream id's
    B-tree was a third of the import. False (nothing changed) when the table is not eventsourcing's
    as known here, or not empty."""
    row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    if row is None or not row[0].endswith(_STREAM_KEY) or db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():
        return False
    db.execute("BEGIN")
    db.execute(f"DROP TABLE {table}")
    db.execute(row[0][: -len(_STREAM_KEY)] + ")")
    db.execute("COMMIT")
    return True


def index_streams(db: sqlite3.Connection, table: str, reading: ExportReading) -> None:
    """The unique index on (stream, version) the table was created without. A line repeating a
    stream's version at another position is named and removed (the one at the lowest position
    stays), as the primary key would have refused it."""
    index = f"CREATE UNIQUE INDEX {table}_stream_version ON {table} (originator_id, originator_version)"
    try:
        db.execute(index)
        return
    except sqlite3.IntegrityError:
        pass
    reading.irregular = True
    db.execute("BEGIN")
    db.execute(f"CREATE INDEX {table}_stream_version_any ON {table} (originator_id, originator_version)")
    later = (f"EXISTS (SELECT 1 FROM {table} p WHERE p.originator_id = e.originator_id"
             " AND p.originator_version = e.originator_version AND p.rowid < e.rowid)")
    for position, stream, version in db.execute(
            f"SELECT rowid, originator_id, originator_version FROM {table} e WHERE {later} ORDER BY rowid"):
        reading.removed += 1
        reading.problem(position, f"stream {stream} version {version} or this position appears twice")
    db.execute(f"DELETE FROM {table} AS e WHERE {later}")
    db.execute(f"DROP INDEX {table}_stream_version_any")
    db.execute(index)
    db.execute("COMMIT")


STREAM_PROBLEMS = 20  # the stream-version problems named (the first by position)


def check_streams(db: sqlite3.Connection, table: str, reading: ExportReading) -> None:
    """Each stream's versions run 1, 2, 3 … in log order (no version missing, none out of order): an
    event of version v > 1 needs version v - 1 of its stream at an earlier position. (stream, version)
    is unique here (``index_streams``, or the table's key), so in each stream's events by version
    the one before is v - 1 when that exists: one pass over that index, in its order, compared here
    row by row with the row before (0.55 CPU-s at 1,000,020 events; the same comparison by ``lag()``
    windows in SQL took 1.2, a lookup per event 1.41-1.47). The first ``STREAM_PROBLEMS`` by
    position are named, in position order."""
    first: list[tuple[int, str, int]] = []  # (-position, stream, version): a heap of the lowest positions
    before_stream: str | None = None
    before_version = before_position = 0
    for stream, version, position in db.execute(
            f"SELECT originator_id, originator_version, rowid FROM {table} ORDER BY originator_id, originator_version"):
        if version > 1 and not (stream == before_stream and before_version == version - 1
                                and before_position < position):
            if len(first) < STREAM_PROBLEMS:
                heapq.heappush(first, (-position, stream, version))
            elif -first[0][0] > position:
                heapq.heapreplace(first, (-position, stream, version))
        before_stream, before_version, before_position = stream, version, position
    for minus_position, stream, version in sorted(first, reverse=True):
        reading.problem(-minus_position, f"stream {stream} has version {version} without version {version - 1} "
                                         "before it")
