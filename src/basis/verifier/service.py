"""The verifier loop: pending checks (from the views) -> reference scores -> verdict commands.

A check that cannot be scored (the reference is missing or broken) is retried later and the job
stays held out of settlement: a verifier that is down or behind never skips a check and never
fails honest work. Recording a verdict is one ledger command that the job accepts once, so a
verifier killed mid-check, restarted, or racing another verifier applies each verdict once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from basis.engines.scoring import ScoreRequest, ScoringError
from basis.ledger.jobs import Job
from basis.ledger.projections import Projector, ViewReader
from basis.ledger.service import Ledger
from basis.ledger.verdicts import forfeit_while_suspended, record_verdict
from basis.observability import metrics
from basis.verification.policy import VerificationPolicy
from basis.verification.reported_logprobs import KEY as REPORTED_KEY
from basis.verification.reported_logprobs import compare
from basis.verification.stats import job_statistic
from basis.verifier.claims import CheckClaims
from basis.verifier.policy import ScorerFactory

log = logging.getLogger("basis.verifier")
RETRY_AFTER = 30.0  # seconds before a check that could not be scored is tried again


def forfeit_sweep(ledger: Ledger, reader: ViewReader) -> int:
    """Forfeit what a suspension did not reach (``forfeit_while_suspended``): the suspending verdict
    forfeits the receipts the views held then, and the views lag the ledger; settlement would forfeit
    the rest when it proposes them, but until then a receipt of a suspended worker would show its
    reward as due. Each pass of the verifier closes that gap. Returns how many were forfeited."""
    done = 0
    for worker, job_ids in reader.unforfeited_of_suspended().items():
        n = ledger.run(forfeit_while_suspended(worker, job_ids))
        if n:
            log.info("worker %s: %d more unsettled rewards forfeited (suspended)", worker, n)
        done += n
    return done


class Verifier:
    """``project``: bring the views up to date itself before each pass (its own process); a gateway's
    views are kept current by the gateway's projector."""

    def __init__(self, ledger: Ledger, views_path: str | Path, policy: VerificationPolicy, scorers: ScorerFactory,
                 *, project: bool = False, batch: int = 64,
                 on_suspended: Callable[[str], None] | None = None,
                 on_suspensions: Callable[[set[str]], None] | None = None,
                 on_verdict: Callable[[dict[str, Any], dict[str, Any]], None] | None = None) -> None:
        self.ledger = ledger
        self.views_path = Path(views_path)
        self.policy = policy
        self.scorers = scorers
        self.project = project
        self.batch = batch
        self.on_suspended = on_suspended  # a gateway stops routing new jobs to the worker
        self.on_suspensions = on_suspensions  # every pass: all suspended addresses (the operator's too)
        self.on_verdict = on_verdict  # (receipt, verdict): a gateway sends the worker its `verdict` frame
        self.judged = 0
        self.errors = 0
        self._retry: dict[str, float] = {}  # job id -> monotonic time before which it is not retried
        self._projector: Projector | None = None
        self._reader: ViewReader | None = None  # kept open: opening one takes the views' write lock
        self.claims = CheckClaims(ledger.store.env)  # gateways on one store share the checks (claims.py)

    def _catch_up(self) -> None:
        if self._projector is None:
            self._projector = Projector(self.ledger.store, self.views_path)
        self._projector.catch_up()

    def close(self) -> None:
        if self._projector is not None:
            self._projector.stop()
            self._projector = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.claims.close()

    async def run_once(self) -> int:
        """One pass over the pending checks; returns how many verdicts this pass recorded."""
        if self.project:
            await asyncio.to_thread(self._catch_up)
        if self._reader is None:
            self._reader = ViewReader(self.views_path)
        reader = self._reader
        pending = reader.pending_checks(self.batch)
        if self.on_suspensions is not None:
            self.on_suspensions({r[0] for r in reader.db.execute(
                "SELECT address FROM worker_status WHERE status = 'suspended'")})
        await asyncio.to_thread(forfeit_sweep, self.ledger, reader)
        self._publish_lag(reader, pending)
        done = 0
        now = time.monotonic()
        for item in pending:
            if self._retry.get(item["job_id"], 0.0) > now:
                continue
            if await self._check(reader, item["job_id"]):
                done += 1
        return done

    async def _check(self, reader: ViewReader, job_id: str) -> bool:
        if not await asyncio.to_thread(self.claims.claim, job_id):
            return False  # another gateway's verifier is checking it
        try:
            return await self._check_claimed(reader, job_id)
        finally:
            await asyncio.to_thread(self.claims.release, job_id)

    async def _check_claimed(self, reader: ViewReader, job_id: str) -> bool:
        job: Job = await asyncio.to_thread(self.ledger.get, UUID(job_id))
        if job.verdict is not None or job.check is None:
            return False  # judged already (the views are behind)
        check = job.check
        reported_lps = check.get("reported_logprobs")  # the job carried logprobs: compare them too
        req = ScoreRequest(prompt_ids=check["prompt_ids"], output_ids=check["output_ids"],
                           temperature=check["temperature"], top_p=check["top_p"], model=job.model,
                           raw_logprobs=reported_lps is not None)
        try:
            scores = await self.scorers(job.model).score(req)
            if len(scores) != len(req.output_ids):
                raise ScoringError(f"{len(scores)} scores for {len(req.output_ids)} output ids")
        except Exception as exc:  # ScoringError or a broken reference: hold, retry later, never fail the job
            self.errors += 1
            metrics.VERIFIER_ERRORS.inc()
            self._retry[job_id] = time.monotonic() + RETRY_AFTER
            log.warning("job %s could not be checked (%s); it stays held", job_id, exc)
            return False
        stat = job_statistic(scores, check["temperature"], req.output_ids)
        reported = None
        if reported_lps is not None:
            if all(s.raw_logprob is not None for s in scores):
                reported = compare(reported_lps, scores)
            else:  # a scorer without raw logprobs: the job is judged on its ids alone
                log.warning("job %s carried logprobs but the scorer gave no raw logprobs to compare", job_id)
        assert job.worker is not None
        unsettled = reader.unsettled_of(job.worker)
        out = await asyncio.to_thread(self.ledger.run, record_verdict(job.id, check["ids_sha256"], stat, self.policy,
                                                                      unsettled, reported))
        self._retry.pop(job_id, None)
        if out["applied"]:
            self.judged += 1
            metrics.VERDICTS.labels(job.model, out["verdict"]).inc()
            if self.on_verdict is not None and job.receipt is not None:
                self.on_verdict(job.receipt, {
                    "verdict": out["verdict"], "method": self.policy.method, "tokens": stat.tokens,
                    "statistic": stat.as_dict() | ({REPORTED_KEY: reported.as_dict()} if reported else {}),
                    "ids_sha256": check["ids_sha256"],
                    "reward_forfeited": out["verdict"] == "failed" or bool(out["suspended"])})
            if out["suspended"]:
                metrics.SUSPENSIONS.labels("verifier").inc()
                log.warning("worker %s suspended: its evidence crossed the threshold", job.worker)
                if self.on_suspended is not None:
                    self.on_suspended(job.worker)
        return bool(out["applied"])

    @staticmethod
    def _publish_lag(reader: ViewReader, pending: list[dict[str, Any]]) -> None:
        count = reader.db.execute("SELECT COUNT(*) FROM checks WHERE status = 'pending'").fetchone()[0]
        metrics.VERIFIER_PENDING.set(count)
        if not pending:
            metrics.VERIFIER_LAG.set(0)
            return
        oldest = datetime.fromisoformat(pending[0]["requested_at"])
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        metrics.VERIFIER_LAG.set(max(0.0, (datetime.now(UTC) - oldest).total_seconds()))

    async def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        while not stop.is_set():
            try:
                done = await self.run_once()
            except Exception:  # keep verifying; the jobs stay held meanwhile
                log.exception("verifier pass failed; retrying")
                done = 0
            if not done:
                await asyncio.to_thread(stop.wait, interval)
        self.close()


class VerifierThread:
    """The verifier inside a gateway: a thread with its own event loop, so scoring never runs on
    (or waits for) the loop that serves clients."""

    def __init__(self, verifier: Verifier, interval: float = 1.0,
                 aclose: Callable[[], Awaitable[None]] | None = None) -> None:
        self.verifier = verifier
        self.interval = interval
        self._aclose = aclose  # closes the scorers' clients, on the loop they were used on (sglang's)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def _main(self) -> None:
        try:
            await self.verifier.run(self._stop, self.interval)
        finally:
            if self._aclose is not None:
                await self._aclose()

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="basis-verifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
