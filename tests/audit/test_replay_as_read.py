"""`basis audit --events` projects the export as it reads it and checks receipts on a second
process: what it builds and finds must be exactly what a replay of the imported store finds."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import rfc8785
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import basis.ledger.export_replay as export_replay
import basis.ledger.receipt_audit as receipt_audit
from basis.cli.audit_events import audit_events
from basis.config import Settings
from basis.ledger.export import canonical, export
from basis.ledger.export_replay import ExportReplay, StoredStateDecoder, transcoded
from basis.ledger.projections import Projector, ViewReader
from basis.ledger.projections.projector import _sorted_json
from basis.ledger.projections.reader import TABLES
from basis.ledger.replay import read_export
from basis.ledger.service import Ledger
from basis.ledger.store import LedgerStore
from tests.audit.helpers import WORKER, fill, read_lines, rechain, write_lines


def _exported(settings: Settings, path: Path) -> str:
    ledger = Ledger(settings)
    try:
        account_id = uuid.UUID(fill(ledger)["account_id"])
        for i in range(3):
            job_id = uuid.uuid4()
            ledger.run(ledger.accept_job(job_id=job_id, account_id=account_id, model="basis-default",
                                         prompt_tokens=5 + i, max_output_tokens=32, assignment=("contributor", WORKER)))
            ledger.run(ledger.finish_job(job_id, outcome="completed", output_tokens=4 + i))
        with open(path, "w") as fh:
            export(ledger.store, fh)
        return ledger.signer.address
    finally:
        ledger.close()

def _second_receipt_with_the_first_ones_hash(lines: list[str], out: Path) -> Path:
    """The export ``lines`` with its second receipt claiming the first one's hash, rechained, at ``out``."""
    receipts = [i for i, x in enumerate(lines) if '"topic":"basis:Job.ReceiptIssued.v1"' in x]
    first, second = json.loads(lines[receipts[0]]), json.loads(lines[receipts[1]])
    second["state"]["hash"] = first["state"]["hash"]
    i = receipts[1]
    return write_lines(out, rechain([*lines[:i], json.dumps(second), *lines[i + 1:]], i))


