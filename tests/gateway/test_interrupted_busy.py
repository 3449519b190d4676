"""A restarting gateway whose first commands lose the race for a busy ledger retries (bounded,
logged) instead of exiting. The busy store is a test double: the real store raises LedgerBusy only
under a concurrent writer storm that a test cannot produce on demand."""

from __future__ import annotations

import logging
import uuid

import pytest

from basis.gateway import interrupted
from basis.gateway.interrupted import end_interrupted_jobs
from basis.ledger.errors import LedgerBusy
from basis.ledger.projections import Projector, ViewReader
from basis.ledger.service import Ledger


def _restarted_with_an_open_job(settings) -> tuple[Ledger, uuid.UUID, str]:
    ledger = Ledger(settings)
    account_id = ledger.open_account("kim")
    ledger.grant("kim", 10**18)
    job_id = uuid.uuid4()
    ledger.run(ledger.accept_job(job_id=job_id, account_id=account_id, model="basis-default", prompt_tokens=3,
                                 max_output_tokens=50))
    ledger.close()
    again = Ledger(settings)
    Projector(again.store, settings.views_path).catch_up()
    assert ViewReader(settings.views_path).open_jobs(settings.node_id) == [str(job_id)]
    return again, job_id, account_id


def _busy_for(ledger: Ledger, times: int) -> None:
    """The ledger's next ``times`` commands give up as a contended store does (nothing saved)."""
    real_run, left = ledger.run, [times]

    def run(command, *args, **kwargs):
        if left[0] > 0:
            left[0] -= 1
            raise LedgerBusy("too many concurrent writers on one aggregate")
        return real_run(command, *args, **kwargs)

    ledger.run = run  # type: ignore[method-assign]


def test_a_busy_ledger_at_start_is_retried_with_back_off_and_logged(settings, caplog):
    ledger, job_id, account_id = _restarted_with_an_open_job(settings)
    _busy_for(ledger, 3)
    slept: list[float] = []
    with caplog.at_level(logging.WARNING, logger="basis.gateway"):
        assert end_interrupted_jobs(ledger, [job_id], sleep=slept.append) == 1
    assert slept == [0.05, 0.1, 0.2]
    retries = [r for r in caplog.records if "retrying after a back-off" in r.getMessage()]
    assert [r.attempt for r in retries] == [1, 2, 3] and retries[0].job_id == str(job_id)
    assert ledger.get(job_id).outcome == "failed" and ledger.get(account_id).reserved == 0
    ledger.close()


def test_a_ledger_busy_through_every_attempt_gives_up_with_the_job_still_open(settings, caplog):
    ledger, job_id, account_id = _restarted_with_an_open_job(settings)
    _busy_for(ledger, interrupted.ATTEMPTS)
    slept: list[float] = []
    with caplog.at_level(logging.WARNING, logger="basis.gateway"), pytest.raises(LedgerBusy):
        end_interrupted_jobs(ledger, [job_id], sleep=slept.append)
    assert len(slept) == interrupted.ATTEMPTS - 1 and max(slept) == interrupted.MAX_DELAY_S
    assert any(r.levelno == logging.ERROR and r.attempts == interrupted.ATTEMPTS for r in caplog.records)
    assert ledger.get(job_id).outcome is None and ledger.get(account_id).reserved > 0  # the next start ends it
    ledger.close()
