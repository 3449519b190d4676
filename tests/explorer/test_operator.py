"""Operator experience: structured JSON logs and `basis status` against a real server."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid

import pytest
import typer
from typer.testing import CliRunner

from basis.cli import status as status_cli
from basis.explorer.format import format_basis
from basis.observability.logging import configure_logging, current_job_id, job_context


@pytest.fixture
def log_lines():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("DEBUG", stream=stream)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_json_logs_carry_ts_level_logger_msg_job_id_and_extras(log_lines):
    log = logging.getLogger("basis.gateway.chat")
    job = uuid.uuid4()
    log.info("before %s", "any job")
    with job_context(job):
        log.info("job accepted", extra={"model": "basis-default", "prompt_tokens": 12, "worker": None})
        try:
            raise ValueError("engine died")
        except ValueError:
            log.exception("job failed")
    log.debug("after", extra={"ids": {3, 1}, "raw": b"\x01"})
    first, accepted, failed, after = log_lines()
    assert set(first) == {"ts", "level", "logger", "msg"} and first["msg"] == "before any job"
    assert first["ts"].endswith("Z") and first["level"] == "INFO" and first["logger"] == "basis.gateway.chat"
    assert accepted == {**accepted, "job_id": str(job), "model": "basis-default", "prompt_tokens": 12,
                        "worker": None, "msg": "job accepted"}
    assert failed["level"] == "ERROR" and failed["job_id"] == str(job) and "ValueError: engine died" in failed["exc"]
    assert "job_id" not in after and after["ids"] == [1, 3] and after["raw"] == "0x01"
    assert current_job_id() is None


def test_job_context_is_per_task(log_lines):
    log = logging.getLogger("basis.test")

    async def one(job_id: str) -> None:
        with job_context(job_id):
            await asyncio.sleep(0)
            log.info("tick")
            await asyncio.sleep(0)
            log.info("tock")

    async def main() -> None:
        await asyncio.gather(one("a"), one("b"))

    asyncio.run(main())
    lines = [line for line in log_lines() if line["logger"] == "basis.test"]
    assert sorted((line["job_id"], line["msg"]) for line in lines) == [
        ("a", "tick"), ("a", "tock"), ("b", "tick"), ("b", "tock")]


def test_configure_logging_replaces_its_handler_and_can_write_text():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("INFO")
        stream = io.StringIO()
        configure_logging("WARNING", json=False, stream=stream)
        assert len(root.handlers) == 1
        with job_context("j-7"):
            logging.getLogger("basis.x").warning("slow", extra={"ms": 12})
            logging.getLogger("basis.x").info("hidden")
        (line,) = stream.getvalue().splitlines()
        assert "WARNING" in line and "[j-7] slow ms=12" in line
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def cli() -> typer.Typer:
    app = typer.Typer()
    status_cli.register(app)

    @app.callback()
    def _root() -> None:
        pass

    return app


def test_status_summarises_a_running_network(world, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "up.json").write_text(json.dumps({  # as `basis up` writes it
        "base_url": f"{world.url}/v1", "gateway": world.url, "explorer_url": f"{world.url}/",
        "home": str(world.settings.home)}))
    monkeypatch.setenv("BASIS_HOME", str(home))
    result = CliRunner().invoke(cli(), ["status", "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["gateway"] == world.url and facts["health"]["status"] == "ok"
    assert facts["stats"]["receipts"] == 7 and facts["stats"]["unsettled_receipts"] == 5
    unsettled = sum(int(r["core"]["charged"]) for k, r in world.receipts.items() if k not in ("first", "settled"))
    assert facts["stats"]["unsettled_charged"] == str(unsettled)
    assert [m["status"] for m in facts["models"]] == ["live", "live", "planned"]
    assert facts["network"]["chain_id"] == 31337

    table = CliRunner().invoke(cli(), ["status"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    for needle in ("up", world.url, "2 live, 1 planned", "Receipts", "7", format_basis(unsettled),
                   "chain id 31337", world.ledger.signer.address, "Workers online"):
        assert needle in table.stdout, needle


def test_status_says_clearly_when_nothing_runs(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("BASIS_HOME", str(tmp_path))
    result = CliRunner().invoke(cli(), ["status", "--url", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 1
    assert "nothing is running" in result.output and "basis up" in result.output
    (tmp_path / "up.json").write_text(json.dumps({"gateway": f"http://127.0.0.1:{port}"}))
    stale = CliRunner().invoke(cli(), ["status"])
    assert stale.exit_code == 1 and "up.json" in stale.output
