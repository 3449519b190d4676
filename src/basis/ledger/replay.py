"""Reading a ledger export (docs/audit.md) into a fresh store: the hash chain is verified line by
line, every event is stored at its own position, and each line's head is kept beside it (so
anchors can be compared later) — all in constant memory.

Problems are named at their position (or at the file line, when a line does not even say its
position). A line whose head does not follow is still imported, so one altered line is named once
and the replay shows what it changed; a line that cannot be read is skipped.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

from eventsourcing.sqlite import SQLiteApplicationRecorder

from basis.ledger.export import (
    GENESIS_HEAD,
    GENESIS_HEX,
    HEX64,
    LINE_KEYS,
    UUID_TEXT,
    ExportError,
    body_bytes,
    canonical_bytes,
    decode_line,
    decode_line_fields,
    sorted_json,
)
from basis.ledger.store import AGGREGATES, LedgerStore
from basis.ledger.temporary_store import check_streams, defer_stream_index, index_streams

PAGE = 5000
MAX_PROBLEMS = 1000
_HEX64 = re.compile(HEX64)
_UUID = re.compile(UUID_TEXT)
_POSITION = re.compile(rb'"position"\s*:\s*(\d+)')
KNOWN_TOPICS = frozenset(
    v.TOPIC for agg in AGGREGATES for v in vars(agg).values() if isinstance(v, type) and getattr(v, "TOPIC", None))
AGGREGATE_TOPICS = frozenset(agg.TOPIC for agg in AGGREGATES)
CLAIM_TOPIC = "basis:SettlementBatch.Confirmed.v1"


@dataclass
class Claim:
    """An anchor the ledger says a settlement posted (its batch's Confirmed event)."""

    line_position: int
    batch_stream: str
    position: int
    head: str


@dataclass
class ExportReading:
    lines: int = 0
    events: int = 0
    first_position: int | None = None
    last_position: int = 0
    head: str = GENESIS_HEX
    problems: list[tuple[int | None, str]] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)

    omitted: int = 0
    first_bad_position: int | None = None
    # Lines out of order or twice: the store holds them in position order, not the file's, so an
    # export projected as read (``on_page``) is not the store's replay; the caller replays the store.
    irregular: bool = False
    # Lines that repeat a stream's version at another position, removed from the store after the
    # import (the one at the lowest position stays): the receipts handed on page by page included them.
    removed: int = 0

    def problem(self, position: int | None, message: str) -> None:
        if position is not None and (self.first_bad_position is None or position < self.first_bad_position):
            self.first_bad_position = position
        if len(self.problems) >= MAX_PROBLEMS:  # a hostile file must not fill the auditor's memory
            self.omitted += 1
            return
        where = f"position {position}" if position is not None else "export"
        self.problems.append((position, f"{where}: {message}"))

    def as_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "events": self.events, "first_position": self.first_position,
                "last_position": self.last_position, "head": self.head,
                "first_bad_position": self.first_bad_position}


