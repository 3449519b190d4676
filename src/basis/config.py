"""Configuration from the environment, with embedded defaults (SQLite under BASIS_HOME)."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

ADMIN_KEY_PREFIX = "basis-admin-"  # unlike inference keys (sk-basis-...), so the two are never confused


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path(os.environ.get("BASIS_HOME", ".basis")).resolve())
    database_url: str | None = field(default_factory=lambda: os.environ.get("BASIS_DATABASE_URL") or None)
    pricing_table: str | None = field(default_factory=lambda: os.environ.get("BASIS_PRICING_TABLE") or None)
    # This gateway's name in the ledger (its jobs' ``node``). Unset: unique per data directory and
    # host (default_node_id), recorded in the home on the first start (persist_node_id).
    node_id: str = field(default_factory=lambda: os.environ.get("BASIS_NODE_ID") or "")

    def __post_init__(self) -> None:
        if not self.node_id:
            object.__setattr__(self, "node_id", default_node_id(self.home))
            object.__setattr__(self, "_node_id_derived", True)

    @property
    def node_id_path(self) -> Path:
        return self.home / NODE_ID_FILE

    def persist_node_id(self) -> None:
        """Record a derived node id in the home, so it stays this home's even if the host is
        renamed or the directory moved. An id set by BASIS_NODE_ID is never written."""
        if getattr(self, "_node_id_derived", False) and not self.node_id_path.exists():
            self.ensure_home()
            tmp = self.node_id_path.with_name(f"{NODE_ID_FILE}.{os.getpid()}.tmp")
            tmp.write_text(self.node_id + "\n")
            os.replace(tmp, self.node_id_path)

    @property
    def events_path(self) -> Path:
        return self.home / "events.sqlite3"

    @property
    def views_path(self) -> Path:
        return self.home / "views.sqlite3"

    @property
    def operator_key_path(self) -> Path:
        return self.home / "operator.key"

    @property
    def admin_key_path(self) -> Path:
        return self.home / "admin.key"

    def admin_key(self, create: bool = False) -> str | None:
        """The operator's admin API secret (never an inference key): BASIS_ADMIN_KEY, else the
        file ``admin.key`` under the home (``create``: made with mode 0600 if absent, as `basis up`
        does). None: the admin API is off."""
        env = os.environ.get("BASIS_ADMIN_KEY", "").strip()
        if env:
            return env
        path = self.admin_key_path
        if not path.exists():
            if not create:
                return None
            self.ensure_home()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(ADMIN_KEY_PREFIX + secrets.token_urlsafe(32) + "\n")
        return path.read_text().strip() or None

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


    def settlement_key(self) -> str:
        """The key that sends settlement transactions and signs withdrawal vouchers (the vault's
        ``operator``): ``BASIS_SETTLEMENT_KEY_FILE`` when set, else the receipt-signing key.

        Keeping them apart limits a leak: the receipt key only vouches for receipts (a forged
        receipt never moves money, and settlement needs the other key); the settlement key moves
        deposit-backed spend and posts roots, and a wrong rewards root it posts stays pending for
        the distributor's delay, revocable by the owner, before any claim can draw on it."""
        path = os.environ.get("BASIS_SETTLEMENT_KEY_FILE")
        return read_key_file(path) if path else self.operator_key()


NODE_ID_FILE = "node-id"
LEGACY_NODE_ID = "gateway-1"  # every process's id before ids were derived


def default_node_id(home: Path) -> str:
    """The node id of a gateway on ``home`` when BASIS_NODE_ID is unset: the one the home recorded
    on its first start; else ``<host>-<8 hex of sha256(host, home path)>``, unique per data
    directory and host. A home whose views hold jobs of ``gateway-1`` (every gateway's id before ids
    were derived) keeps that id, so its first restart still ends its own interrupted jobs."""
    try:
        saved = (home / NODE_ID_FILE).read_text().strip()
    except OSError:
        saved = ""
    if saved:
        return saved
    if _has_jobs_of(home / "views.sqlite3", LEGACY_NODE_ID):
        return LEGACY_NODE_ID
    host = socket.gethostname()
    digest = hashlib.sha256(f"{host}\0{home.resolve()}".encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9.-]+', '-', host).strip('-.') or 'host'}-{digest}"


def _has_jobs_of(views: Path, node: str) -> bool:
    if not views.exists():
        return False
    try:
        db = sqlite3.connect(views.resolve().as_uri() + "?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT 1 FROM jobs WHERE node = ? LIMIT 1", (node,)).fetchone() is not None
        finally:
            db.close()
    except sqlite3.Error:  # no jobs table yet
        return False


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