@pytest.mark.parametrize("parallel", [False, True], ids=["inline", "own-process"])
def test_views_projected_as_read_equal_a_replay_of_the_imported_store(settings, tmp_path, monkeypatch, parallel):
    """Inline, pages are projected from the parsed lines; on a process of its own (where the
    platform forks), from the temporary store, page by page, while later pages are imported."""
    monkeypatch.setattr("basis.ledger.replay.PAGE", 7)  # many pages: later ones update rows earlier ones wrote
    path = tmp_path / "ledger.jsonl"
    _exported(settings, path)
    store = LedgerStore(Settings(home=tmp_path / "auditor", database_url=None).event_store_env())
    replay = ExportReplay(store, tmp_path / "as-read.sqlite3", None, parallel=parallel)
    try:
        reading, heads = read_export([path], store, on_page=replay.on_page, page_states=replay.needs_states)
        # the temporary store's (stream, version) index, built after the import, is there and unique
        assert heads.db.execute("SELECT sql FROM sqlite_master WHERE name = 'stored_events_stream_version'"
                                ).fetchone()[0].startswith("CREATE UNIQUE INDEX")
        heads.close()
        assert replay.finish(reading.irregular) and replay.error is None
        from_store = Projector(store, tmp_path / "from-store.sqlite3")
        assert from_store.catch_up() == reading.events
        from_store.stop()
        a, b = ViewReader(tmp_path / "as-read.sqlite3"), ViewReader(tmp_path / "from-store.sqlite3")
        assert a.position() == b.position() == reading.last_position
        for table in TABLES:
            assert a.digest(table) == b.digest(table), table
        assert a.counts()["receipts"] == 6
        a.close()
        b.close()
        # the secondary indexes, dropped for the projection as read, are all back (the checks read through them)
        indexes = [sorted(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'").fetchall())
                   for db in (sqlite3.connect(tmp_path / name) for name in ("as-read.sqlite3", "from-store.sqlite3"))]
        assert indexes[0] == indexes[1] and any(name == "receipts_worker" for name, _ in indexes[0])
    finally:
        replay.close()
        store.close()


def test_a_forged_receipt_is_named_the_same_on_a_second_process_or_inline(settings, tmp_path):
    path = tmp_path / "ledger.jsonl"
    signer = _exported(settings, path)
    honest = [audit_events([path], signer=signer, parallel=parallel) for parallel in (True, False)]
    assert honest[0][0].as_dict() == honest[1][0].as_dict() and honest[0][0].ok
    assert honest[0][0].receipts == 6 and honest[0][0].charged_total > 0

    # A forger rewrites one receipt's charge and recomputes the chain: only the receipt checks see it.
    lines = read_lines(path)
    i = next(i for i, x in enumerate(lines) if '"topic":"basis:Job.ReceiptIssued.v1"' in x)
    obj = json.loads(lines[i])
    job = obj["stream"]
    obj["state"]["core"]["charged"] = str(int(obj["state"]["core"]["charged"]) + 1)
    forged = write_lines(tmp_path / "forged.jsonl", rechain([*lines[:i], json.dumps(obj), *lines[i + 1:]], i))
    reports = [audit_events([forged], signer=signer, parallel=parallel)[0] for parallel in (True, False)]
    assert reports[0].as_dict() == reports[1].as_dict()
    assert not reports[0].ok
    assert any(p.startswith(f"receipt {job}: charged ") for p in reports[0].problems), reports[0].problems
    assert any(p.startswith(f"receipt {job}: hash ") for p in reports[0].problems), reports[0].problems


def test_a_replay_the_export_breaks_is_reported_the_same_on_its_own_process_or_inline(settings, tmp_path):
    """A forger drops a job's first event and rechains: the replay itself fails (an event for a job
    never accepted), which the report says, wherever the projection ran."""
    path = tmp_path / "ledger.jsonl"
    signer = _exported(settings, path)
    lines = read_lines(path)
    i = next(i for i, x in enumerate(lines) if '"topic":"basis:Job.Accepted.v1"' in x)
    broken = write_lines(tmp_path / "broken.jsonl", rechain([*lines[:i], *lines[i + 1:]], i))
    reports = [audit_events([broken], signer=signer, parallel=parallel)[0] for parallel in (True, False)]
    assert reports[0].as_dict() == reports[1].as_dict()
    assert any(p.startswith("the replay of the export failed: AssertionError: event for unknown job")
               for p in reports[0].problems), reports[0].problems


def test_two_receipts_of_one_hash_fail_the_replay_on_its_own_process_inline_and_from_the_store(settings, tmp_path):
    """A receipt's hash is unique in the views: an export whose second receipt claims the first one's
    hash fails the replay as the store's own replay does (the index is built after the projection
    from an export, row by row from the store: the same error)."""
    path = tmp_path / "ledger.jsonl"
    signer = _exported(settings, path)
    lines = read_lines(path)
    forged = _second_receipt_with_the_first_ones_hash(lines, tmp_path / "forged.jsonl")
    reports = [audit_events([forged], signer=signer, parallel=parallel)[0] for parallel in (True, False)]
    assert reports[0].as_dict() == reports[1].as_dict()
    failed = "the replay of the export failed: IntegrityError: UNIQUE constraint failed: receipts.hash"
    assert failed in reports[0].problems, reports[0].problems
    # the store the export was imported into, projected row by row as `basis audit` does, fails the same way
    store = LedgerStore(Settings(home=tmp_path / "auditor", database_url=None).event_store_env())
    try:
        _, heads = read_export([forged], store)
        heads.close()
        projector = Projector(store, tmp_path / "from-store.sqlite3")
        with pytest.raises(sqlite3.IntegrityError, match=r"^UNIQUE constraint failed: receipts\.hash$"):
            projector.catch_up()
        projector.stop()
    finally:
        store.close()


def test_lines_out_of_order_are_replayed_from_the_store_in_position_order(settings, tmp_path):
    """Swapped lines are named; the views projected in file order are dropped and the store (which
    holds them in position order) is replayed, as before."""
    path = tmp_path / "ledger.jsonl"
    signer = _exported(settings, path)
    lines = read_lines(path)
    i = len(lines) // 2
    swapped = write_lines(tmp_path / "swapped.jsonl", [*lines[:i], lines[i + 1], lines[i], *lines[i + 2:]])
    report, summary = audit_events([swapped], signer=signer)
    honest, _ = audit_events([path], signer=signer)
    assert summary["first_bad_position"] is not None
    assert report.events == honest.events and report.receipts == honest.receipts
    assert report.charged_total == honest.charged_total


_TYPED = st.one_of(
    st.uuids().map(lambda u: {"_type_": "uuid_hex", "_data_": u.hex}),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: {"_type_": "datetime_iso", "_data_": d.isoformat()}),
    st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: {"_type_": "decimal_str", "_data_": str(d)}),
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**40, max_value=10**40) | st.text(max_size=8) | _TYPED,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20)


