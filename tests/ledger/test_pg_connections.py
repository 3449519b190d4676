"""Connections (#15 item 5): each gateway process holds a bounded PostgreSQL pool, sized by
BASIS_PG_POOL_SIZE / BASIS_PG_MAX_OVERFLOW, and a server out of connection slots gets an error that
names those settings."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import psycopg
import pytest

from basis.chain.anvil import free_port
from basis.config import PG_POOL_SIZE, Settings, postgres_env
from basis.ledger.service import Ledger
from tests.gateway.harness import REPO
from tests.gateway.test_dies_with_gateway import start_serve, wait_ready

pytestmark = pytest.mark.postgres


def test_pool_settings_are_read_and_checked(monkeypatch):
    monkeypatch.delenv("BASIS_PG_POOL_SIZE", raising=False)
    monkeypatch.delenv("BASIS_PG_MAX_OVERFLOW", raising=False)
    env = postgres_env("postgresql://basis@db.internal:5433/ledger")
    assert env["POSTGRES_POOL_SIZE"] == str(PG_POOL_SIZE)
    monkeypatch.setenv("BASIS_PG_POOL_SIZE", "3")
    monkeypatch.setenv("BASIS_PG_MAX_OVERFLOW", "0")
    env = postgres_env("postgresql://basis@db.internal:5433/ledger")
    assert (env["POSTGRES_POOL_SIZE"], env["POSTGRES_MAX_OVERFLOW"]) == ("3", "0")
    for bad in ("0", "-1", "many"):
        monkeypatch.setenv("BASIS_PG_POOL_SIZE", bad)
        with pytest.raises(ValueError, match="BASIS_PG_POOL_SIZE"):
            postgres_env("postgresql://basis@db.internal:5433/ledger")


def connections(server_dsn: str, dbname: str) -> int:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (dbname,)).fetchone()[0]


def test_a_gateway_holds_its_pool_size_idle_and_its_bound_under_load(tmp_path, pg_server, pg_dsn):
    home, dbname = tmp_path / "home", pg_dsn.rsplit("/", 1)[1]
    ledger = Ledger(Settings(home=home, database_url=pg_dsn))
    _, key = ledger.create_api_key("load")
    ledger.grant("load", 10**24)
    ledger.close()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    gateway = start_serve(home, port, tmp_path / "serve.log", BASIS_DATABASE_URL=pg_dsn,
                          BASIS_PG_POOL_SIZE="1", BASIS_PG_MAX_OVERFLOW="1")
    try:
        wait_ready(base, gateway)
        deadline = time.monotonic() + 30  # the writer and projector processes connect as they come up
        while connections(pg_server, dbname) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        # one per process (gateway, ledger writer, projector), and the node-id lock's own connection
        assert connections(pg_server, dbname) == 4

        peak, statuses, stop = [0], [], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], connections(pg_server, dbname))
                time.sleep(0.05)

        def load() -> None:
            with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {key}"}) as client:
                for _ in range(10):
                    statuses.append(client.post(f"{base}/v1/chat/completions", json={
                        "model": "basis-default", "max_tokens": 4,
                        "messages": [{"role": "user", "content": "hi"}]}).status_code)

        sampler = threading.Thread(target=sample)
        sampler.start()
        clients = [threading.Thread(target=load) for _ in range(16)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(120)
        stop.set()
        sampler.join()
        assert statuses == [200] * 160
        assert peak[0] <= 3 * (1 + 1) + 1, f"{peak[0]} connections, above 3 processes x (size 1 + overflow 1) + lock"
    finally:
        gateway.terminate()
        gateway.wait(30)


def test_a_server_out_of_slots_gets_an_error_naming_the_settings(tmp_path):
    from tests.support.postgres import ThrowawayPostgres

    try:
        server = ThrowawayPostgres(max_connections=6)
    except Exception as exc:
        pytest.skip(f"no PostgreSQL server binaries for this test: {exc}")
    held = []
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE full_up")
        dsn = server.dsn.rsplit("/", 1)[0] + "/full_up"
        while True:  # take every slot the server has
            try:
                held.append(psycopg.connect(dsn, autocommit=True))
            except psycopg.OperationalError as exc:
                assert "too many clients" in str(exc) or "connection slots" in str(exc), exc
                break
        env = {"BASIS_HOME": str(tmp_path / "home"), "BASIS_DATABASE_URL": dsn, "PYTHONPATH": str(REPO / "src")}
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "basis.cli.main", "serve", "--port", str(free_port())],
                                env={**__import__("os").environ, **env}, capture_output=True, text=True,
                                timeout=120, cwd=REPO)
        took = time.monotonic() - started
        assert result.returncode == 2, result.stderr[-3000:]
        assert "BASIS_PG_POOL_SIZE" in result.stderr and "max_connections" in result.stderr, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        assert took < 60
    finally:
        for conn in held:
            conn.close()
        server.stop()
