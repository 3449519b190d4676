"""`basis workers suspend|reinstate` and `basis verifier run`: the operator's hand is recorded, and
bad input gets a clear error with nothing recorded (the event log does not move)."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from basis.cli.main import app
from basis.config import Settings
from basis.ledger import ids
from basis.ledger.service import Ledger
from tests.verification.helpers import HONEST, POLICY, contributor_job

runner = CliRunner()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A store where HONEST has served one job (and is therefore a known worker)."""
    for var in ("BASIS_DATABASE_URL", "BASIS_VERIFIER_SCORER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BASIS_HOME", str(tmp_path / "home"))
    settings = Settings(home=tmp_path / "home")
    ledger = Ledger(settings, verification=POLICY)
    ledger.run(ledger.register_worker(HONEST, ["basis-default"]))  # as the gateway does at connect
    account_id = ledger.open_account("alice")
    ledger.grant("alice", 10**18)
    job_id, _ = contributor_job(ledger, account_id, HONEST)
    ledger.close()
    return settings, job_id


def head(settings: Settings) -> int:
    db = sqlite3.connect(settings.events_path)
    try:
        return db.execute("SELECT MAX(rowid) FROM stored_events").fetchone()[0]
    finally:
        db.close()


@pytest.mark.parametrize("args, message", [
    (["workers", "suspend", "0x1234"], "is not a worker address"),
    (["workers", "suspend", "alice"], "is not a worker address"),
    (["workers", "suspend", "0x" + "zz" * 20], "is not a worker address"),
    (["workers", "suspend", HONEST, "--reason", "   "], "--reason must not be empty"),
    (["workers", "suspend", HONEST, "--reason", "x" * 501], "at most 500"),
    (["workers", "suspend", "0x" + "99" * 20], "has ever connected"),
    (["workers", "reinstate", HONEST], "is not suspended"),
    (["workers", "reinstate", "not-an-address"], "is not a worker address"),
    (["verifier", "run", "--once", "--scorer", "no colon here"], "MODULE:CALLABLE"),
    (["verifier", "run", "--once", "--scorer", "tests.verification.doubles:nope"], "--scorer"),
])
def test_bad_input_is_refused_and_records_nothing(home, args, message):
    settings, _ = home
    before = head(settings)
    result = runner.invoke(app, args)
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output
    assert head(settings) == before


def test_a_malformed_store_url_is_a_clear_error(home, monkeypatch):
    settings, _ = home
    before = head(settings)
    monkeypatch.setenv("BASIS_DATABASE_URL", "mysql://nobody@nowhere/basis")
    for args in (["verifier", "run", "--once"], ["workers", "suspend", HONEST]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "BASIS_DATABASE_URL" in result.output, result.output
    assert head(settings) == before


def test_suspend_then_reinstate_is_recorded(home):
    settings, job_id = home
    result = runner.invoke(app, ["workers", "suspend", HONEST.upper().replace("0X", "0x"), "--reason", "report 9"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out == {"worker": HONEST, "status": "suspended", "reason": "report 9", "rewards_forfeited": 1}
    again = runner.invoke(app, ["workers", "suspend", HONEST])
    assert again.exit_code == 1 and "already suspended" in again.output
    ledger = Ledger(settings)
    try:
        worker = ledger.get(ids.worker_id(HONEST))
        assert worker.suspended == {"by": "operator", "reason": "report 9", "evidence": []}
        assert ledger.get(job_id).forfeit["reason"] == "worker suspended"
    finally:
        ledger.close()
    result = runner.invoke(app, ["workers", "reinstate", HONEST, "--reason", "appeal upheld"])
    assert result.exit_code == 0 and json.loads(result.stdout)["status"] == "active"
    ledger = Ledger(settings)
    try:
        assert ledger.get(ids.worker_id(HONEST)).suspended is None
    finally:
        ledger.close()
