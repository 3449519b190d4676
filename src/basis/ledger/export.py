"""The portable ledger export: every stored event in log order, one JSON line each, with a running
hash chain (the public format is docs/audit.md; keep the two in step).

A line is the JSON object ``{head, position, state, stream, topic, version}`` written in canonical
form (its keys sort with ``head`` first), where

    head_0 = GENESIS_HEAD
    head_n = sha256(head_{n-1} (32 raw bytes) || canonical(line_n without "head"))

``canonical`` is RFC 8785 (JCS) with one stated widening: integers are written as their exact
decimal digits whatever their size (the ledger's amounts are 18-decimal base units, beyond the 2^53
that JCS's IEEE doubles hold; for every integer within it the two agree byte for byte).

Fields a public auditor must not see are replaced by ``{"redacted_sha256": hex}`` (``REDACTED``):
the chain commits to their digests, and nothing the audit checks reads them.

Reading is streaming: pages of the notification log, constant memory whatever the ledger's size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TextIO

import msgspec
import rfc8785
from eventsourcing.sqlite import SQLiteApplicationRecorder

from basis.ledger.store import LedgerStore

FORMAT = "basis-ledger-export-v1"
GENESIS_HEAD = hashlib.sha256(FORMAT.encode()).digest()
GENESIS_HEX = "0x" + GENESIS_HEAD.hex()
PAGE = 5000
LINE_KEYS = frozenset(("head", "position", "state", "stream", "topic", "version"))

# topic -> fields replaced by their SHA-256. Secrets (API-key hashes, the key's shown prefix and label)
# and what a client sent or received (idempotency keys, request body hashes, completion text).
REDACTED: dict[str, tuple[str, ...]] = {
    "basis:Account.ApiKeyAdded.v1": ("key_hash", "prefix"),
    "basis:ApiKey.Issued.v1": ("key_hash", "name", "prefix"),
    "basis:ApiKey.Revoked.v1": ("reason",),  # an operator's free text (who leaked it, where)
    "basis:Job.Accepted.v1": ("idempotency_key", "request_hash"),
    "basis:Job.Ended.v1": ("output_text",),
    # The ids a verifier re-scores are as telling as the text; `ids_sha256` stays in the clear.
    "basis:Job.CheckRequested.v1": ("prompt_ids", "output_ids"),
    "basis:IdempotencyRecord.Recorded.v1": ("key", "request_hash"),
}


class ExportError(ValueError):
    pass


# -- canonical JSON ----------------------------------------------------------------------------
class _FloatSeen:
    """``parse_float`` hook: C-speed decoding that notes whether a state holds any float."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, text: str) -> float:
        self.seen = True
        return float(text)


_float_seen = _FloatSeen()
_decode = json.JSONDecoder(parse_float=_float_seen).decode


def canonical(value: Any, *, has_float: bool | None = None) -> str:
    """JCS text of ``value`` (exact integers of any size): ``canonical_bytes`` as text."""
    return canonical_bytes(value, has_float=has_float).decode()


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_float(v) for v in value)
    return False


def decode_json(text: str) -> tuple[Any, bool]:
    """(value, whether it holds a float): C-speed parsing that keeps integers exact."""
    _float_seen.seen = False
    return _decode(text), _float_seen.seen


# The auditor's reading of an export (``basis audit --events``) parses and re-encodes every line:
# msgspec's C reader and writer do both in a third of the time of the ``json`` module's. Its reader
# keeps integers exact at any size (the ledger's amounts pass 2^64) and is strict RFC 8259 (valid
# UTF-8, no lone surrogate, no NaN); its sorted compact writer is JCS for text without floats whose
# output is ASCII (keys then sort by code point = UTF-16 code unit; JCS's escapes), so anything
# else takes ``_slow`` (tests/audit/test_canonical.py holds both paths equal to ``rfc8785``).
class _FiniteFloatSeen(_FloatSeen):
    """A float beyond IEEE doubles (``1e400``) has no canonical form: the line is not JSON the export writes."""

    def __call__(self, text: str) -> float:
        value = super().__call__(text)
        if not math.isfinite(value):
            raise ValueError(f"number out of range: {text}")
        return value


_line_float_seen = _FiniteFloatSeen()
_line_decode = msgspec.json.Decoder(float_hook=_line_float_seen).decode

HEX64 = r"0x[0-9a-f]{64}\Z"  # a head
UUID_TEXT = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z"  # a stream


class LineFields(msgspec.Struct, forbid_unknown_fields=True):
    """A line as msgspec reads it straight into fields (exactly the line's keys; positions and
    versions positive integers). The head's and the stream's forms are not matched here (msgspec's
    own ``pattern`` check cost 1.2 µs a line, half of the parse): the reader matches a stream id's
    once while it holds it, and a head's where it is not the one the chain expects (a head equal to
    that one has the form)."""

    head: str
    position: Annotated[int, msgspec.Meta(gt=0)]
    state: dict[str, Any]
    stream: str
    topic: str
    version: Annotated[int, msgspec.Meta(gt=0)]


