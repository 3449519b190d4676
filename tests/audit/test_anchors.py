"""Ledger heads anchored on chain by settlement, and `basis audit --events --chain` against them
(real anvil, real contracts, real SQLite ledger)."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from basis.cli.audit_events import audit_events
from basis.ledger.export import export, head_at
from basis.ledger.settlement import batch_aggregate_id
from basis.settlement.anchors import chain_anchors
from basis.settlement.batches import Settler
from tests.audit.helpers import WORKER, basis, fill, position_of, read_lines, rechain, write_lines
from tests.settlement.helpers import run_job

pytestmark = pytest.mark.chain


def settle(env, **kw):
    return Settler(env.ledger, env.chain, env.operator_key, reader=env.reader, **kw).settle_once()


def two_batches(env) -> None:
    fill(env.ledger)
    assert settle(env)["status"] == "confirmed"
    alice = env.ledger.open_account("alice")
    run_job(env.ledger, alice, worker=WORKER)
    assert settle(env)["status"] == "confirmed"
    run_job(env.ledger, alice, worker=None)  # after the last anchor


def export_to(env, path: Path) -> list[str]:
    with open(path, "w") as fh:
        export(env.ledger.store, fh)
    return read_lines(path)


def audit_file(env, tmp_path: Path, lines: list[str], **kw):
    return audit_events([write_lines(tmp_path / "audited.jsonl", lines)], signer=env.ledger.signer.address,
                        chain=True, rpc=env.anvil.rpc_url, vault=env.chain.vault, **kw)


def test_export_on_one_home_passes_audit_events_chain_in_another_folder(env, tmp_path):
    two_batches(env)
    anchors = chain_anchors(env.chain)
    assert len(anchors) == 2 and anchors[0].position < anchors[1].position
    env.ledger.close()
    export_path = tmp_path / "ledger.jsonl"
    with open(export_path, "w") as fh:
        proc = basis(["ledger", "export"], env.settings.home, stdout=fh)
    assert proc.returncode == 0, proc.stderr
    lines = read_lines(export_path)
    heads = {position_of(x): json.loads(x)["head"] for x in lines}
    assert [heads[a.position] for a in anchors] == [a.head for a in anchors]
    claims = [json.loads(x)["state"] for x in lines if '"topic":"basis:SettlementBatch.Confirmed.v1"' in x]
    assert [(c["anchor_position"], c["anchor_head"]) for c in claims] == [(a.position, a.head) for a in anchors]
    # each settled receipt was proposed first (Job.Batched): the audit below replays both
    batched = [x for x in lines if '"topic":"basis:Job.Batched.v1"' in x]
    assert len(batched) == sum(1 for x in lines if '"topic":"basis:Job.Settled.v1"' in x) > 0

    home = env.settings.home
    moved = home.with_name("operator-away")
    shutil.move(home, moved)  # no access to the operator's files while the auditor works
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    shutil.copy(export_path, auditor / "ledger.jsonl")
    try:
        proc = basis(["audit", "--events", "ledger.jsonl", "--chain", "--rpc", env.anvil.rpc_url, "--vault",
                      env.chain.vault, "--json"], auditor / "empty-home", cwd=auditor)
    finally:
        shutil.move(moved, home)
        env.ledger = type(env.ledger)(env.settings)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["problems"] == []
    ex = report["export"]
    assert ex["anchors"] == 2 and ex["anchored_through"] == anchors[-1].position
    assert ex["unanchored"] == sum(1 for p in heads if p > anchors[-1].position) > 0
    assert ex["first_bad_position"] is None


def test_a_line_appended_after_the_last_anchor_and_claimed_anchored_is_named(env, tmp_path):
    two_batches(env)
    lines = export_to(env, tmp_path / "ledger.jsonl")
    last = position_of(lines[-1])
    # Appended, not claimed: reported as not anchored yet, which is no failure.
    credit = next(x for x in reversed(lines) if '"topic":"basis:Account.Credited.v1"' in x)
    alice = json.loads(credit)["stream"]
    alice_versions = [json.loads(x)["version"] for x in lines if json.loads(x)["stream"] == alice]
    forged = json.loads(credit)
    forged.update(position=last + 1, version=max(alice_versions) + 1)
    forged["state"]["amount"] = 10**30
    forged["state"]["external_id"] = "forged"
    appended = rechain([*lines, json.dumps(forged)], len(lines))
    report, summary = audit_file(env, tmp_path, appended)
    assert report.ok, report.problems
    assert summary["unanchored"] >= 2 and summary["anchored_through"] < last + 1

    # Claimed anchored: a settlement confirmation that says the chain anchored it.
    proposed = json.loads(next(x for x in reversed(lines) if '"topic":"basis:SettlementBatch.Proposed.v1"' in x))
    confirmed = json.loads(next(x for x in reversed(lines) if '"topic":"basis:SettlementBatch.Confirmed.v1"' in x))
    batch_id = "0x" + uuid.uuid4().hex * 2
    stream = str(batch_aggregate_id(batch_id))
    proposed.update(position=last + 2, stream=stream, version=1)
    proposed["state"]["batch_id"] = batch_id
    proposed["state"]["jobs"] = []
    confirmed.update(position=last + 3, stream=stream, version=2)
    confirmed["state"]["anchor_position"] = last + 1
    confirmed["state"]["anchor_head"] = json.loads(appended[-1])["head"]
    claimed = rechain([*appended, json.dumps(proposed), json.dumps(confirmed)], len(appended))
    report, summary = audit_file(env, tmp_path, claimed)
    assert not report.ok
    assert summary["first_bad_position"] == last + 1
    assert report.problems[0] == (f"position {last + 1}: the export claims it anchored (position {last + 3}); "
                                  "no anchor on chain names it")


def test_an_anchored_head_that_disagrees_with_the_export_is_named(env, tmp_path):
    two_batches(env)
    lines = export_to(env, tmp_path / "ledger.jsonl")
    anchors = chain_anchors(env.chain)
    report, summary = audit_file(env, tmp_path, lines)
    assert report.ok, report.problems

    # History rewritten before the first anchor, every head recomputed and the ledger's own anchor
    # records rewritten to match: consistent on its own, refuted by the chain.
    i = next(i for i, x in enumerate(lines) if '"topic":"basis:Account.Credited.v1"' in x)
    assert position_of(lines[i]) < anchors[0].position
    forged = [*lines[:i], lines[i].replace('"memo":"launch promotion"', '"memo":"rewritten"'), *lines[i + 1:]]
    forged = rechain(forged, i)
    heads = {position_of(x): json.loads(x)["head"] for x in forged}
    for k, x in enumerate(forged):
        obj = json.loads(x)
        if obj["topic"] == "basis:SettlementBatch.Confirmed.v1":
            obj["state"]["anchor_head"] = heads[obj["state"]["anchor_position"]]
            forged = rechain([*forged[:k], json.dumps(obj), *forged[k + 1:]], k)
            heads = {position_of(y): json.loads(y)["head"] for y in forged}
    alone, _ = audit_events([write_lines(tmp_path / "alone.jsonl", forged)], signer=env.ledger.signer.address)
    assert alone.ok, alone.problems  # nothing inside the file gives it away
    report, summary = audit_file(env, tmp_path, forged)
    assert not report.ok
    assert summary["first_bad_position"] == anchors[0].position
    assert report.problems[0].startswith(f"position {anchors[0].position}: anchored head on chain {anchors[0].head}")

    # An export cut before the latest anchor does not reach it.
    cut = [x for x in lines if position_of(x) < anchors[1].position]
    report, summary = audit_file(env, tmp_path, cut)
    assert any(p.startswith(f"position {anchors[1].position}: anchored on chain") and "does not reach" in p
               for p in report.problems), report.problems


@pytest.mark.parametrize("stage", ["submitted", "sent", "mined"])
def test_a_crash_mid_settlement_leaves_every_anchor_at_a_committed_position(env, tmp_path, stage):
    fill(env.ledger)

    class Crash(Exception):
        pass

    def hook(at: str) -> None:
        if at == stage:
            raise Crash(at)

    with pytest.raises(Crash):
        settle(env, hook=hook)
    env.reopen()
    run_job(env.ledger, env.ledger.open_account("alice"), worker=WORKER)  # events while the batch hangs
    assert settle(env)["status"] == "confirmed"
    run_job(env.ledger, env.ledger.open_account("alice"), worker=None)
    assert settle(env)["status"] == "confirmed"
    anchors = chain_anchors(env.chain)
    assert len(anchors) == 2
    last = env.ledger.store.recorder.max_notification_id()
    for a in anchors:
        point = head_at(env.ledger.store, a.position)
        assert point.position == a.position <= last, "an anchor names a position the ledger never committed"
        assert point.head_hex == a.head
    report, summary = audit_file(env, tmp_path, export_to(env, tmp_path / "ledger.jsonl"))
    assert report.ok, report.problems
    assert summary["anchors"] == 2
