"""Tampering is caught and named: `basis audit` (the real CLI, on a real SQLite store) exits non-zero
and says what differs — a receipt edited inside the events table, a row edited in the views,
a receipt signed by another key."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from basis.config import Settings
from basis.domain.receipt import receipt_hash
from basis.domain.signing import ReceiptSigner
from basis.ledger.audit import audit
from basis.ledger.projections import Projector
from basis.ledger.service import Ledger
from tests.ledger.helpers import run_job

OTHER_KEY = "0x" + "42" * 32


def basis_audit(home: Path) -> tuple[int, dict]:
    """Run `basis audit --json` as an operator would, with BASIS_HOME pointing at the store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASIS_")}
    env["BASIS_HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-m", "basis.cli.main", "audit", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def store_home(settings: Settings) -> tuple[Settings, dict[str, str]]:
    """A store with contributor, gateway, failed and cancelled jobs, projected into live views."""
    ledger = Ledger(settings)
    account_id = ledger.open_account("alice")
    ledger.grant("alice", 10**18)
    jobs = {}
    jobs["contributor"], _ = run_job(ledger, account_id, output_tokens=42)
    jobs["gateway"], _ = run_job(ledger, account_id, served_by="gateway", output_tokens=7)
    jobs["failed"], _ = run_job(ledger, account_id, outcome="failed", output_tokens=3)
    jobs["cancelled_empty"], _ = run_job(ledger, account_id, outcome="cancelled", output_tokens=0)
    projector = Projector(ledger.store, settings.views_path)
    projector.catch_up()
    projector.stop()
    ledger.close()
    return settings, {k: str(v) for k, v in jobs.items()}


def _edit_receipt_event(settings: Settings, job_id: str, edit) -> None:
    """Rewrite the JSON state of a job's ReceiptIssued event in place, as an attacker with file access could."""
    db = sqlite3.connect(settings.events_path)
    key = uuid.UUID(job_id).hex
    row = db.execute("SELECT rowid, state FROM stored_events WHERE originator_id = ? AND topic = ?",
                     (key, "basis:Job.ReceiptIssued.v1")).fetchone()
    assert row is not None, "no ReceiptIssued event to tamper with"
    state = json.loads(row[1])
    edit(state)
    db.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (json.dumps(state).encode(), row[0]))
    db.commit()
    db.close()


def test_untouched_store_passes_the_cli_audit(store_home):
    settings, _ = store_home
    rc, report = basis_audit(settings.home)
    assert rc == 0 and report["ok"] and report["problems"] == []
    assert report["receipts"] == 3 and report["open_jobs"] == 0


@pytest.mark.parametrize("project_after_tamper", [False, True], ids=["views-before", "views-after"])
@pytest.mark.parametrize("field", ["output_tokens", "charged"])
def test_an_edited_receipt_field_in_the_events_table_is_named(store_home, field, project_after_tamper):
    settings, jobs = store_home
    job = jobs["contributor"]
    if project_after_tamper:  # the live views were built from the forged log: only recomputation can tell
        settings.views_path.unlink()
        for suffix in ("-wal", "-shm"):
            Path(str(settings.views_path) + suffix).unlink(missing_ok=True)

    def bump(state: dict) -> None:
        core = state["core"]
        if field == "output_tokens":
            core["output_tokens"] += 1
        else:
            core["charged"] = str(int(core["charged"]) + 1)

    _edit_receipt_event(settings, job, bump)
    rc, report = basis_audit(settings.home)
    assert rc != 0 and not report["ok"]
    named = [p for p in report["problems"] if p.startswith(f"receipt {job}:")]
    assert any("charged" in p and "recomputed" in p for p in named), report["problems"]
    assert any(p.startswith(f"receipt {job}: hash ") for p in named), report["problems"]
    if field == "charged":  # the account's spend (from its own stream) no longer matches its receipts
        assert any("account alice: spent" in p for p in report["problems"]), report["problems"]
    if not project_after_tamper:
        assert any(p.startswith("view 'receipts' differs from its replay") for p in report["problems"])