_line_fields_decode = msgspec.json.Decoder(LineFields, float_hook=_line_float_seen).decode


def decode_line_fields(data: bytes) -> tuple[LineFields, bool] | None:
    """(the line's fields, whether its state holds a float) of a line with the keys and types of a
    well-formed one (the caller matches the forms of its head and stream: ``LineFields``); None for
    anything else, whose problem ``decode_line`` and the caller's checks then name."""
    _line_float_seen.seen = False
    try:
        line = _line_fields_decode(data)
    except ValueError:  # msgspec.DecodeError and ValidationError, or a float out of range
        return None
    return line, _line_float_seen.seen
_sorted_encode = msgspec.json.Encoder(order="sorted").encode
# msgspec's sorted compact text: the canonical form (JCS) of a value without a float whose text is
# ASCII (``canonical_bytes``; a reader that checks those two itself may call it directly)
sorted_json = _sorted_encode


def decode_line(data: bytes) -> tuple[Any, bool]:
    """(value, whether it holds a float) of JSON text in UTF-8 bytes; integers exact. Raises
    ``ValueError`` (``msgspec.DecodeError``) for anything that is not one JSON value."""
    _line_float_seen.seen = False
    return _line_decode(data), _line_float_seen.seen


def canonical_bytes(value: Any, *, has_float: bool | None = None) -> bytes:
    """JCS of ``value`` as UTF-8 bytes. msgspec's sorted compact output already is JCS for ASCII text
    without floats (the common case: keys then sort the same by code point and by UTF-16 unit);
    anything else takes the general path. ``has_float``: whether ``value`` holds a float, when the
    caller knows (else it is looked for)."""
    if has_float is None:
        has_float = _has_float(value)
    if not has_float:
        data = _sorted_encode(value)
        if data.isascii():
            return data
    return _slow(value).encode()


def _slow(value: Any) -> str:
    if value is None or value is True or value is False:
        return "null" if value is None else ("true" if value else "false")
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return rfc8785.dumps(value).decode()
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise ExportError(f"unpaired surrogate in a string: {exc}") from exc
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_slow(v) for v in value) + "]"
    if isinstance(value, dict):
        # JCS orders keys by their UTF-16 code units.
        keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(_slow(k) + ":" + _slow(value[k]) for k in keys) + "}"
    raise ExportError(f"not a JSON value: {type(value).__name__}")


_topics: dict[str, str] = {}


def body(position: int, stream: str, version: int, topic: str, state_json: str) -> str:
    """Canonical text of a line without its head (keys in JCS order: position, state, stream, topic, version)."""
    topic_json = _topics.get(topic)
    if topic_json is None:
        topic_json = _slow(topic)
        if len(_topics) < 1000:  # a file under audit may name any number of topics
            _topics[topic] = topic_json
    return (f'{{"position":{position},"state":{state_json},"stream":"{stream}","topic":{topic_json},'
            f'"version":{version}}}')


_topics_bytes: dict[str, bytes] = {}


def body_bytes(position: int, stream: str, version: int, topic: str, state_json: bytes) -> bytes:
    """``body(...)`` as UTF-8 bytes, from the state's canonical bytes (``stream`` a lowercase UUID)."""
    topic_json = _topics_bytes.get(topic)
    if topic_json is None:
        topic_json = _slow(topic).encode()
        if len(_topics_bytes) < 1000:
            _topics_bytes[topic] = topic_json
    return b'{"position":%d,"state":%b,"stream":"%b","topic":%b,"version":%d}' % (
        position, state_json, stream.encode(), topic_json, version)


def next_head(previous: bytes, body_text: str) -> bytes:
    return hashlib.sha256(previous + body_text.encode()).digest()


def with_head(head: bytes, body_text: str) -> str:
    return '{"head":"0x' + head.hex() + '",' + body_text[1:]


# -- redaction ---------------------------------------------------------------------------------
def redacted_digest(value: Any) -> str:
    """SHA-256 of a string's UTF-8 bytes; of any other JSON value, of its canonical text."""
    data = value.encode() if isinstance(value, str) else canonical(value).encode()
    return hashlib.sha256(data).hexdigest()