class HeadIndex:
    """Each imported line's head by position, in the temporary events database (32 bytes each: half
    the pages its hex text took). A page of lines at consecutive positions, all above every position
    held before it (an export read in order), is held as one row: its first and last positions and
    their heads end to end (a row per line was 0.2 of the reading's 1.46 CPU-s per 120,008 lines).
    Any other page is held a row per line, and a line's row is always later than the page it falls
    in: where both hold a position, the line's row is the latest line there."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.execute("CREATE TABLE IF NOT EXISTS export_heads (position INTEGER PRIMARY KEY, head BLOB NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS export_head_pages (first INTEGER PRIMARY KEY, last INTEGER NOT NULL, "
                   "heads BLOB NOT NULL)")
        self.top = 0  # the highest position held

    def head(self, position: int) -> str | None:
        row = self.db.execute("SELECT head FROM export_heads WHERE position = ?", (position,)).fetchone()
        if row is None:
            row = self.db.execute(
                "SELECT substr(heads, (? - first) * 32 + 1, 32) FROM export_head_pages WHERE first = "
                "(SELECT MAX(first) FROM export_head_pages WHERE first <= ?) AND last >= ?",
                (position, position, position)).fetchone()
        return "0x" + row[0].hex() if row else None

    def add(self, rows: list[tuple[int, bytes]]) -> None:
        if not rows:
            return
        first, last = rows[0][0], rows[-1][0]
        if first > self.top and last - first + 1 == len(rows) and all(
                p == first + i for i, (p, _) in enumerate(rows)):
            self.db.execute("INSERT INTO export_head_pages VALUES (?, ?, ?)",
                            (first, last, b"".join(head for _, head in rows)))
        else:
            self.db.executemany("INSERT OR REPLACE INTO export_heads VALUES (?, ?)", rows)
        self.top = max(self.top, max(p for p, _ in rows))

    def first_after(self, position: int) -> int | None:
        line = self.db.execute("SELECT MIN(position) FROM export_heads WHERE position > ?", (position,)).fetchone()[0]
        page = self.db.execute("SELECT MIN(max(first, ? + 1)) FROM export_head_pages WHERE last > ?",
                               (position, position)).fetchone()[0]
        return min(x for x in (line, page) if x is not None) if line is not None or page is not None else None

    def count_after(self, position: int) -> int:
        """How many positions after ``position`` hold a head."""
        in_pages = self.db.execute("SELECT COALESCE(SUM(last - max(first, ? + 1) + 1), 0) FROM export_head_pages "
                                   "WHERE last > ?", (position, position)).fetchone()[0]
        lines = self.db.execute(
            "SELECT COUNT(*) FROM export_heads h WHERE position > ? AND NOT EXISTS ("
            "SELECT 1 FROM export_head_pages g WHERE g.first <= h.position AND g.last >= h.position)",
            (position,)).fetchone()[0]
        return in_pages + lines

    def close(self) -> None:
        self.db.close()


def _sqlite(store: LedgerStore) -> SQLiteApplicationRecorder:
    rec = store.recorder
    if not isinstance(rec, SQLiteApplicationRecorder):
        raise ExportError("an export is replayed into a temporary SQLite store")
    return rec


# position, stream, topic, state as parsed (None unless asked for), state stored
PageRow = tuple[int, str, str, dict[str, Any] | None, bytes]


def read_export(files: Iterable[Path], store: LedgerStore, on_page: Callable[[list[PageRow]], None] | None = None,
                page_states: bool = True,
                on_pages_done: Callable[[], None] | None = None) -> tuple[ExportReading, HeadIndex]:
    """Verify and import the export ``files`` (read in order, as one chain) into the empty ``store``.
    ``on_page`` is handed each page of stored events once stored and committed, in file order; with
    ``page_states`` each row holds its parsed state (the callee's), else None (a page of parsed
    states held until the page is stored cost 15 % of the reading). The caller closes the
    returned ``HeadIndex``. ``on_pages_done`` is called once the last page is handed over, before
    the checks that read the whole store (the stream index and versions, the claims)."""
    rec = _sqlite(store)
    db = sqlite3.connect(rec.datastore.pool.db_name, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # a throwaway store: nothing to keep after a crash
    heads = HeadIndex(db)
    reading = ExportReading()
    deferred = defer_stream_index(db, rec.events_table_name)
    insert = (f"INSERT INTO {rec.events_table_name} (rowid, originator_id, originator_version, topic, state) "
              "VALUES (?, ?, ?, ?, ?)")
    events: list[tuple[int, str, int, str, bytes]] = []
    page: list[PageRow] = []
    head_rows: list[tuple[int, bytes]] = []
    previous = GENESIS_HEAD
    previous_position = 0
    unknown_topics: set[str] = set()
    streams: dict[str, str] = {}  # stream ids whose form was matched, each with its stored form

    def flush() -> None:
        db.execute("BEGIN")
        stored = page
        try:
            db.executemany(insert, events)
        except sqlite3.IntegrityError:
            db.execute("ROLLBACK")
            db.execute("BEGIN")
            reading.irregular = True
            stored = []
            for row, fed in zip(events, page, strict=True):  # one by one, to name the duplicate
                try:
                    db.execute(insert, row)
                    stored.append(fed)
                except sqlite3.IntegrityError:
                    reading.problem(row[0], f"stream {row[1]} version {row[2]} or this position appears twice")
        heads.add(head_rows)
        db.execute("COMMIT")
        if on_page is not None and stored:
            on_page(stored)
        events.clear()
        page.clear()
        head_rows.clear()

    # the reading's counts and last line, held here and set on ``reading`` after the loop (set on it
    # line by line, five attribute writes a line were about 0.2 µs of its 6)
    lines = events_read = 0
    first_position: int | None = None
    last_head = reading.head
    for path in files:
        name = path.name
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                lines += 1
                parsed = _parse(raw, name, lineno, reading, streams)
                if parsed is None:
                    continue
                position, stream, stored_stream, version, topic, state, head, has_float = parsed
                # the canonical form (cannot fail on what msgspec read): ``canonical_bytes``, whose
                # common case (no float, ASCII) is taken here without the call
                if has_float or not (state_json := sorted_json(state)).isascii():
                    state_json = canonical_bytes(state, has_float=has_float)
                expected = sha256(previous + body_bytes(position, stream, version, topic, state_json)).digest()
                # A head equal to the one the chain expects has the form (0x + 64 lowercase hex): only
                # another one is matched against it (the match was 1.5-3 µs a line, a fifth of the reading)
                if head == "0x" + expected.hex():
                    own = expected
                elif _HEX64.match(head) is None:  # only a line ``decode_line_fields`` read gets here
                    _parse_any(raw, name, lineno, reading)  # names the field's form, as it always did
                    continue
                else:
                    own = bytes.fromhex(head[2:])
                    if previous_position == 0 and events_read == 0:
                        reading.problem(position, "its head does not follow from the genesis head (an export made "
                                                  "with --from? give the earlier parts first)")
                    else:
                        reading.problem(position, f"its head does not follow from position {previous_position}'s: "
                                                  "this line was altered, or a line before it was dropped, "
                                                  "reordered or inserted")
                if position <= previous_position:
                    reading.irregular = True
                    reading.problem(position, f"comes after position {previous_position} (lines out of order)")
                # eventsourcing resolves topics to classes by importing them: a line naming anything
                # but the ledger's own event and aggregate types is never stored, so never replayed.
                importable = True
                if topic not in KNOWN_TOPICS:
                    importable = False
                    if topic not in unknown_topics:
                        unknown_topics.add(topic)
                        reading.problem(position, f"topic {topic!r} is unknown to this auditor (a newer ledger?); "
                                                  "its lines are not replayed")
                elif "originator_topic" in state and state["originator_topic"] not in AGGREGATE_TOPICS:
                    importable = False
                    reading.problem(position, f"names the aggregate type {state['originator_topic']!r}, which the "
                                              "ledger does not have; not replayed")
                if topic == CLAIM_TOPIC and state.get("anchor_position") is not None:
                    reading.claims.append(Claim(position, stream, state["anchor_position"],
                                                str(state.get("anchor_head"))))
                previous = own  # the next line chains from this line's own head
                if position > previous_position:
                    previous_position = position
                if first_position is None:
                    first_position = position
                events_read += 1
                last_head = head
                if importable:
                    events.append((position, stored_stream, version, topic, state_json))
                    if on_page is not None:
                        page.append((position, stream, topic, state if page_states else None, state_json))
                head_rows.append((position, own))
                if len(events) >= PAGE:
                    flush()
    reading.lines, reading.events, reading.first_position = lines, events_read, first_position
    if events_read:
        reading.last_position, reading.head = previous_position, last_head
    flush()
    if on_pages_done is not None:
        on_pages_done()
    if deferred:
        index_streams(db, rec.events_table_name, reading)
    if reading.events == 0:
        reading.problem(None, "it holds no events")
    if reading.omitted:
        reading.problems.append((None, f"export: {reading.omitted} more problem(s) not listed"))
    check_streams(db, rec.events_table_name, reading)
    _check_claims(heads, reading)
    return reading, heads


# stream ids held with their stored form (``_parse``): a job's events are near one another in the
# log, an account's recur throughout, so most lines find theirs (matching the form was 1.5-2.5 µs)
STREAMS_HELD = 8192

ParsedLine = tuple[int, str, str, int, str, dict, str, bool]  # position, stream, stored stream, version, …


def _parse(raw: bytes, name: str, lineno: int, reading: ExportReading, streams: dict[str, str]) -> ParsedLine | None:
    """The line's fields, its stream's form matched; its head's form is the caller's to match (where
    the head is not the one the chain expects)."""
    fields = decode_line_fields(raw)  # the line's keys and their types, checked in C
    if fields is not None:
        line, has_float = fields
        stream = line.stream
        stored = streams.get(stream)
        if stored is None and _UUID.match(stream) is not None:
            if len(streams) >= STREAMS_HELD:
                streams.clear()
            stored = streams[stream] = stream.replace("-", "")
        if stored is not None:
            return line.position, stream, stored, line.version, line.topic, line.state, line.head, has_float
    return _parse_any(raw, name, lineno, reading)


def _parse_any(raw: bytes, name: str, lineno: int, reading: ExportReading) -> ParsedLine | None:
    """Any line, read field by field: None (its problem named) unless every field has its form."""
    try:
        obj, has_float = decode_line(raw)
    except ValueError as exc:  # not UTF-8, not JSON (strict RFC 8259), or a number out of range
        reading.problem(_guess_position(raw), f"{name}:{lineno} is not a JSON line ({exc})")
        return None
    if not isinstance(obj, dict) or obj.keys() != LINE_KEYS:
        reading.problem(_guess_position(raw), f"{name}:{lineno} must hold exactly the keys {sorted(LINE_KEYS)}")
        return None
    position, stream, version, topic = obj["position"], obj["stream"], obj["version"], obj["topic"]
    state, head = obj["state"], obj["head"]
    ok = (type(position) is int and position > 0 and type(version) is int and version > 0
          and isinstance(stream, str) and _UUID.match(stream) and isinstance(topic, str)
          and isinstance(state, dict) and isinstance(head, str) and _HEX64.match(head))
    if not ok:
        reading.problem(position if type(position) is int else None,
                        f"{name}:{lineno}: a field has the wrong type or form (position and version positive integers, "
                        "stream a lowercase UUID, topic a string, state an object, head 0x + 64 lowercase hex)")
        return None
    return position, stream, stream.replace("-", ""), version, topic, state, head, has_float


def _guess_position(raw: bytes) -> int | None:
    """The position a damaged line names, so the problem can still be placed."""
    guess = _POSITION.search(raw)
    return int(guess.group(1)) if guess else None


def _check_claims(heads: HeadIndex, reading: ExportReading) -> None:
    """An anchor the ledger records must name a head the export has at that position."""
    for c in reading.claims:
        if c.position >= c.line_position:
            reading.problem(c.position, f"claimed anchored by position {c.line_position}, which is not after it")
            continue
        have = heads.head(c.position)
        if have is None:
            reading.problem(c.position, f"claimed anchored (by position {c.line_position}) but not in the export")
        elif have != c.head:
            reading.problem(c.position, f"claimed anchored with head {c.head} (by position {c.line_position}), "
                                        f"the export's head there is {have}")