def test_a_rehashed_forged_receipt_fails_its_signature(store_home):
    """A forger who also recomputes charge, reward and hash still cannot sign as the operator."""
    settings, jobs = store_home
    job = jobs["contributor"]

    def forge(state: dict) -> None:
        core = state["core"]
        pw, ow = int(core["prompt_weight"]), int(core["output_weight"])
        core["output_tokens"] += 1
        charged = (core["prompt_tokens"] * pw + core["output_tokens"] * ow) * core["multiplier_bps"] // 10_000
        core["charged"], core["reward"] = str(charged), str(charged * core["reward_bps"] // 10_000)
        state["hash"] = receipt_hash(core)

    _edit_receipt_event(settings, job, forge)
    rc, report = basis_audit(settings.home)
    assert rc != 0
    assert any(p.startswith(f"receipt {job}: signature recovers to") for p in report["problems"]), report
    assert any("account alice: spent" in p for p in report["problems"]), report["problems"]


def test_an_edited_view_row_names_the_view(store_home):
    settings, jobs = store_home
    db = sqlite3.connect(settings.views_path)
    db.execute("UPDATE accounts SET spent_granted = '1' WHERE name = 'alice'")
    db.commit()
    db.close()
    rc, report = basis_audit(settings.home)
    assert rc != 0
    assert any(p.startswith("view 'accounts' differs from its replay") for p in report["problems"]), report
    assert not any(p.startswith("view 'receipts'") for p in report["problems"])

    db = sqlite3.connect(settings.views_path)
    db.execute("UPDATE receipts SET reward = '0' WHERE job_id = ?", (jobs["contributor"],))
    db.commit()
    db.close()
    rc, report = basis_audit(settings.home)
    assert rc != 0
    assert any(p.startswith("view 'receipts' differs from its replay") for p in report["problems"]), report


@pytest.mark.parametrize("claims", ["other-signer", "operator-signer"])
def test_a_receipt_signed_by_another_key_is_named(store_home, claims):
    settings, jobs = store_home
    job = jobs["gateway"]
    other = ReceiptSigner(OTHER_KEY)
    operator = ReceiptSigner(settings.operator_key()).address

    def resign(state: dict) -> None:
        state["signature"] = other.sign_hash(state["hash"])
        state["signer"] = other.address if claims == "other-signer" else operator

    _edit_receipt_event(settings, job, resign)
    rc, report = basis_audit(settings.home)
    assert rc != 0
    if claims == "other-signer":  # self-consistent, but not the operator's key
        expected = f"receipt {job}: signed by {other.address}, not the operator {operator}"
    else:
        expected = f"receipt {job}: signature recovers to {other.address}, not {operator}"
    assert expected in report["problems"], report["problems"]


def test_in_process_audit_names_the_same_signer_mismatch(store_home):
    settings, jobs = store_home
    other = ReceiptSigner(OTHER_KEY)
    _edit_receipt_event(settings, jobs["failed"], lambda s: s.update(signature=other.sign_hash(s["hash"]),
                                                                      signer=other.address))
    ledger = Ledger(settings)
    try:
        report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
    finally:
        ledger.close()
    assert not report.ok
    assert any(f"receipt {jobs['failed']}: signed by {other.address}" in p for p in report.problems)


def test_a_lifecycle_committed_in_one_group_commit_projects_and_audits(settings):
    """Commands submitted without waiting (a pipelining client) share one group commit."""
    ledger = Ledger(settings)
    try:
        account_id = ledger.open_account("pipelined")
        ledger.grant("pipelined", 10**18)
        job = uuid.uuid4()
        w = ledger.writer
        gate = threading.Event()
        blocker = w.submit(lambda uow: gate.wait(30))  # hold the writer so the next three share one batch
        futures = [w.submit(ledger.accept_job(job_id=job, account_id=account_id, model="basis-default",
                                              prompt_tokens=3, max_output_tokens=9)),
                   w.submit(ledger.assign_job(job, "gateway", None)),
                   w.submit(ledger.finish_job(job, outcome="completed", output_tokens=4))]
        gate.set()
        assert blocker.result() is True
        receipt = [f.result() for f in futures][-1]
        assert ledger.get(account_id).reserved == 0 and receipt is not None
        projector = Projector(ledger.store, settings.views_path)
        projector.catch_up()
        projector.stop()
        report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
        assert report.ok and report.receipts == 1, report.problems
    finally:
        ledger.close()
