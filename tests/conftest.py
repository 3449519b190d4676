from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from basis.config import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "basis-home", database_url=None)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL server DSN: BASIS_TEST_PG_DSN, or a throwaway cluster started here."""
    dsn = os.environ.get("BASIS_TEST_PG_DSN")
    if dsn:
        yield dsn
        return
    from tests.support.postgres import ThrowawayPostgres

    try:
        server = ThrowawayPostgres()
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL server for this test: {exc}")
    try:
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(pg_server: str) -> str:
    """A fresh, empty database on the test server."""
    import psycopg

    name = "basis_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_server.rsplit("/", 1)[0] + "/" + name


def require_foundry() -> None:
    """Skip (with the reason) where the pinned Foundry toolchain is not installed; CI installs it."""
    from basis.chain.paths import node_modules

    nm = node_modules()
    if nm is None or not (nm / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil").is_file():
        if os.environ.get("CI"):
            raise RuntimeError("node_modules with @foundry-rs/anvil absent in CI: `npm ci` did not run")
        pytest.skip("node_modules with @foundry-rs/anvil absent: run `npm ci` at the repository root")


@pytest.fixture(scope="module")
def anvil():
    """A real anvil chain on a free loopback port, for one test module."""
    from basis.chain.anvil import Anvil

    require_foundry()
    with Anvil() as chain:
        yield chain


@pytest.fixture(scope="module")
def w3(anvil):
    from web3 import Web3

    return Web3(Web3.HTTPProvider(anvil.rpc_url))