@pytest.fixture(scope="module")
def transcoder(tmp_path_factory):
    store = LedgerStore(Settings(home=tmp_path_factory.mktemp("transcoder"), database_url=None).event_store_env())
    yield store.mapper.transcoder
    store.close()


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.dictionaries(st.text(max_size=6), _JSON, max_size=5))
def test_transcoding_parsed_lines_equals_the_store_s_decoding(transcoder, value):
    """The projector is handed states as the store's transcoder would decode them."""
    text = json.dumps(value)
    assert transcoded(json.loads(text), transcoder.decoder.object_hook) == transcoder.decode(text.encode())


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.dictionaries(st.text(max_size=6), _JSON, max_size=5), ascii_only=st.booleans())
def test_a_stored_state_decodes_as_the_store_s_transcoder_decodes_it(transcoder, value, ascii_only):
    """The projection on its own process reads stored states with msgspec."""
    data = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert StoredStateDecoder(transcoder.decoder.object_hook)(data) == transcoder.decode(data)


@hsettings(max_examples=200, deadline=None)
@given(value=st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**40, max_value=10**40) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20))
def test_the_views_sorted_json_is_json_dumps_with_sorted_keys(value):
    """A job's usage and a settlement are stored as ``json.dumps(..., sort_keys=True)`` wrote them
    (the projector's encoder skips only its per-call set-up)."""
    assert _sorted_json(value) == json.dumps(value, sort_keys=True)


def test_transcoding_turns_typed_values_into_objects(transcoder):
    u, t = uuid.uuid4(), datetime(2026, 12, 1, tzinfo=UTC) + timedelta(microseconds=5)
    state = {"a": {"_type_": "uuid_hex", "_data_": u.hex}, "b": [{"_type_": "datetime_iso", "_data_": t.isoformat()}],
             "c": {"d": {"_type_": "decimal_str", "_data_": "1.5"}}}
    assert transcoded(state, transcoder.decoder.object_hook) == {"a": u, "b": [t], "c": {"d": Decimal("1.5")}}


_JCS_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(st.characters(exclude_categories=("Cs",))),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(st.characters(exclude_categories=("Cs",)),
                                                                        max_size=6), inner, max_size=4),
    max_leaves=25)


@hsettings(max_examples=300, deadline=None)
@given(value=_JCS_VALUE)
def test_the_chain_s_canonical_text_is_rfc8785_wherever_rfc8785_is_defined(value):
    """The export's fast path (sorted-key JSON for ASCII text without floats) and its general path
    both write RFC 8785's bytes (the chain hashes these bytes, and an outside verifier uses JCS)."""
    assert canonical(value).encode() == rfc8785.dumps(value)


def test_the_temporary_store_and_its_views_are_created_with_their_own_page_size(tmp_path):
    """``basis audit --events`` imports into a store whose file it creates first, with 16 KiB pages
    (fewer pages to write and copy back for events written once in order), and projects into views
    created the same way; the tables then live in them as in any other store."""
    import sqlite3

    from basis.config import Settings
    from basis.ledger.export_replay import ExportReplay
    from basis.ledger.store import LedgerStore
    from basis.ledger.temporary_store import TEMPORARY_PAGE_SIZE, prepare_temporary_store

    settings = Settings(home=tmp_path, database_url=None)
    prepare_temporary_store(settings.events_path)
    store = LedgerStore(settings.event_store_env())
    replay = ExportReplay(store, tmp_path / "replay.sqlite3", None, parallel=False)
    try:
        for path in (settings.events_path, tmp_path / "replay.sqlite3"):
            db = sqlite3.connect(path)
            assert db.execute("PRAGMA page_size").fetchone()[0] == TEMPORARY_PAGE_SIZE == 16384
            assert db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] >= 1
            db.close()
    finally:
        replay.close()
        store.close()


