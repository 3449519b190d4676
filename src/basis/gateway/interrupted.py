"""Ending, at start, the jobs this node accepted but never ended before it stopped.

On a shared PostgreSQL the other gateways keep writing the same accounts while this one restarts, so
one of these commands may lose its optimistic-concurrency race often enough to give up
(``LedgerBusy``). That is transient: each job is retried with a bounded exponential back-off (each
try logged as a JSON line) instead of ending the gateway, which would only restart into the same race.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from uuid import UUID

from basis.ledger.errors import LedgerBusy
from basis.ledger.service import Ledger

log = logging.getLogger("basis.gateway")

ATTEMPTS = 8  # 0.05 s doubling, capped at 2 s: about 6 s of waiting before giving up
FIRST_DELAY_S = 0.05
MAX_DELAY_S = 2.0


def end_interrupted_jobs(ledger: Ledger, job_ids: Iterable[UUID], *,
                         sleep: Callable[[float], None] = time.sleep) -> int:
    """End each job (failed, nothing charged, reservation released); returns how many it ended.
    Re-raises ``LedgerBusy`` only when one job stayed busy through every attempt."""
    ended = 0
    for job_id in job_ids:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                ended += ledger.end_interrupted([job_id])
                break
            except LedgerBusy as exc:
                if attempt == ATTEMPTS:
                    log.error("could not end an interrupted job: the ledger stayed busy",
                              extra={"job_id": str(job_id), "attempts": attempt, "error": str(exc)})
                    raise
                delay = min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** (attempt - 1))
                log.warning("ledger busy while ending an interrupted job; retrying after a back-off",
                            extra={"job_id": str(job_id), "attempt": attempt, "retry_in_s": delay,
                                   "error": str(exc)})
                sleep(delay)
    return ended
