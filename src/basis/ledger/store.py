"""The event store: an eventsourcing Application over SQLite (default) or PostgreSQL."""

from __future__ import annotations

import time
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import InternalError, OperationalError

# Import every aggregate so their explicit topics are registered before any event is read.
from basis.ledger.accounts import Account, ApiKey, CreditRef
from basis.ledger.jobs import IdempotencyRecord, Job
from basis.ledger.postgres_store import ConnectionsRefused
from basis.ledger.settlement import (
    AccountOwners,
    ChainCursor,
    RewardClaims,
    SettlementBatch,
    SettlementLog,
    VoucherBook,
)
from basis.ledger.workers import Worker

AGGREGATES = (Account, ApiKey, CreditRef, Job, IdempotencyRecord, Worker, SettlementBatch, SettlementLog,
              VoucherBook, ChainCursor, RewardClaims, AccountOwners)


class LedgerStore(Application):
    name = "basis"

    def __init__(self, env: dict[str, str]) -> None:
        if "PERSISTENCE_MODULE" not in env:
            raise ValueError("refusing an in-memory event store: set PERSISTENCE_MODULE")
        for attempt in range(5):
            try:
                super().__init__(env=env)
                return
            except ConnectionsRefused:
                raise  # the server has no slot for us: retrying here only hides the setting that says why
            except (InternalError, OperationalError):
                # Several processes creating the tables at once race in PostgreSQL's catalog
                # ("tuple concurrently updated"); the tables exist once one of them wins.
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def changes_since(self, after: int, limit: int = 5000) -> tuple[int, list[tuple[UUID, int]]]:
        """(last notification id read, [(aggregate id, version)]) of the events stored after
        notification ``after``, at most ``limit`` of them, in log order."""
        fast = getattr(self.recorder, "changes_since", None)
        if fast is not None:
            rows = fast(after, limit)
        else:
            rows = [(n.id, n.originator_id, n.originator_version) for n in
                    self.recorder.select_notifications(after, limit, inclusive_of_start=False)]
        return (rows[-1][0] if rows else after), [(r[1], r[2]) for r in rows]
