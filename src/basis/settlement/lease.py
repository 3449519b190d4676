"""One settler at a time per (chain, vault), across threads and processes (issue #15 item 3).

Any number of gateways and ``basis settle`` runs may be configured to settle; the one holding the
lease proposes, sends and confirms, the others stand by. Without it two settlers finish the same
batch in flight at once: the same signed transaction is broadcast twice ("already imported") or a
second one reverts with ``BatchAlreadyPosted``, each costing gas.

The lease lives where the ledger lives, and dies with its holder (no stale lease to expire):
- PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a connection of its own,
  keyed by the scope;
- SQLite: an exclusive ``flock`` on a file beside the event store (every holder is on this machine).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from pathlib import Path
from typing import Any

from basis.units import Seconds


class LeaseHeld(RuntimeError):
    """Another settler holds the lease: this one stands by."""


def _lock_key(scope: str) -> int:
    """A signed 64-bit advisory lock key for the scope."""
    return int.from_bytes(hashlib.blake2b(f"basis-settler:{scope}".encode(), digest_size=8).digest(), "big",
                          signed=True)


class SettlerLease:
    def __init__(self, env: dict[str, str], scope: str) -> None:
        self.env = env
        self.scope = scope
        self._held: Any = None  # the open file or connection while held
        self.postgres = "POSTGRES_DBNAME" in env  # whichever PostgreSQL factory the store uses
        if not self.postgres:
            db = env.get("SQLITE_DBNAME")
            if not db:
                raise ValueError("the settler lease needs a SQLite file or PostgreSQL store")
            safe = hashlib.sha256(scope.encode()).hexdigest()[:16]
            self.path = Path(f"{db}.settler-{safe}.lock")

    @property
    def held(self) -> bool:
        return self._held is not None

    def acquire(self, wait: Seconds = 0.0) -> bool:
        """Take the lease, waiting up to ``wait`` seconds for its holder. False if still held."""
        deadline = time.monotonic() + wait
        while True:
            if self._try():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def release(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        if self.postgres:
            try:
                held.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(self.scope),))
            finally:
                held.close()
        else:
            try:
                fcntl.flock(held.fileno(), fcntl.LOCK_UN)
            finally:
                held.close()

    def _try(self) -> bool:
        if self._held is not None:
            return True
        if self.postgres:
            import psycopg

            e = self.env
            conn = psycopg.connect(host=e.get("POSTGRES_HOST"), port=e.get("POSTGRES_PORT"),
                                   dbname=e.get("POSTGRES_DBNAME"), user=e.get("POSTGRES_USER"),
                                   password=e.get("POSTGRES_PASSWORD"), autocommit=True,
                                   application_name="basis-settler")
            try:
                got = conn.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(self.scope),)).fetchone()[0]
            except BaseException:
                conn.close()
                raise
            if not got:
                conn.close()
                return False
            self._held = conn
            return True
        f = open(self.path, "a+")  # noqa: SIM115 - held open as long as the lease
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        except BaseException:
            f.close()
            raise
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")  # who holds it, for a person looking
        f.flush()
        self._held = f
        return True
