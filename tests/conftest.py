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
