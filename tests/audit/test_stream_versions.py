"""The stream-version check of an export's import (``check_streams``): one pass over the (stream,
version) index, compared row by row in Python, held equal to the check's definition in SQL (each
event of version v > 1 needs version v - 1 of its stream at an earlier position; the first 20 by
position named), over random tables with versions dropped, repeated at other streams, and out of
log order."""

from __future__ import annotations

import random
import sqlite3

from basis.ledger.replay import ExportReading
from basis.ledger.temporary_store import STREAM_PROBLEMS, check_streams

# the check as one SQL statement (how it was written before: lag() windows over the same index)
DEFINITION = (
    "SELECT position, stream, version FROM (SELECT rowid AS position, originator_id AS stream,"
    " originator_version AS version, lag(originator_version) OVER by_version AS version_before,"
    " lag(rowid) OVER by_version AS position_before FROM events"
    " WINDOW by_version AS (PARTITION BY originator_id ORDER BY originator_version))"
    " WHERE version > 1 AND NOT (version_before IS NOT NULL AND version_before = version - 1"
    " AND position_before < position) ORDER BY position LIMIT 20")


def _table(rng: random.Random, keyed: bool) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    if keyed:  # eventsourcing's table, its key on (stream, version)
        db.execute("CREATE TABLE events (originator_id TEXT, originator_version INTEGER, topic TEXT, state BLOB,"
                   " PRIMARY KEY (originator_id, originator_version))")
    else:  # as the import leaves it: the unique index built after
        db.execute("CREATE TABLE events (originator_id TEXT, originator_version INTEGER, topic TEXT, state BLOB)")
        db.execute("CREATE UNIQUE INDEX events_stream_version ON events (originator_id, originator_version)")
    rows = []
    for _ in range(rng.randint(1, 40)):
        stream = f"{rng.getrandbits(128):032x}"
        versions = list(range(1, rng.randint(1, 8) + 1))
        if rng.random() < 0.4 and len(versions) > 1:
            versions.remove(rng.choice(versions))  # a version dropped
        if rng.random() < 0.2:
            shift = rng.randint(1, 3)
            versions = [v + shift for v in versions]  # no version 1 at all
        rows.extend((stream, v) for v in versions)
    rng.shuffle(rows)  # positions in any order: some versions come after the next
    if rng.random() < 0.7:  # mostly in order, as an export mostly is
        rows.sort(key=lambda r: (rng.random() < 0.9, r[1]))
    for position, (stream, version) in enumerate(rows, 1):
        db.execute("INSERT INTO events (rowid, originator_id, originator_version, topic, state) "
                   "VALUES (?, ?, ?, '', x'')", (position, stream, version))
    return db


def test_the_stream_version_scan_names_what_its_sql_definition_names():
    rng = random.Random(16)
    named_any = more_than_shown = 0
    for case in range(300):
        db = _table(rng, keyed=case % 2 == 0)
        expected = [(p, f"position {p}: stream {s} has version {v} without version {v - 1} before it")
                    for p, s, v in db.execute(DEFINITION)]
        reading = ExportReading()
        check_streams(db, "events", reading)
        assert reading.problems == expected, case
        assert reading.first_bad_position == (expected[0][0] if expected else None)
        named_any += bool(expected)
        more_than_shown += len(expected) == STREAM_PROBLEMS
    assert named_any > 100 and more_than_shown > 5  # the cases reached both the problems and the bound
