"""The portable ledger export and `basis audit --events` without a chain: the export replays on
another machine and passes, secrets never appear in it, and tampering is named at its position."""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import sqlite3
import uuid
from pathlib import Path

import pytest
import rfc8785

from basis.cli.audit_events import audit_events
from basis.config import Settings
from basis.ledger import ids
from basis.ledger.export import GENESIS_HEX, LedgerHeads, canonical, export, head_at
from basis.ledger.service import Ledger
from tests.audit.helpers import (
    COMPLETION,
    IDEMPOTENCY_KEY,
    REQUEST_HASH,
    basis,
    fill,
    position_of,
    read_lines,
    rechain,
    write_lines,
)


@pytest.fixture
def exported(settings: Settings, tmp_path: Path) -> tuple[Path, dict[str, str], Ledger]:
    ledger = Ledger(settings)
    secrets = fill(ledger)
    path = tmp_path / "ledger.jsonl"
    with open(path, "w") as fh:
        export(ledger.store, fh)
    yield path, secrets, ledger
    ledger.close()


def test_export_on_one_home_audits_in_another_folder_with_no_access_to_the_first(settings, tmp_path):
    ledger = Ledger(settings)
    fill(ledger)
    signer = ledger.signer.address
    ledger.close()
    export_path = tmp_path / "ledger.jsonl"
    with open(export_path, "w") as fh:
        proc = basis(["ledger", "export"], settings.home, stdout=fh)
    assert proc.returncode == 0, proc.stderr
    assert "exported through position" in proc.stderr

    # The operator's home is gone; the auditor runs in an empty folder of its own.
    shutil.rmtree(settings.home)
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    shutil.move(export_path, auditor / "ledger.jsonl")
    proc = basis(["audit", "--events", "ledger.jsonl", "--signer", signer, "--json"], auditor / "no-home", cwd=auditor)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["problems"] == []
    assert report["receipts"] == 3 and report["accounts"] == 1 and report["open_jobs"] == 0
    assert report["export"]["first_bad_position"] is None
    assert report["export"]["lines"] == report["export"]["last_position"] == report["events"]
    assert not (auditor / "no-home").exists(), "the audit must not create a store of its own"


def test_no_completion_text_api_key_or_client_value_appears_in_the_export(exported):
    path, secrets, ledger = exported
    text = path.read_text()
    # The ledger does hold them (so the test checks something):
    job = ledger.get(uuid.UUID(secrets["job_id"]))
    assert job.output_text == COMPLETION and job.idempotency_key == IDEMPOTENCY_KEY
    key_hash = ids.hash_api_key(secrets["api_key"])
    db = sqlite3.connect(ledger.settings.events_path)
    stored = b"".join(r[0] for r in db.execute("SELECT state FROM stored_events"))
    db.close()
    assert key_hash.encode() in stored and COMPLETION.encode() in stored
    for secret in (COMPLETION, "Paris", key_hash, secrets["api_key"], secrets["api_key"][:13], IDEMPOTENCY_KEY,
                   REQUEST_HASH):
        assert secret not in text, f"{secret!r} leaked into the export"
    # ... and the chain still commits to each of them, by its SHA-256.
    for committed in (COMPLETION, key_hash, IDEMPOTENCY_KEY, REQUEST_HASH):
        assert hashlib.sha256(committed.encode()).hexdigest() in text


