"""One ledger writer at a time on a shared PostgreSQL (issue #15 item 1).

Every writer (a gateway's ledger writer, a CLI settler) runs a batch as read, decide, save. The
save is already serialized: eventsourcing's PostgreSQL recorder takes ``LOCK TABLE ... IN
EXCLUSIVE MODE`` to keep notification ids in commit order. The read and the decision were not,
so two gateways serving one account each decided on the version the other was about to replace:
optimistic concurrency refused one of them, it re-read and lost again, and one gateway starved
(10.8 s requests, then "too many concurrent writers on one aggregate").

The turn extends the serialized part over the whole batch: a session advisory lock on a
connection of its own, taken before the batch drops its stale cache and released after its
commit. The group committer takes it only once it contends (after a refused save, for
``CONTENDED_S``): writers on different accounts stay optimistic and never wait for each other.
The writer that holds it sees every commit before it (they finished before it was released),
so its decisions are made on current versions and its save does not conflict. Group
commit keeps the cost small: a gateway that waited for the turn takes everything queued
meanwhile in its next batch, so more writers mean bigger batches, not more transactions.

- The account stays the single truth of its credit: every 402 is exact at the boundary (the
  refusal is decided on the account's current state, across all gateways), and no credit is
  escrowed in a gateway that might die holding it.
- The lock dies with its holder's session: a SIGKILLed gateway's turn is released by the
  server as soon as its connection closes; nothing needs reclaiming.
- It is an optimisation of contention, never a condition of correctness: if the turn cannot be
  had (its connection is lost, or the wait passes ``WAIT_S``), the batch runs without it and
  optimistic concurrency still refuses any conflicting save.
- SQLite: every writer is on one machine and the recorder already takes a write turn per save;
  no lock is taken here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

WAIT_S = 10  # longest wait for another writer's batch before running optimistically


def _lock_key(scope: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"basis-ledger-writer:{scope}".encode(), digest_size=8).digest(), "big",
                          signed=True)


class WriterTurn:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.postgres = "POSTGRES_DBNAME" in env
        self.key = _lock_key(f"{env.get('POSTGRES_DBNAME')}:{env.get('POSTGRES_SCHEMA', 'public')}")
        self._conn: Any = None
        self.waits = 0  # batches that found the turn taken (another writer's batch was running)

    @contextmanager
    def held(self) -> Iterator[bool]:
        """Hold the turn for the body; yields whether it is held (False: running optimistically)."""
        got = self._take() if self.postgres else False
        try:
            yield got
        finally:
            if got:
                self._give_back()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection: the server released the lock already
                conn.close()

    def _connect(self) -> Any:
        import psycopg

        e = self.env
        conn = psycopg.connect(host=e.get("POSTGRES_HOST"), port=e.get("POSTGRES_PORT"),
                               dbname=e.get("POSTGRES_DBNAME"), user=e.get("POSTGRES_USER"),
                               password=e.get("POSTGRES_PASSWORD"), autocommit=True,
                               application_name="basis-ledger-writer", connect_timeout=10)
        conn.execute(f"SET lock_timeout = '{int(WAIT_S * 1000)}ms'")
        return conn

    def _take(self) -> bool:
        import psycopg

        try:
            if self._conn is None:
                self._conn = self._connect()
            if self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]:
                return True
            self.waits += 1
            self._conn.execute("SELECT pg_advisory_lock(%s)", (self.key,))
            return True
        except psycopg.errors.LockNotAvailable:
            log.warning("another ledger writer held the write turn for over %s s; this batch runs without it",
                        WAIT_S)
            return False
        except psycopg.Error as exc:
            log.warning("the ledger write turn is unavailable (%s); this batch runs without it", exc)
            self.close()
            return False

    def _give_back(self) -> None:
        import psycopg

        try:
            self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        except psycopg.Error as exc:  # closing the session releases the lock
            log.warning("could not give back the ledger write turn (%s); closing its connection", exc)
            self.close()
