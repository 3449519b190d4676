"""`basis keys create|list|set|revoke` on a real SQLite ledger under a temporary BASIS_HOME."""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from basis.cli.main import app
from basis.config import Settings
from basis.ledger.service import Ledger

runner = CliRunner()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("BASIS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BASIS_DATABASE_URL", raising=False)
    return tmp_path / "home"


def _keys(*args):
    result = runner.invoke(app, ["keys", *args])
    return result.exit_code, result.stdout.strip(), result.output


def test_create_list_set_and_revoke(home):
    code, key, _ = _keys("create", "--account", "alice", "--name", "ci", "--cap", "1000", "--rpm", "60")
    assert code == 0 and key.startswith("sk-basis-")
    code, out, _ = _keys("list", "--account", "alice", "--json")
    listed = json.loads(out)
    assert code == 0 and listed["cap"] == "1000" and listed["requests_per_minute"] == 60 and listed["name"] == "ci"
    assert key not in out  # the key is printed once, at creation
    code, out, _ = _keys("set", listed["id"], "--cap", "none", "--tpm", "500")
    assert code == 0 and "no cap" in out and "500 tokens per minute" in out
    code, out, _ = _keys("revoke", key, "--reason", "leaked")  # by the key itself
    assert code == 0 and "REVOKED" in out
    ledger = Ledger(Settings())
    try:
        assert ledger.authenticate(key) is None
    finally:
        ledger.close()
    code, out, _ = _keys("list", "--account", "alice", "--active")
    assert code == 0 and out == ""


@pytest.mark.parametrize("args", [
    ["create", "--account", "bob", "--cap", "-1"],
    ["create", "--account", "bob", "--cap", "1.5"],
    ["create", "--account", "bob", "--rpm", "0"],
    ["create", "--account", "", "--tpm", "5"],
    ["revoke", "not-a-key"],
    ["revoke", str(uuid.uuid4())],
    ["set", str(uuid.uuid4())],
])
def test_bad_input_is_a_clear_error_not_a_traceback(home, args):
    result = runner.invoke(app, ["keys", *args])
    assert result.exit_code == 2, result.output
    assert "error" in result.output and "Traceback" not in result.output
