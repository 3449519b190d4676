"""Reservations never overdraw: many threads on SQLite, several processes on one PostgreSQL."""

from __future__ import annotations

import multiprocessing as mp
import threading
import uuid

import pytest

from basis.config import Settings
from basis.domain.pricing import PricingTable, worst_case_charge
from basis.ledger.errors import InsufficientCredit
from basis.ledger.service import Ledger

TERMS = PricingTable.load().terms_for("basis-default")
PER_JOB = worst_case_charge(10, 100, TERMS)


def _hammer(ledger: Ledger, account_id, jobs: int, results: list) -> None:
    for _ in range(jobs):
        job_id = uuid.uuid4()
        try:
            ledger.run(ledger.accept_job(job_id=job_id, account_id=account_id, model="basis-default",
                                         prompt_tokens=10, max_output_tokens=100))
        except InsufficientCredit:
            results.append(("refused", 0))
            continue
        ledger.run(ledger.assign_job(job_id, "gateway", None))
        receipt = ledger.run(ledger.finish_job(job_id, outcome="completed", output_tokens=100))
        results.append(("served", int(receipt["core"]["charged"])))


def test_threads_on_sqlite_never_overdraw(settings):
    ledger = Ledger(settings)
    account_id = ledger.open_account("shared")
    credit = PER_JOB * 37 + PER_JOB // 2  # room for 37 full jobs, not 38
    ledger.grant("shared", credit)
    results: list = []
    threads = [threading.Thread(target=_hammer, args=(ledger, account_id, 10, results)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    served = [c for kind, c in results if kind == "served"]
    assert len(results) == 80 and len(served) == 37
    acc = ledger.get(account_id)
    assert acc.spent == sum(served) <= credit and acc.reserved == 0
    assert acc.available == credit - sum(served) >= 0
    ledger.close()


def _process_worker(dsn: str, home: str, account_id: str, jobs: int, queue) -> None:
    settings = Settings(home=__import__("pathlib").Path(home), database_url=dsn)
    ledger = Ledger(settings, signer_key="0x" + "11" * 32)
    results: list = []
    _hammer(ledger, uuid.UUID(account_id), jobs, results)
    ledger.close()
    queue.put(results)


@pytest.mark.postgres
def test_processes_sharing_postgresql_never_overdraw(pg_dsn, tmp_path):
    settings = Settings(home=tmp_path, database_url=pg_dsn)
    ledger = Ledger(settings, signer_key="0x" + "11" * 32)
    account_id = ledger.open_account("shared")
    credit = PER_JOB * 25 + 1
    ledger.grant("shared", credit)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(pg_dsn, str(tmp_path), str(account_id), 12, queue))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    results = [r for _ in procs for r in queue.get(timeout=10)]
    served = [c for kind, c in results if kind == "served"]
    assert len(results) == 48 and len(served) == 25
    fresh = Ledger(settings, signer_key="0x" + "11" * 32)
    acc = fresh.get(account_id)
    assert acc.spent == sum(served) and acc.reserved == 0 and acc.available == credit - sum(served)
    fresh.close()
    ledger.close()
