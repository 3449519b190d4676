"""Start-up mistakes an operator makes get a clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import logging
import socket
from importlib import resources

import pytest
from typer.testing import CliRunner

from basis.cli.main import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _restore_logging():
    """`basis serve` configures the root logger (JSON on stderr); CliRunner's stderr closes after
    each invocation, so put the root logger back for the tests that follow."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _one_line_error_panels(monkeypatch):
    """Rich wraps the error panel at the terminal width; a message naming a long tmp_path (pytest-xdist
    adds popen-gwN/) would split across lines, so give the panel room to keep each message whole."""
    monkeypatch.setenv("COLUMNS", "400")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("BASIS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_port_in_use(home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = runner.invoke(app, ["serve", "--port", str(port)])
    assert result.exit_code == 2 and "already in use" in result.output


def test_missing_model_file(home, tmp_path, monkeypatch):
    table = json.loads(resources.files("basis.domain").joinpath("pricing_table.json").read_text())
    table["models"][0]["backing"]["gguf"] = str(tmp_path / "missing.gguf")
    (tmp_path / "table.json").write_text(json.dumps(table))
    monkeypatch.setenv("BASIS_PRICING_TABLE", str(tmp_path / "table.json"))
    result = runner.invoke(app, ["serve", "--port", "0"])
    assert result.exit_code == 2 and "does not exist" in result.output and "missing.gguf" in result.output


def test_wrong_key_file(home, tmp_path):
    (tmp_path / "bad.key").write_text("not a key\n")
    result = runner.invoke(app, ["worker", "run", "--key-file", str(tmp_path / "bad.key")])
    assert result.exit_code == 2 and "private key" in result.output


def test_unreachable_rpc(home):
    home.mkdir(parents=True)
    manifest = {"version": 1, "chain_id": 31337, "deploy_block": 1, "contracts": {
        "token": {"address": "0x5FbDB2315678afecb367f032d93F642f64180aa3", "stand_in": True},
        "vault": {"address": "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"},
        "distributor": {"address": "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"}}}
    (home / "deployment.json").write_text(json.dumps(manifest))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    result = runner.invoke(app, ["serve", "--port", "0", "--rpc", f"http://127.0.0.1:{dead}"])
    assert result.exit_code == 2 and "cannot reach the chain" in result.output
