"""eventsourcing's PostgreSQL factory, with inserts that survive an ambiguous commit.

eventsourcing retries ``insert_events`` on a lost connection (``OperationalError``,
``InterfaceError``: ten tries, 0.2 s apart). A connection can be lost *after* the server
committed but before the client heard it. The retry then inserts the same rows again, hits the
primary key of its own events and raises ``IntegrityError``: the group committer reads that as
another writer's conflict and runs the batch again on the stored state, where it is refused
(a job's end: "already completed") or, worse, could be applied on top of itself. So after a lost
connection this recorder first looks at what the server holds: if the batch's events are stored
with exactly this batch's bytes, the batch committed and the insert answers with their
notification ids, as if the commit had been heard. A batch is one transaction, so its first
event tells for all of them; a row with other bytes is a real conflict and stays one.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import ConnectionPool, PostgresApplicationRecorder, PostgresDatastore, PostgresFactory
from psycopg.sql import SQL, Identifier

log = logging.getLogger(__name__)

ATTEMPTS = 10  # as eventsourcing's own retry
WAIT_S = 0.2
_insert_once = PostgresApplicationRecorder.insert_events.__wrapped__  # eventsourcing's, without its retry


class LedgerPostgresRecorder(PostgresApplicationRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._select_stored = SQL(
            "SELECT originator_id, originator_version, state, notification_id FROM {schema}.{table} "
            "WHERE (originator_id, originator_version) IN (SELECT * FROM unnest(%s::{id_type}[], %s::bigint[]))"
        ).format(schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name),
                 id_type=Identifier(self.datastore.originator_id_type))

        self._select_max_and_turn = SQL(
            "SELECT MAX(notification_id) AS max, pg_try_advisory_xact_lock_shared(%s) AS free FROM {schema}.{table}"
        ).format(schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name))

    def max_notification_id_and_turn(self, turn_key: int) -> tuple[int | None, bool]:
        """The log's last notification id, and whether the writers' turn (writer_turn) is free: in
        the same query, so an optimistic writer learns that another writer holds or awaits the turn
        at no extra round trip. The shared lock is the transaction's, gone when it ends."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self._select_max_and_turn, (turn_key,))
            row = curs.fetchone()
        return row["max"], bool(row["free"])

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        in_doubt = False  # an earlier try lost its connection: it may have committed
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return _insert_once(self, stored_events, **kwargs)
            except IntegrityError:
                if in_doubt:
                    ids = self._committed(stored_events)
                    if ids is not None:
                        return ids
                raise
            except (InterfaceError, OperationalError) as exc:
                if attempt == ATTEMPTS:
                    raise
                in_doubt = True
                try:
                    ids = self._committed(stored_events)
                except (InterfaceError, OperationalError):
                    ids = None  # the server is still out of reach: try again
                if ids is not None:
                    log.warning("an insert lost its connection after it committed; its %d event(s) are stored",
                                len(stored_events))
                    return ids
                log.warning("an insert lost its connection before it committed (attempt %d): %s", attempt, exc)
                time.sleep(WAIT_S * (1 + 0.1 * (random.random() - 0.5)))
        raise AssertionError("unreachable")

    def _committed(self, stored_events: Sequence[StoredEvent]) -> list[int] | None:
        """The notification ids of ``stored_events`` if this very batch is stored, else None."""
        if not stored_events:
            return []
        keys = [(s.originator_id, s.originator_version) for s in stored_events]
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self._select_stored, ([k[0] for k in keys], [k[1] for k in keys]))
            rows = {(r["originator_id"], r["originator_version"]): r for r in curs.fetchall()}
        first = rows.get(keys[0])
        if first is None or bytes(first["state"]) != bytes(stored_events[0].state):
            return None  # not committed (or another writer's row: a real conflict, reported as one)
        if len(rows) != len(keys):  # one transaction: all of it or none of it
            raise IntegrityError(f"only {len(rows)} of {len(keys)} events of one batch are stored")
        return [rows[k]["notification_id"] for k in keys]


# What PostgreSQL says when it has no connection slot left (max_connections, or a role's or database's limit).
_NO_SLOTS = ("too many clients", "remaining connection slots are reserved", "too many connections")
REFUSAL_MEMORY_S = 60.0  # a pool that could not get a connection blames a refusal this recent
POOL_OPEN_TIMEOUT_S = 10.0  # a server that gives a new process no connection in this long is refusing it


class ConnectionsRefused(OperationalError):
    """PostgreSQL refused new connections for lack of slots. Says which settings size the pools."""


class _LedgerPool(ConnectionPool):
    """eventsourcing's pool, remembering the server's last refusal (the pool's own workers connect,
    and a caller only sees "couldn't get a connection" after its timeout)."""

    refused: str = ""
    refused_at: float = 0.0

    def _connect(self, timeout: float | None = None) -> Any:
        try:
            return super()._connect(timeout=timeout)
        except psycopg.OperationalError as exc:
            if any(words in str(exc) for words in _NO_SLOTS):
                said = str(exc).strip().splitlines()[-1]
                self.refused, self.refused_at = said.split("FATAL:")[-1].strip(), time.monotonic()
            raise


class _LedgerDatastore(PostgresDatastore):
    pool: _LedgerPool

    @contextmanager
    def get_connection(self) -> Iterator[Any]:
        try:
            with super().get_connection() as conn:
                yield conn
        except ConnectionsRefused:
            raise
        except OperationalError as exc:
            pool = self.pool
            if pool.refused and time.monotonic() - pool.refused_at < REFUSAL_MEMORY_S and \
                    any(w in str(exc) for w in (*_NO_SLOTS, "couldn't get a connection", "pool initialization")):
                raise ConnectionsRefused(refusal_message(pool.refused, pool.min_size, pool.max_size)) from exc
            raise


def refusal_message(detail: str, size: int, largest: int) -> str:
    return (f"PostgreSQL refused a connection ({detail}): the server's max_connections is used up. Each "
            f"gateway process keeps BASIS_PG_POOL_SIZE={size} connection(s) open and opens up to "
            f"BASIS_PG_MAX_OVERFLOW={largest - size} more while busy, and a gateway runs three such processes "
            "(itself, its ledger writer, its projector): lower them, or raise max_connections (docs/deploy.md)")


class LedgerPostgresFactory(PostgresFactory):
    application_recorder_class = LedgerPostgresRecorder

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # eventsourcing builds its own datastore and pool; these subclasses add only the refusal's name.
        self.datastore.__class__ = _LedgerDatastore
        self.datastore.pool.__class__ = _LedgerPool
        # Open now, with the pool's own connections made (once: waiting on every checkout would wait
        # for all of them to come back): a first query that finds none asks the pool to grow past its
        # size, and an idle process then holds one connection more than it was sized for.
        pool = self.datastore.pool
        try:
            pool.open(wait=True, timeout=min(pool.timeout, POOL_OPEN_TIMEOUT_S))
        except psycopg.OperationalError as exc:
            if pool.refused:
                raise ConnectionsRefused(refusal_message(pool.refused, pool.min_size, pool.max_size)) from exc
            raise OperationalError(str(exc)) from exc