def redact(topic: str, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with the fields of ``REDACTED[topic]`` replaced (a null stays null: it hides nothing)."""
    fields = REDACTED.get(topic)
    if fields:
        for name in fields:
            value = state.get(name)
            if value is not None and not (isinstance(value, dict) and "redacted_sha256" in value):
                state[name] = {"redacted_sha256": redacted_digest(value)}
    return state


def stream_text(raw: Any) -> str:
    """eventsourcing keeps UUID ids as 32 hex digits on SQLite, UUID objects on PostgreSQL."""
    s = raw.hex if hasattr(raw, "hex") and not isinstance(raw, str | bytes) else str(raw)
    s = s.replace("-", "").lower()
    return f"{s[:8]}-{s[8:12]}-{s[12:16]}-{s[16:20]}-{s[20:]}"


# -- reading the log ---------------------------------------------------------------------------
def stored_events(store: LedgerStore, after: int = 0, upto: int | None = None,
                  page: int = PAGE) -> Iterator[tuple[int, str, int, str, bytes]]:
    """(position, stream, version, topic, state bytes) after ``after`` (up to ``upto``), in log order."""
    rec = store.recorder
    while True:
        if isinstance(rec, SQLiteApplicationRecorder):
            with rec.datastore.transaction(commit=False) as cur:
                cur.execute(f"SELECT rowid, originator_id, originator_version, topic, state FROM "
                            f"{rec.events_table_name} WHERE rowid > ? ORDER BY rowid LIMIT ?", (after, page))
                rows = [(r[0], r[1], r[2], r[3], r[4]) for r in cur.fetchall()]
        else:
            rows = [(n.id, n.originator_id, n.originator_version, n.topic, n.state)
                    for n in rec.select_notifications(after, page, inclusive_of_start=False)]
        for position, stream, version, topic, state in rows:
            if upto is not None and position > upto:
                return
            yield position, stream_text(stream), version, topic, bytes(state)
        if len(rows) < page:
            return
        after = rows[-1][0]


def line_body(position: int, stream: str, version: int, topic: str, state: bytes) -> str:
    """The canonical body of one stored event's export line (redacted)."""
    try:
        decoded, has_float = decode_json(state.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"position {position}: stored state is not JSON (compressed or encrypted store?)") from exc
    if not isinstance(decoded, dict):
        raise ExportError(f"position {position}: stored state is not a JSON object")
    redact(topic, decoded)
    state_json = canonical(decoded, has_float=has_float)
    return body(position, stream, version, topic, state_json)


@dataclass
class ChainPoint:
    position: int = 0
    head: bytes = GENESIS_HEAD

    @property
    def head_hex(self) -> str:
        return "0x" + self.head.hex()


def export(store: LedgerStore, out: TextIO, *, start: int = 1, upto: int | None = None) -> ChainPoint:
    """Write the lines of positions ``start``..``upto`` (inclusive; all by default); returns the last
    (position, head). Lines before ``start`` are hashed, not written, so the chain continues."""
    point = ChainPoint()
    write = out.write
    for position, stream, version, topic, state in stored_events(store, 0, upto):
        text = line_body(position, stream, version, topic, state)
        point.head = next_head(point.head, text)
        point.position = position
        if position >= start:
            write(with_head(point.head, text))
            write("\n")
    return point


def head_at(store: LedgerStore, position: int, since: ChainPoint | None = None) -> ChainPoint:
    """The chain's (position, head) at the last stored event at or before ``position``, continuing
    from ``since`` (an earlier point of the same chain) when given."""
    point = ChainPoint(since.position, since.head) if since else ChainPoint()
    for pos, stream, version, topic, state in stored_events(store, point.position, position):
        point.head = next_head(point.head, line_body(pos, stream, version, topic, state))
        point.position = pos
    return point


class LedgerHeads:
    """The chain's head at the latest committed position, for settlement to anchor.

    Hashing continues from the last point computed, kept in a small JSON file so that a restart
    does not hash the whole log again. The file is a cache of a pure function of the log: a point
    beyond the log (another store at this path) is dropped and the chain recomputed."""

    def __init__(self, store: LedgerStore, cache: Path | None = None) -> None:
        self.store = store
        self.cache = cache
        self.point = self._load()

    def _load(self) -> ChainPoint:
        if self.cache is None or not self.cache.is_file():
            return ChainPoint()
        try:
            data = json.loads(self.cache.read_text())
            return ChainPoint(int(data["position"]), bytes.fromhex(data["head"][2:]))
        except (ValueError, KeyError, TypeError):
            return ChainPoint()

    def latest(self) -> ChainPoint:
        """(position, head) at the last event committed now (never a position not yet committed)."""
        last = self.store.recorder.max_notification_id() or 0
        if self.point.position > last:
            self.point = ChainPoint()
        if last > self.point.position:
            self.point = head_at(self.store, last, self.point)
            if self.cache is not None:
                try:
                    self.cache.parent.mkdir(parents=True, exist_ok=True)
                    tmp = self.cache.with_suffix(".tmp")
                    tmp.write_text(json.dumps({"position": self.point.position, "head": self.point.head_hex}))
                    os.replace(tmp, self.cache)
                except OSError:  # only a cache: the next process hashes from the start instead
                    logging.getLogger(__name__).warning("cannot write the ledger head cache %s", self.cache)
        return ChainPoint(self.point.position, self.point.head)
