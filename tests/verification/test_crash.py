"""Crash safety of verification: the verifier process SIGKILLed mid-check, then the gateway
restarted (its verifier pool) racing a standalone verifier, with verdicts pending: no verdict
lost or applied twice, no refund twice, and settlement waits for every verdict, never skips."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from basis.engines.instant import InstantEngine
from basis.gateway.runtime import GatewayOptions
from basis.ledger.audit import audit
from basis.ledger.service import Ledger
from basis.ledger.settlement import batch_aggregate_id
from basis.models import load_bindings
from basis.settlement.batches import propose_batch
from tests.gateway.harness import REPO, Gateway
from tests.verification.helpers import CHEAT, HONEST, POLICY, contributor_job

VAULT, DIST = "0x" + "ee" * 20, "0x" + "dd" * 20


def verifier_cmd(home: Path, scorer: str, *extra: str, **env_extra: str) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASIS_")}
    env.update(BASIS_HOME=str(home), PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO}", **env_extra)
    return [sys.executable, "-m", "basis.cli.main", "verifier", "run", "--scorer", scorer, *extra], env


def verdict_counts(home: Path) -> dict[str, int]:
    db = sqlite3.connect(home / "events.sqlite3")
    rows = db.execute("SELECT originator_id, COUNT(*) FROM stored_events WHERE topic = 'basis:Job.Verified.v1'"
                      " GROUP BY originator_id").fetchall()
    db.close()
    return {r[0]: r[1] for r in rows}


def refund_count(home: Path) -> int:
    db = sqlite3.connect(home / "events.sqlite3")
    n = db.execute("SELECT COUNT(*) FROM stored_events WHERE topic = 'basis:CreditRef.Recorded.v1'"
                   " AND CAST(state AS TEXT) LIKE '%\"refund\"%'").fetchone()[0]
    db.close()
    return n


@pytest.fixture
def pending(settings):
    """Four checked jobs awaiting verdicts: two of an honest instant worker, two of a cheat."""
    canned = InstantEngine(load_bindings()["basis-default"])._canned("basis-default")[1]
    ledger = Ledger(settings, verification=POLICY)
    account_id = ledger.open_account("alice")
    ledger.grant("alice", 10**18)
    jobs = {"honest": [], "cheat": []}
    for _ in range(2):
        jobs["honest"].append(str(contributor_job(ledger, account_id, HONEST, output_ids=canned[:12])[0]))
        jobs["cheat"].append(str(contributor_job(ledger, account_id, CHEAT, output_ids=[7] * 12)[0]))
    assert all(ledger.get(__import__("uuid").UUID(j)).awaiting_verdict for v in jobs.values() for j in v)
    ledger.close()
    return settings, jobs


def test_killed_mid_check_then_gateway_restart_applies_each_verdict_once(pending, monkeypatch):
    settings, jobs = pending
    home = settings.home
    marker = home / "scoring.started"
    cmd, env = verifier_cmd(home, "tests.verification.doubles:slow_canned", BASIS_TEST_SLEEP="120",
                            BASIS_TEST_MARKER=str(marker))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the verifier never started a check"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-check: scoring has begun, no verdict yet
    proc.wait(30)
    assert verdict_counts(home) == {} and refund_count(home) == 0

    # Settlement waits: nothing pending can be proposed.
    ledger = Ledger(settings)
    every = jobs["honest"] + jobs["cheat"]
    assert ledger.run(propose_batch(31337, VAULT, DIST, every)) is None
    ledger.close()

    # The gateway restarts with its verifier pool, while a standalone verifier runs too.
    monkeypatch.setenv("BASIS_VERIFIER_SCORER", "tests.verification.doubles:canned")
    gw = Gateway(home, GatewayOptions(heartbeat_interval=1.0, verifier="pool", ledger_writer="thread"))
    try:
        assert gw.runtime.verification.enabled, "the reference model is not installed here"
        cmd, env = verifier_cmd(home, "tests.verification.doubles:canned", "--once")
        racer = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        assert racer.returncode == 0, racer.stderr
        gw.until(lambda: len(verdict_counts(home)) == 4, what="every pending job judged", timeout=120)
        gw.views_caught_up()
        reader = gw.runtime.reader()
        assert reader.pending_checks() == []
        for j in jobs["honest"]:
            assert reader.receipt(j)["verification"]["verdict"] == "passed"
        for j in jobs["cheat"]:
            env_ = reader.receipt(j)
            assert env_["verification"]["verdict"] == "failed" and env_["reward_forfeited"]
        assert reader.worker_status(CHEAT)["status"] == "suspended"
        batch_id = gw.ledger.run(propose_batch(31337, VAULT, DIST, every))
        batch = gw.ledger.get(batch_aggregate_id(batch_id))
        assert sorted(e["job_id"] for e in batch.jobs) == sorted(every)
        assert dict(batch.rewards).keys() == {HONEST}
    finally:
        gw.close()
    # Exactly one verdict per job, one refund per failed job, however many verifiers ran.
    assert sorted(verdict_counts(home).values()) == [1, 1, 1, 1]
    assert refund_count(home) == 2
    # A further pass finds nothing to do and records nothing.
    head = sqlite3.connect(home / "events.sqlite3").execute("SELECT MAX(rowid) FROM stored_events").fetchone()[0]
    cmd, env = verifier_cmd(home, "tests.verification.doubles:canned", "--once")
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert json.loads(again.stdout) == {"verdicts": 0, "errors": 0}, again.stderr
    assert sqlite3.connect(home / "events.sqlite3").execute(
        "SELECT MAX(rowid) FROM stored_events").fetchone()[0] == head
    ledger = Ledger(settings)
    try:
        report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
        assert report.ok, report.problems
    finally:
        ledger.close()


def test_a_verifier_that_cannot_score_holds_the_jobs(pending):
    """The reference is down: the jobs stay held (no verdict, no failure, settlement waits)."""
    settings, jobs = pending
    cmd, env = verifier_cmd(settings.home, "tests.verification.doubles:broken", "--once")
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"verdicts": 0, "errors": 4}
    assert verdict_counts(settings.home) == {}
    ledger = Ledger(settings)
    try:
        assert ledger.run(propose_batch(31337, VAULT, DIST, jobs["honest"] + jobs["cheat"])) is None
    finally:
        ledger.close()
