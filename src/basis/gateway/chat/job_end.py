"""Recording a job's end, until it lands.

Until its end is recorded, a job's reservation stays held and its charge and reward are not in
the books; a restart would end it failed, charging nothing. So a failure to store it (version
conflicts exhausted, the writer or the database connection lost) is retried, with back-off, for
as long as the gateway runs. Retries are sent with ``resume``: if an earlier try landed after
all, its receipt comes back instead of a second end. A refusal by the ledger itself is final.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from eventsourcing.persistence import PersistenceError

from basis.ledger.errors import LedgerError, LedgerUnavailable

log = logging.getLogger("basis.gateway.chat")

# Sent again after 50 ms, then twice as long each time, at most every 5 s.
END_RETRY_FIRST_S = 0.05
END_RETRY_MAX_S = 5.0


def worth_retrying(exc: BaseException) -> bool:
    """A failure to store (conflicts exhausted, a lost connection or writer), not the ledger's refusal."""
    if isinstance(exc, LedgerUnavailable):
        return True
    return not isinstance(exc, LedgerError) and isinstance(exc, PersistenceError | OSError | RuntimeError)


async def record_job_end(writer: Any, end: dict[str, Any]) -> dict[str, Any] | None:
    """Send ``finish_job(**end)`` through the job writer until it lands; its receipt (or None)."""
    delay, attempt = END_RETRY_FIRST_S, 0
    while True:
        attempt += 1
        waiter: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        try:
            writer.submit_async("finish_job", end if attempt == 1 else {**end, "resume": True}, waiter)
            receipt = await waiter
        except Exception as exc:
            if not worth_retrying(exc) or writer.closed:
                log.error("recording the end of job %s failed for good (attempt %d): %r; it stays open "
                          "until the gateway restarts", end["job_id"], attempt, exc)
                raise
            log.warning("recording the end of job %s failed (attempt %d): %r; retrying in %.2f s",
                        end["job_id"], attempt, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, END_RETRY_MAX_S)
            continue
        if attempt > 1:
            log.info("the end of job %s was recorded on attempt %d", end["job_id"], attempt)
        return receipt


def check_input(plan: Any, output_ids: list[int], token_logprobs: list[Any], output_tokens: int
                ) -> dict[str, Any] | None:
    """What a verifier needs if the ledger selects a contributor job for a check (DESIGN 1.6): the
    ids it was paid for, its sampling parameters and, when the job carried them, the worker's
    reported logprobs of those ids (basis.verification.reported_logprobs compares them)."""
    if not output_tokens:
        return None
    check = {"prompt_ids": plan.prompt_ids, "output_ids": output_ids[:output_tokens],
             "temperature": plan.temperature, "top_p": plan.top_p}
    if plan.logprobs and len(token_logprobs) >= output_tokens:
        check["reported_logprobs"] = [t.logprob for t in token_logprobs[:output_tokens]]
    return check