def test_the_reading_waits_for_a_projection_behind_it_and_a_failure_there_is_still_reported(settings, tmp_path,
                                                                                           monkeypatch):
    """The reader hands the projection's process at most ``PROJECTION_BEHIND`` pages it has not
    projected (it waits for it beyond that), and has it close the views (their indexes) as soon as
    the last page is handed over. With pages of two lines and a bound of one, an honest export
    audits as inline, a forged one (two receipts of one hash: the views' unique index, now built
    while the reading checks the stream versions) fails the replay as inline, and no process is
    left."""
    import multiprocessing
    import time

    import basis.ledger.replay as replay

    path = tmp_path / "ledger.jsonl"
    signer = _exported(settings, path)
    lines = read_lines(path)
    forged = _second_receipt_with_the_first_ones_hash(lines, tmp_path / "forged.jsonl")

    monkeypatch.setattr(replay, "PAGE", 2)
    monkeypatch.setattr(export_replay, "PROJECTION_BEHIND", 1)
    behind: list[int] = []
    on_page = ExportReplay.on_page

    def counted(self: ExportReplay, rows: list) -> None:
        on_page(self, rows)
        behind.append(sum(not page.done() for page in self._pages))

    monkeypatch.setattr(ExportReplay, "on_page", counted)
    project = export_replay._PageProjection.project

    def slow(self: export_replay._PageProjection, first: int, last: int) -> None:  # behind the reading, surely
        time.sleep(0.02)
        project(self, first, last)

    monkeypatch.setattr(export_replay._PageProjection, "project", slow)  # (the process is forked after)
    # the projection's process closes the views once the last page is handed over, before the
    # reading's own last checks (the stream index), not after them
    order: list[str] = []
    pages_done, index_streams = ExportReplay.pages_done, replay.index_streams
    monkeypatch.setattr(ExportReplay, "pages_done", lambda self: (order.append("pages done"), pages_done(self))[1])
    monkeypatch.setattr(replay, "index_streams", lambda *a: (order.append("stream index"), index_streams(*a))[1])
    for export_file in (path, forged):
        behind.clear()
        order.clear()
        reports = [audit_events([export_file], signer=signer, parallel=parallel)[0] for parallel in (True, False)]
        assert reports[0].as_dict() == reports[1].as_dict()
        assert len(behind) >= len(lines) // 2 and max(behind) <= 1, behind
        assert multiprocessing.active_children() == []
        assert order == ["pages done", "stream index"] * 2, order  # (inline it closes nothing early)
    failed = "the replay of the export failed: IntegrityError: UNIQUE constraint failed: receipts.hash"
    assert failed in reports[0].problems, reports[0].problems
    honest, _ = audit_events([path], signer=signer, parallel=False)
    assert honest.ok, honest.problems


@pytest.mark.parametrize(("owner", "name", "nth"), [(export_replay._PageProjection, "project", 3),
                                                    (receipt_audit, "check_receipt_states", 2)],
                         ids=["projection", "receipts"])
def test_a_process_of_the_audit_that_dies_mid_reading_fails_the_replay_and_leaves_no_process(settings, tmp_path,
                                                                                            monkeypatch, owner,
                                                                                            name, nth):
    """The projection's process killed on its third page, or the receipts' on its second batch, while
    the reading hands it more: the audit reports the replay's failure (no traceback out of
    ``audit_events``), and nothing is left running."""
    import multiprocessing
    import os

    import basis.ledger.replay as replay

    path = tmp_path / "ledger.jsonl"
    signer = _exported(settings, path)
    monkeypatch.setattr(replay, "PAGE", 2)
    original = getattr(owner, name)
    calls: list[int] = []

    def dies(*args):
        calls.append(1)  # (in the forked process: its own list)
        if len(calls) == nth:
            os._exit(3)
        return original(*args)

    monkeypatch.setattr(owner, name, dies)
    report, summary = audit_events([path], signer=signer)
    assert not report.ok
    assert any(p.startswith("the replay of the export failed: BrokenProcessPool") for p in report.problems), \
        report.problems
    assert summary["first_bad_position"] is None  # the export itself is sound
    assert multiprocessing.active_children() == []
