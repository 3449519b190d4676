"""Configuration from the environment, with embedded defaults (SQLite under BASIS_HOME)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path(os.environ.get("BASIS_HOME", ".basis")).resolve())
    database_url: str | None = field(default_factory=lambda: os.environ.get("BASIS_DATABASE_URL") or None)
    pricing_table: str | None = field(default_factory=lambda: os.environ.get("BASIS_PRICING_TABLE") or None)
    node_id: str = field(default_factory=lambda: os.environ.get("BASIS_NODE_ID", "gateway-1"))

    @property
    def events_path(self) -> Path:
        return self.home / "events.sqlite3"

    @property
    def views_path(self) -> Path:
        return self.home / "views.sqlite3"

    @property
    def operator_key_path(self) -> Path:
        return self.home / "operator.key"

    def ensure_home(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home

    def event_store_env(self) -> dict[str, str]:
        """eventsourcing's environment: PERSISTENCE_MODULE unset would silently mean in-memory."""
        if self.database_url:
            return postgres_env(self.database_url)
        self.ensure_home()
        return {
            "PERSISTENCE_MODULE": "basis.ledger.sqlite_store:TunedSQLiteFactory",
            "SQLITE_DBNAME": str(self.events_path),
            "SQLITE_LOCK_TIMEOUT": "30",
            "SQLITE_SYNCHRONOUS": os.environ.get("BASIS_SQLITE_SYNCHRONOUS", "NORMAL"),
        }

    def operator_key(self) -> str:
        """The gateway operator's signing key (0x-hex), created with mode 0600 on first use."""
        path = Path(os.environ.get("BASIS_OPERATOR_KEY_FILE") or self.operator_key_path)
        if not path.exists():
            self.ensure_home()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write("0x" + secrets.token_hex(32) + "\n")
        return read_key_file(path)


def read_key_file(path: str | Path) -> str:
    text = Path(path).read_text().strip()
    raw = text.removeprefix("0x")
    if len(raw) != 64 or any(c not in "0123456789abcdefABCDEF" for c in raw):
        raise ValueError(f"{path}: expected a 0x-prefixed 32-byte hex private key")
    return "0x" + raw.lower()


def postgres_env(url: str) -> dict[str, str]:
    u = urlparse(url)
    if u.scheme not in ("postgres", "postgresql"):
        raise ValueError("BASIS_DATABASE_URL must be postgresql://user:password@host:port/dbname")
    env = {
        "PERSISTENCE_MODULE": "basis.ledger.postgres_store:LedgerPostgresFactory",  # eventsourcing's, see there
        "POSTGRES_DBNAME": (u.path or "/basis").lstrip("/"),
        "POSTGRES_HOST": u.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(u.port or 5432),
        "POSTGRES_USER": unquote(u.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(u.password or ""),
        # Per process (a gateway runs three: itself, its ledger writer, its projector): connections kept
        # open, and how many more it may open while busy. docs/deploy.md sizes them against max_connections.
        "POSTGRES_POOL_SIZE": str(_pool_setting("BASIS_PG_POOL_SIZE", PG_POOL_SIZE, minimum=1)),
        "POSTGRES_MAX_OVERFLOW": str(_pool_setting("BASIS_PG_MAX_OVERFLOW", PG_MAX_OVERFLOW, minimum=0)),
    }
    return env


PG_POOL_SIZE, PG_MAX_OVERFLOW = 2, 8


def _pool_setting(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < minimum:
        raise ValueError(f"{name} must be a whole number of connections, at least {minimum} (got {raw!r})")
    return int(raw)
