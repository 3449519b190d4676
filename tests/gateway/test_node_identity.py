"""Unique node ids (issue 17 item 8): every gateway defaulted to ``gateway-1``, so a restarting
gateway could end another live gateway's open jobs. The default is now unique per data directory
and host, and a second live gateway with the same id is refused with a message naming the holder."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import textwrap

import httpx
import pytest
from typer.testing import CliRunner

from basis.cli.main import app
from basis.config import Settings
from basis.gateway.runtime import GatewayOptions, GatewayRuntime
from tests.gateway.harness import REPO, Gateway


@pytest.fixture(autouse=True)
def _no_node_id_env(monkeypatch):
    monkeypatch.delenv("BASIS_NODE_ID", raising=False)


def test_the_default_node_id_is_unique_per_home_and_host_and_kept(tmp_path):
    a, b = Settings(home=tmp_path / "a"), Settings(home=tmp_path / "b")
    assert a.node_id != b.node_id and "gateway-1" not in (a.node_id, b.node_id)
    assert re.fullmatch(r"[A-Za-z0-9.-]+-[0-9a-f]{8}", a.node_id)  # <host>-<hash of host and home>
    assert Settings(home=tmp_path / "a").node_id == a.node_id  # stable for one home
    gw = Gateway(tmp_path / "a")
    try:
        assert gw.settings.node_id == a.node_id
        assert (tmp_path / "a" / "node-id").read_text().strip() == a.node_id  # recorded on first start
    finally:
        gw.close()
    assert Settings(home=tmp_path / "a").node_id == a.node_id


def test_a_home_that_served_as_gateway_1_keeps_that_id(tmp_path, monkeypatch):
    """Upgrading must not orphan the jobs a crash interrupted under the old default id."""
    monkeypatch.setenv("BASIS_NODE_ID", "gateway-1")  # how every gateway ran before
    gw = Gateway(tmp_path / "old")
    try:
        _, key = gw.account("u", 10**21)
        r = httpx.post(f"{gw.base}/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
                       json={"model": "basis-default", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503  # no worker: the job was accepted, then ended
        gw.views_caught_up()
    finally:
        gw.close()
    monkeypatch.delenv("BASIS_NODE_ID")
    assert Settings(home=tmp_path / "old").node_id == "gateway-1"
    fresh = Gateway(tmp_path / "fresh")  # views, but no job of gateway-1: a derived id
    fresh.close()
    assert Settings(home=tmp_path / "fresh").node_id not in ("gateway-1", Settings(home=tmp_path / "old").node_id)


def test_an_explicit_node_id_wins_and_is_not_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("BASIS_NODE_ID", "edge-7")
    s = Settings(home=tmp_path / "h")
    assert s.node_id == "edge-7"
    s.persist_node_id()
    assert not (tmp_path / "h" / "node-id").exists()


def test_a_second_gateway_on_the_same_home_is_refused_naming_the_first(tmp_path, monkeypatch):
    from basis.gateway.node_lock import NodeIdInUse

    home = tmp_path / "home"
    gw = Gateway(home)
    try:
        with pytest.raises(NodeIdInUse) as exc:
            GatewayRuntime(Settings(home=home), GatewayOptions())
        msg = str(exc.value)
        assert gw.settings.node_id in msg and f"pid {os.getpid()}" in msg and "BASIS_NODE_ID" in msg
        # `basis serve` says so and exits non-zero, without a traceback
        monkeypatch.setenv("BASIS_HOME", str(home))
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        try:
            result = CliRunner().invoke(app, ["serve", "--port", "0"])
        finally:
            root.handlers[:], root.level = handlers, level
        assert result.exit_code == 2 and "held by another live gateway" in result.output
        assert "Traceback" not in result.output
    finally:
        gw.close()
    again = Gateway(home)  # the first one stopped: its id is free
    again.close()


def test_the_lock_dies_with_its_process(tmp_path):
    from basis.gateway.node_lock import NodeIdInUse, NodeLock

    home = tmp_path / "home"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from basis.config import Settings
            from basis.gateway.node_lock import NodeLock
            lock = NodeLock.acquire(Settings(home=Path({str(home)!r})))
            print("held", flush=True)
            time.sleep(120)
        """)], cwd=REPO, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(NodeIdInUse, match=f"pid {holder.pid} "):
            NodeLock.acquire(Settings(home=home))
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        NodeLock.acquire(Settings(home=home)).release()  # a crash frees the id at once
    finally:
        if holder.poll() is None:
            holder.kill()


def test_postgres_refuses_the_same_node_id_from_another_home(tmp_path, pg_dsn):
    from basis.gateway.node_lock import NodeIdInUse, NodeLock

    first = NodeLock.acquire(Settings(home=tmp_path / "a", database_url=pg_dsn, node_id="edge-1"))
    try:
        with pytest.raises(NodeIdInUse) as exc:  # another home (another host, say): the store arbitrates
            NodeLock.acquire(Settings(home=tmp_path / "b", database_url=pg_dsn, node_id="edge-1"))
        msg = str(exc.value)
        assert "'edge-1'" in msg and "PostgreSQL session pid" in msg and "basis-node edge-1" in msg
        other = NodeLock.acquire(Settings(home=tmp_path / "b", database_url=pg_dsn, node_id="edge-2"))
        other.release()
    finally:
        first.release()
    NodeLock.acquire(Settings(home=tmp_path / "b", database_url=pg_dsn, node_id="edge-1")).release()