def test_the_export_is_canonical_chained_and_reproducible(exported, tmp_path):
    path, _, ledger = exported
    lines = read_lines(path)
    assert lines == rechain(lines), "every head must follow the published rule"
    for line in lines:
        obj = json.loads(line)
        assert line == canonical(obj), "each line is itself in canonical form"
    again = io.StringIO()
    point = export(ledger.store, again)
    assert again.getvalue() == path.read_text()
    assert point.head_hex == json.loads(lines[-1])["head"] != GENESIS_HEX
    # --from writes a suffix that continues the same chain; the parts audit together.
    middle = position_of(lines[len(lines) // 2])
    tail = io.StringIO()
    export(ledger.store, tail, start=middle)
    assert tail.getvalue().splitlines() == [x for x in lines if position_of(x) >= middle]
    first = write_lines(tmp_path / "part1.jsonl", [x for x in lines if position_of(x) < middle])
    second = write_lines(tmp_path / "part2.jsonl", tail.getvalue().splitlines())
    report, summary = audit_events([first, second], signer=ledger.signer.address)
    assert report.ok, report.problems
    report, summary = audit_events([second])
    assert not report.ok and summary["first_bad_position"] == middle
    assert "genesis" in report.problems[0]
    # Settlement's head tracker agrees with the export at every step, and resumes from its cache.
    heads = LedgerHeads(ledger.store, tmp_path / "head.json")
    assert heads.latest().head_hex == point.head_hex
    assert LedgerHeads(ledger.store, tmp_path / "head.json").point.position == point.position
    assert head_at(ledger.store, middle).head_hex == json.loads(lines[[position_of(x) for x in lines].index(middle)])[
        "head"]


def _audit(tmp_path: Path, lines: list[str], signer: str | None = None):
    return audit_events([write_lines(tmp_path / "tampered.jsonl", lines)], signer=signer)


def test_one_byte_flipped_in_a_line_is_named_at_its_position(exported, tmp_path):
    path, _, _ = exported
    lines = read_lines(path)
    i = next(i for i, x in enumerate(lines) if '"topic":"basis:Account.Credited.v1"' in x)
    flipped = lines[i].replace('"amount":5000', '"amount":9000', 1)
    assert flipped != lines[i]
    report, summary = _audit(tmp_path, [*lines[:i], flipped, *lines[i + 1:]])
    assert not report.ok
    assert summary["first_bad_position"] == position_of(lines[i])
    assert report.problems[0].startswith(f"position {position_of(lines[i])}: its head does not follow")
    # A flip that breaks the JSON itself is still named at the line's position.
    broken = lines[i].replace('"topic"', '"topic\x01', 1)
    report, summary = _audit(tmp_path, [*lines[:i], broken, *lines[i + 1:]])
    assert summary["first_bad_position"] == position_of(lines[i]) and "not a JSON line" in report.problems[0]



def test_a_head_or_stream_without_its_form_is_named_and_the_line_skipped(exported, tmp_path):
    """A head that is not 0x + 64 lowercase hex (even the right digest in capitals) or a stream that
    is not a lowercase UUID: the line is named at its position and not read; the next line's head
    then does not follow. The reader matches a head's form only where it is not the expected one,
    and a stream's once while it holds it: each way is covered here."""
    path, _, _ = exported
    lines = read_lines(path)
    i = next(i for i, x in enumerate(lines) if '"topic":"basis:Account.Credited.v1"' in x)
    obj = json.loads(lines[i])
    p = obj["position"]
    variants = {
        "head in capitals": lines[i].replace(obj["head"], "0x" + obj["head"][2:].upper(), 1),
        "head too short": lines[i].replace(obj["head"], obj["head"][:-1], 1),
        "stream in capitals": lines[i].replace(obj["stream"], obj["stream"].upper(), 1),
    }
    for what, line in variants.items():
        assert line != lines[i], what
        report, summary = _audit(tmp_path, [*lines[:i], line, *lines[i + 1:]])
        assert not report.ok and summary["first_bad_position"] == p, what
        assert report.problems[0].startswith(f"position {p}: tampered.jsonl:{i + 1}: a field has the wrong type or "
                                             "form"), (what, report.problems[:2])
        assert report.problems[1].startswith(f"position {p + 1}: its head does not follow"), (what, report.problems[:2])
        assert summary["events"] == len(lines) - 1, what  # the line was not read
    # the honest file: every line read, nothing named
    report, summary = _audit(tmp_path, lines)
    assert report.ok and summary["events"] == len(lines) and summary["first_bad_position"] is None

def test_a_line_in_another_json_form_passes_but_not_one_chained_over_its_own_bytes(exported, tmp_path):
    """The chain commits to C(line), not to the line's bytes (docs/audit.md section 3): the same
    values written another way (spaces, keys reordered) still verify; a line whose head is the hash
    of its own non-canonical bytes does not, so the audit cannot take the bytes as they are."""
    path, _, ledger = exported
    lines = read_lines(path)
    i = next(i for i, x in enumerate(lines) if '"topic":"basis:Account.Credited.v1"' in x)
    obj = json.loads(lines[i])
    respelled = json.dumps(dict(reversed(list(obj.items()))), indent=None)  # ", " and ": ", head last
    assert respelled != lines[i] and json.loads(respelled) == obj
    report, summary = _audit(tmp_path, [*lines[:i], respelled, *lines[i + 1:]], signer=ledger.signer.address)
    assert report.ok and summary["first_bad_position"] is None, report.problems
    own_bytes = json.dumps({k: v for k, v in obj.items() if k != "head"})  # non-canonical, chained as it is
    previous = bytes.fromhex(json.loads(lines[i - 1])["head"][2:])
    head = "0x" + hashlib.sha256(previous + own_bytes.encode()).hexdigest()
    chained = json.dumps({"head": head, **json.loads(own_bytes)})
    rest = rechain([*lines[:i], chained, *lines[i + 1:]], i + 1)  # every later line follows from it
    report, summary = _audit(tmp_path, rest)
    assert summary["first_bad_position"] == position_of(lines[i])
    assert report.problems[0].startswith(f"position {position_of(lines[i])}: its head does not follow")


def test_a_dropped_line_is_named_at_the_position_where_the_chain_breaks(exported, tmp_path):
    path, _, _ = exported
    lines = read_lines(path)
    i = len(lines) // 2
    report, summary = _audit(tmp_path, lines[:i] + lines[i + 1:])
    assert not report.ok
    assert summary["first_bad_position"] == position_of(lines[i + 1])
    assert f"does not follow from position {position_of(lines[i - 1])}'s" in report.problems[0]
    assert "dropped" in report.problems[0]


def test_two_swapped_lines_are_named(exported, tmp_path):
    path, _, _ = exported
    lines = read_lines(path)
    i = len(lines) // 3
    swapped = [*lines[:i], lines[i + 1], lines[i], *lines[i + 2:]]
    report, summary = _audit(tmp_path, swapped)
    assert not report.ok
    assert summary["first_bad_position"] == position_of(lines[i])
    assert any(p.startswith(f"position {position_of(lines[i])}: comes after position {position_of(lines[i + 1])}")
               for p in report.problems), report.problems


def test_a_history_rewritten_and_rechained_passes_alone_but_not_against_its_anchors(exported, tmp_path):
    """Without the chain, a forger who recomputes every head cannot be told apart: that is what the
    anchors are for (tests/audit/test_anchors.py). The replay itself still checks the money."""
    path, _, ledger = exported
    lines = read_lines(path)
    i = next(i for i, x in enumerate(lines) if '"topic":"basis:Account.Credited.v1"' in x)
    forged = [*lines[:i], lines[i].replace('"amount":5000', '"amount":9000', 1), *lines[i + 1:]]
    report, _ = _audit(tmp_path, rechain(forged, i), signer=ledger.signer.address)
    assert report.ok, report.problems


@pytest.mark.parametrize("ahead", [10_000, 0], ids=["rebuilt-ahead", "rebuilt-in-the-checks"])
def test_an_account_stream_its_aggregate_refuses_is_named_either_way(exported, tmp_path, monkeypatch, ahead):
    """The account aggregates are rebuilt while the projection finishes (at most ACCOUNTS_AHEAD of
    them), the rest by the money checks: either way a clean export passes, and a stream whose
    aggregate refuses its own history (a credit from a source the ledger does not have) fails the
    audit with the aggregate's own words."""
    monkeypatch.setattr("basis.cli.audit_events.ACCOUNTS_AHEAD", ahead)
    path, _, ledger = exported
    lines = read_lines(path)
    report, _ = _audit(tmp_path, lines, signer=ledger.signer.address)
    assert report.ok, report.problems
    i = next(i for i, x in enumerate(lines) if '"topic":"basis:Account.Credited.v1"' in x)
    forged = [*lines[:i], lines[i].replace('"source":"grant"', '"source":"gift"', 1), *lines[i + 1:]]
    report, _ = _audit(tmp_path, rechain(forged, i), signer=ledger.signer.address)
    assert any(p.startswith("the replay of the export failed") and "credit source must be one of" in p
               for p in report.problems), report.problems


def test_accounts_folded_as_the_pages_go_by_equal_their_rebuild_from_the_store(exported, tmp_path, monkeypatch):
    """The projection's process folds the account aggregates page by page (``AccountFold``); the money
    checks compare these with the views. They are each account rebuilt by the repository."""
    import basis.cli.audit_events as audit_module
    import basis.ledger.audit as audit_checks
    from basis.ledger.export_replay import ExportReplay

    folded, rebuilt = [], []
    account_views, check_money = ExportReplay.account_views, audit_checks._check_money

    def keep_folded(self):
        folded.append(account_views(self))
        return folded[-1]

    def rebuild_too(replay, snapshot, report, views):
        rebuilt.append(audit_module.account_views_ahead(snapshot.store, snapshot))
        return check_money(replay, snapshot, report, views)

    monkeypatch.setattr(ExportReplay, "account_views", keep_folded)
    monkeypatch.setattr(audit_checks, "_check_money", rebuild_too)
    path, _, ledger = exported
    report, _ = audit_events([path], signer=ledger.signer.address)
    assert report.ok, report.problems
    assert folded[0] and folded[0] == rebuilt[0]  # every account folded, each as the repository rebuilds it


def test_an_account_fold_that_cannot_read_a_page_gives_nothing_and_never_raises(settings, tmp_path):
    """The fold runs beside the projection on its process: a page it cannot read must not fail the
    projection, and then nothing it folded is used (the checks rebuild every account)."""
    from basis.ledger.account_fold import AccountFold
    from basis.ledger.store import LedgerStore

    def unreadable_page():
        yield from ()
        raise sqlite3.OperationalError("disk I/O error")

    store = LedgerStore(settings.event_store_env())
    try:
        fold = AccountFold(store, 10)
        fold.page(unreadable_page())
        assert fold.failed and fold.result() is None
    finally:
        store.close()


def test_a_projection_that_fails_leaves_its_account_fold_unused(settings, tmp_path):
    """The projection's process folds the accounts from the states it decodes for the views: once a
    page fails there, the pages after are not folded, so nothing folded is used."""
    from basis.ledger.account_fold import AccountFold
    from basis.ledger.export_replay import _PageProjection
    from basis.ledger.store import LedgerStore

    store = LedgerStore(settings.event_store_env())
    try:
        fold = AccountFold(store, 10)
        projection = _PageProjection(store, str(tmp_path / "events.sqlite3"), "no_such_table",
                                     tmp_path / "views.sqlite3", fold)
        projection.project(1, 5000)
        assert isinstance(projection.finish(), sqlite3.OperationalError)
        assert fold.failed and fold.result() is None
    finally:
        store.close()


def test_canonical_form_is_jcs_with_exact_integers():
    cases = [{"b": 1, "a": [True, None, "x\u2028y\n\"\\"]}, {"é": "ü", "e": "\U0001f600", "\ue000": 1, "\U0001f600": 2},
             {"f": [0.1, 1e21, 1e-7, -0.0, 123.0, 5e-324, 1.7976931348623157e308]}, "\x7f\x1f", 2**53 - 1]
    for value in cases:
        assert canonical(value).encode() == rfc8785.dumps(value), value
    assert canonical({"amount": 10**24}) == '{"amount":1000000000000000000000000}'
    with pytest.raises(ValueError):
        canonical(math.inf)


def test_duplicated_lines_and_foreign_types_are_named_and_never_replayed(exported, tmp_path):
    path, _, _ = exported
    lines = read_lines(path)
    # The same event twice (a copy appended, rechained so only the duplicate is wrong).
    report, summary = _audit(tmp_path, rechain([*lines, lines[3]], len(lines)))
    assert not report.ok and summary["first_bad_position"] == position_of(lines[3])
    assert any("appears twice" in p for p in report.problems), report.problems
    # A type the ledger does not have is refused before eventsourcing could import it.
    opened = json.loads(lines[0])
    assert opened["topic"] == "basis:Account.Opened.v1"
    foreign = dict(opened, position=position_of(lines[-1]) + 1, stream=str(uuid.uuid4()))
    foreign["state"] = dict(opened["state"], originator_topic="subprocess:Popen")
    unknown = dict(foreign, position=foreign["position"] + 1, stream=str(uuid.uuid4()), topic="os:system")
    report, summary = _audit(tmp_path, rechain([*lines, json.dumps(foreign), json.dumps(unknown)], len(lines)))
    assert summary["first_bad_position"] == foreign["position"]
    assert report.problems[:2] == [
        f"position {foreign['position']}: names the aggregate type 'subprocess:Popen', which the ledger does not "
        "have; not replayed",
        f"position {unknown['position']}: topic 'os:system' is unknown to this auditor (a newer ledger?); its lines "
        "are not replayed"]
    assert report.problems[2:] == [] and summary["events"] == len(lines) + 2


def test_a_stream_version_repeated_at_another_position_is_named_and_never_counted(exported, tmp_path):
    """A receipt's line copied to a new position (rechained): the copy is named and neither replayed
    nor counted, though the receipt checks saw it go by (the import builds the stream index last)."""
    path, _, ledger = exported
    lines = read_lines(path)
    honest, _ = _audit(tmp_path, lines, signer=ledger.signer.address)
    i = next(i for i, x in enumerate(lines) if '"topic":"basis:Job.ReceiptIssued.v1"' in x)
    copy = dict(json.loads(lines[i]), position=position_of(lines[-1]) + 1)
    report, summary = _audit(tmp_path, rechain([*lines, json.dumps(copy)], len(lines)), signer=ledger.signer.address)
    assert honest.ok and honest.receipts > 0
    assert summary["first_bad_position"] == copy["position"] and summary["events"] == len(lines) + 1
    assert report.problems == [f"position {copy['position']}: stream {copy['stream'].replace('-', '')} version "
                               f"{copy['version']} or this position appears twice"]
    assert (report.receipts, report.charged_total) == (honest.receipts, honest.charged_total)


def test_a_stream_version_missing_or_after_the_next_is_named_at_its_position(exported, tmp_path):
    """Rechained exports whose stream versions do not run 1, 2, 3 … in log order: a job's version 2
    dropped (its version 3 named), and a job's versions 2 and 3 exchanged (the 3, which now comes
    before its 2, named; the 2 follows the 1 and is not)."""
    path, _, ledger = exported
    lines = read_lines(path)

    def missing(line: dict, version: int) -> str:
        return (f"position {line['position']}: stream {line['stream'].replace('-', '')} has version {version} "
                f"without version {version - 1} before it")

    i = next(i for i, x in enumerate(lines) if '"topic":"basis:Job.' in x and json.loads(x)["version"] == 2)
    job = json.loads(lines[i])["stream"]
    third = next(j for j, x in enumerate(lines) if json.loads(x)["stream"] == job and json.loads(x)["version"] == 3)
    dropped = rechain([*lines[:i], *lines[i + 1:]], i)
    report, summary = _audit(tmp_path, dropped, signer=ledger.signer.address)
    named = json.loads(dropped[third - 1])
    assert missing(named, 3) in report.problems, report.problems
    assert summary["first_bad_position"] == named["position"]

    second, later = json.loads(lines[i]), json.loads(lines[third])
    second["version"], later["version"] = 3, 2
    exchanged = [*lines]
    exchanged[i], exchanged[third] = json.dumps(second), json.dumps(later)
    report, summary = _audit(tmp_path, rechain(exchanged, i), signer=ledger.signer.address)
    assert missing(second, 3) in report.problems, report.problems
    assert not any(p.startswith(f"position {later['position']}: stream ") for p in report.problems)
    assert summary["first_bad_position"] == second["position"]


@pytest.mark.postgres
def test_an_export_of_a_postgresql_ledger_audits_the_same_way(pg_dsn, tmp_path):
    settings = Settings(home=tmp_path / "pg-home", database_url=pg_dsn)
    ledger = Ledger(settings)
    try:
        fill(ledger)
        path = tmp_path / "pg.jsonl"
        with open(path, "w") as fh:
            point = export(ledger.store, fh)
        signer = ledger.signer.address
    finally:
        ledger.close()
    lines = read_lines(path)
    assert lines == rechain(lines) and point.position == position_of(lines[-1])
    report, summary = audit_events([path], signer=signer)
    assert report.ok, report.problems
    assert report.receipts == 3 and summary["events"] == len(lines)
