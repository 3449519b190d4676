"""Several writers on one PostgreSQL and one hot account (issue #15 item 1): the write turn makes
them take turns, so no batch is refused by optimistic concurrency, nothing is overdrawn, and a
writer whose turn connection dies still commits (optimistically) and gets its turn back."""

from __future__ import annotations

import threading

import pytest

from basis.config import Settings
from basis.ledger.errors import LedgerBusy, LedgerUnavailable
from basis.ledger.service import Ledger
from tests.ledger.test_concurrency import PER_JOB, _hammer

pytestmark = pytest.mark.postgres


def _ledgers(tmp_path, pg_dsn, n):
    return [Ledger(Settings(home=tmp_path / f"w{i}", database_url=pg_dsn), signer_key="0x" + "11" * 32)
            for i in range(n)]


def test_writers_on_one_hot_account_take_turns_without_conflicts(tmp_path, pg_dsn):
    ledgers = _ledgers(tmp_path, pg_dsn, 3)
    try:
        account_id = ledgers[0].open_account("hot")
        credit = PER_JOB * 150 + PER_JOB // 2  # room for 150 jobs of the 180 asked
        ledgers[0].grant("hot", credit)
        results: list = []
        threads = [threading.Thread(target=_hammer, args=(ledger, account_id, 15, results))
                   for ledger in ledgers for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        served = [c for kind, c in results if kind == "served"]
        assert len(results) == 180 and len(served) == 150  # refused exactly at the boundary
        acc = ledgers[1].get(account_id)
        assert acc.reserved == 0 and acc.spent == sum(served) <= credit
        assert sum(ledger.writer.conflicts for ledger in ledgers) == 0
        assert sum(ledger.writer.turn.waits for ledger in ledgers) > 0  # they did meet
    finally:
        for ledger in ledgers:
            ledger.close()


def test_a_lost_turn_connection_falls_back_to_optimistic_and_recovers(tmp_path, pg_dsn):
    (ledger,) = _ledgers(tmp_path, pg_dsn, 1)
    try:
        account_id = ledger.open_account("turn")
        ledger.grant("turn", PER_JOB * 10)
        ledger.writer.turn._conn.close()  # the server side is gone as far as this writer knows
        results: list = []
        _hammer(ledger, account_id, 2, results)
        assert [k for k, _ in results] == ["served", "served"]
        assert ledger.writer.turn._conn is not None and not ledger.writer.turn._conn.closed  # reconnected
    finally:
        ledger.close()


def test_ledger_busy_is_retryable_and_still_an_integrity_error():
    from eventsourcing.persistence import IntegrityError

    exc = LedgerBusy("too many concurrent writers on one aggregate")
    assert isinstance(exc, LedgerUnavailable) and isinstance(exc, IntegrityError)
