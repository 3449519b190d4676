"""Verification as ledger commands (DESIGN 1.6): selection, verdicts and their consequences.

Everything a verdict causes happens in the command that records it, in one transaction: the
verdict in the job's stream; for a failed job its charge refunded (a ``refund`` credit whose
external id is the job id) and its reward forfeited; the worker's evidence updated and, once it
crosses the published threshold, the worker suspended and every reward of it not yet settled
forfeited. A second verdict for the same job is refused by the job itself, so a verifier that
crashed and retried, or two verifiers racing, can never refund or forfeit twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any
from uuid import UUID

from basis.ledger import ids
from basis.ledger.accounts import Account
from basis.ledger.committer import UnitOfWork
from basis.ledger.errors import InvalidTransition, LedgerError, UnknownJob
from basis.ledger.jobs import Job
from basis.ledger.workers import Worker
from basis.verification.policy import VerificationPolicy, sampled
from basis.verification.reported_logprobs import KEY as REPORTED_KEY
from basis.verification.reported_logprobs import ReportedComparison, judge_reported
from basis.verification.sequential import e_threshold
from basis.verification.stats import JobStatistic, judge_job, opening_evidence

SECRET_FILE = "verification.secret"
OPERATOR = "operator"


class UnknownWorker(LedgerError):
    code = "unknown_worker"


def ids_digest(output_ids: Sequence[int]) -> str:
    """The SHA-256 of the checked ids, as recorded in the verdict (never the ids themselves):
    ``sha256`` of the compact JSON array of the output token ids, ``0x``-prefixed."""
    return "0x" + hashlib.sha256(json.dumps([int(i) for i in output_ids], separators=(",", ":")).encode()).hexdigest()


def sampling_secret(home: Path) -> bytes:
    """The key that decides which jobs are sampled. It lives under the operator's home (mode
    0600), never leaves it, and no worker can compute the choice without it."""
    path = Path(os.environ.get("BASIS_VERIFICATION_SECRET_FILE") or home / SECRET_FILE)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process of this gateway made it first
            return bytes.fromhex(path.read_text().strip())
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    return bytes.fromhex(path.read_text().strip())


# -- selection (inside ``finish_job``: atomic with the receipt, so settlement never races it) -----
def select_for_check(uow: UnitOfWork, job: Job, check: dict[str, Any], policy: VerificationPolicy,
                     secret: bytes, models: Collection[str] | None = None) -> str | None:
    """Record the job's check request when it is chosen: every job of a worker's probation (its
    first ``probation_jobs`` checked jobs, and as many again after each reinstatement), else the
    keyed sample. Returns the reason or None."""
    if not policy.enabled or job.receipt is None or job.served_by != "contributor" or job.worker is None:
        return None
    if models is not None and job.model not in models:
        return None  # no reference to check this binding against here: never hold what cannot be judged
    output_ids = [int(i) for i in check["output_ids"]][: job.output_tokens]
    if not output_ids or len(output_ids) != job.output_tokens:
        return None  # nothing to score, or ids the gateway did not count: the receipt stands
    worker = uow.find(Worker, ids.worker_id(job.worker))
    if worker is None or worker.on_probation(policy.probation_jobs):
        reason = "probation"
    elif sampled(secret, str(job.id), policy.sample_bps):
        reason = "sample"
    else:
        return None
    job.request_check(reason=reason, prompt_ids=[int(i) for i in check["prompt_ids"]], output_ids=output_ids,
                      temperature=float(check["temperature"]), top_p=float(check["top_p"]),
                      ids_sha256=ids_digest(output_ids), **_reported(check, len(output_ids)))
    return reason


def _reported(check: dict[str, Any], n: int) -> dict[str, Any]:
    """The worker's reported logprobs of the checked ids, when the job carried them."""
    reported = check.get("reported_logprobs")
    return {} if reported is None else {"reported_logprobs": [float(x) for x in reported][:n]}


# -- verdicts ----------------------------------------------------------------------------------
def record_verdict(job_id: UUID, ids_sha256: str, statistic: JobStatistic, policy: VerificationPolicy,
                   unsettled: Sequence[str] = (), reported: ReportedComparison | None = None
                   ) -> Callable[[UnitOfWork], dict[str, Any]]:
    """Judge the job from its statistic and apply every consequence. ``unsettled``: the worker's
    issued, unsettled receipts as the views know them (forfeited too if this verdict suspends it;
    settlement forfeits any the views had not seen yet while the worker stays suspended).
    ``reported``: the worker's reported logprobs against the reference (a job that carried them):
    far off, the job fails (basis.verification.reported_logprobs).
    Returns {verdict, applied (False: it already had one), suspended}."""

    def cmd(uow: UnitOfWork) -> dict[str, Any]:
        job = uow.find(Job, job_id)
        if job is None:
            raise UnknownJob(f"no job {job_id}")
        if job.verdict is not None:  # a retry after a crash, or another verifier was first
            return {"verdict": job.verdict["verdict"], "applied": False, "suspended": False}
        calibration = policy.calibration_for(job.model)
        tail_alpha = policy.tail_alpha  # the tail test on the scorer's per-token tails (verification.stats)
        repeat_alpha = policy.repeat_alpha  # the repeat (stuck engine) test on the worker's ids
        temperature_alpha = policy.temperature_alpha  # the temperature test (another T, greedy included)
        verdict, u = judge_job(statistic, calibration, policy.job_threshold, tail_alpha=tail_alpha,
                               repeat_alpha=repeat_alpha, temperature_alpha=temperature_alpha)
        stat = statistic.as_dict()
        if reported is not None:
            stat[REPORTED_KEY] = reported.as_dict()
            verdict, u = judge_reported(verdict, u, stat[REPORTED_KEY], policy.job_threshold)
        job.record_verdict(verdict=verdict, method=policy.method, tokens=statistic.tokens,
                           statistic=stat, evidence=u, job_threshold=policy.job_threshold,
                           calibration=asdict(calibration), ids_sha256=ids_sha256, tail_alpha=tail_alpha,
                           repeat_alpha=repeat_alpha, temperature_alpha=temperature_alpha)
        if verdict == "failed":
            _refund(uow, job)
            if not job.reward_forfeited:
                job.forfeit_reward(reason="failed verification", evidence=[str(job.id)], amount=_reward(job))
        assert job.worker is not None
        worker = uow.find(Worker, ids.worker_id(job.worker))
        if worker is None:
            worker = uow.add(Worker(address=job.worker))
        worker.record_check(job_id=str(job.id), verdict=verdict, evidence=u, drift=policy.drift,
                            log_e=statistic.temperature_log_e, worker_e_alpha=policy.worker_e_alpha,
                            worker_threshold=policy.worker_threshold, fast_drift=policy.fast_drift,
                            fast_threshold=policy.fast_threshold,
                            fast_evidence=opening_evidence(statistic, calibration))
        suspended = False
        crossed = _crossed(worker, policy) if not worker.is_suspended else None
        if crossed is not None:
            reason, evidence = crossed
            worker.suspend(by="verifier", reason=reason, evidence=evidence)
            _forfeit_unsettled(uow, unsettled, worker, exclude=job.id)
            suspended = True
        uow.release(job)
        return {"verdict": verdict, "applied": True, "suspended": suspended}

    return cmd


def _crossed(worker: Worker, policy: VerificationPolicy) -> tuple[str, list[str]] | None:
    """(reason, evidence job ids) when a per-worker test crossed: the reason names each detector
    that crossed and at what level; the evidence is the jobs since that detector was last at zero
    (several crossed: the longest run, which holds the others, since all end at the latest job)."""
    ev = worker.evidence
    reasons, runs = [], []
    if ev.crossed(policy.worker_threshold):
        reasons.append(f"evidence {ev.level:.2f} crossed worker_threshold {policy.worker_threshold}")
        runs.append(worker.evidence_jobs)
    if ev.e_crossed(policy.worker_e_alpha):
        reasons.append(f"e-detector log E {ev.e_level:.2f} crossed log(1/worker_e_alpha) "
                       f"{e_threshold(policy.worker_e_alpha):.2f} (worker_e_alpha {policy.worker_e_alpha:g})")
        runs.append(worker.e_evidence_jobs)
    if ev.fast_crossed(policy.fast_threshold):
        reasons.append(f"fast CUSUM {ev.fast:.2f} crossed fast_threshold {policy.fast_threshold} "
                       f"(fast_drift {policy.fast_drift})")
        runs.append(worker.fast_evidence_jobs)
    if not reasons:
        return None
    return "; ".join(reasons), list(max(runs, key=len))


def _refund(uow: UnitOfWork, job: Job) -> None:
    """Give the account back the job's charge, once (the CreditRef index refuses a second)."""
    from basis.ledger.accounts import CreditRef

    assert job.receipt is not None
    charged = int(job.receipt["core"]["charged"])
    if charged == 0 or uow.find(CreditRef, ids.credit_ref_id("refund", str(job.id))) is not None:
        return
    acc = uow.find(Account, job.account_id)
    assert acc is not None
    backed = acc.unsettled_deposit_spend.get(str(job.id), 0)
    acc.credit(source="refund", external_id=str(job.id), amount=charged,
               memo="job failed verification", backed=backed)
    uow.add(CreditRef(source="refund", external_id=str(job.id), account_id=job.account_id, amount=charged))


def _forfeit_unsettled(uow: UnitOfWork, job_ids: Sequence[str], worker: Worker, exclude: UUID | None = None) -> int:
    """Forfeit the unsettled rewards of a just-suspended worker, citing its evidence."""
    done = 0
    evidence = list(worker.suspended["evidence"]) if worker.suspended else []  # type: ignore[call-overload]
    for raw in job_ids:
        jid = UUID(raw)
        if jid == exclude:
            continue
        job = uow.find(Job, jid)
        if job is None or job.worker != worker.address or not _forfeitable(job):
            continue
        job.forfeit_reward(reason="worker suspended", evidence=evidence, amount=_reward(job))
        uow.release(job)
        done += 1
    return done


def _reward(job: Job) -> int:
    assert job.receipt is not None
    return int(job.receipt["core"]["reward"])


def _forfeitable(job: Job) -> bool:
    """An issued reward not yet settled, forfeited or committed to a batch in flight (that batch pays
    it; if the batch is abandoned instead, the sweep or the next proposal forfeits it)."""
    return (job.receipt is not None and job.settlement is None and job.in_batch is None
            and not job.reward_forfeited and int(job.receipt["core"]["reward"]) > 0)


def forfeit_while_suspended(address: str, job_ids: Sequence[str]) -> Callable[[UnitOfWork], int]:
    """Forfeit the rewards of a suspended worker that its suspension did not reach: receipts the
    views had not seen yet when it was suspended (they lag the ledger), and jobs that were in flight
    then and finished after. Nothing for a worker reinstated meanwhile, nor for a reward already
    forfeited or settled. Returns how many were forfeited."""

    def cmd(uow: UnitOfWork) -> int:
        worker = uow.find(Worker, ids.worker_id(address))
        if worker is None or not worker.is_suspended:
            return 0
        return _forfeit_unsettled(uow, job_ids, worker)

    return cmd


# -- the operator's hand -----------------------------------------------------------------------
def suspend_worker(address: str, reason: str, unsettled: Sequence[str] = ()) -> Callable[[UnitOfWork], int]:
    """Suspend by hand: recorded with the operator's reason; its unsettled rewards forfeited.
    Returns how many rewards were forfeited."""

    def cmd(uow: UnitOfWork) -> int:
        worker = _worker(uow, address)
        worker.suspend(by=OPERATOR, reason=reason, evidence=[])
        return _forfeit_unsettled(uow, unsettled, worker)

    return cmd


def reinstate_worker(address: str, reason: str) -> Callable[[UnitOfWork], None]:
    """Back in service, evidence cleared, and on probation again: a worker that was suspended
    (for cheating, or by hand) earns its way back to sampling the way a new one does."""

    def cmd(uow: UnitOfWork) -> None:
        worker = _worker(uow, address)
        worker.reinstate(by=OPERATOR, reason=reason)
        worker.start_probation(from_checked=worker.evidence.checked, reason="reinstated")

    return cmd


def _worker(uow: UnitOfWork, address: str) -> Worker:
    worker = uow.find(Worker, ids.worker_id(address))
    if worker is None:
        raise UnknownWorker(f"no worker {address.lower()} has ever connected to this network")
    return worker


# -- settlement's view of a reward -------------------------------------------------------------
def settleable_reward(uow: UnitOfWork, job: Job) -> int | None:
    """The reward this job's receipt carries into a rewards tree now: None while it awaits its
    verdict (held out of the batch), 0 once forfeited. A job of a worker suspended meanwhile has
    its reward forfeited here (in the proposing command), so nothing of a suspended worker that
    is not yet settled is ever paid."""
    assert job.receipt is not None
    if job.awaiting_verdict:
        return None
    if not job.reward_forfeited and job.worker and _forfeitable(job):
        worker = uow.find(Worker, ids.worker_id(job.worker))
        if worker is not None and worker.is_suspended:
            job.forfeit_reward(reason="worker suspended", amount=_reward(job),
                               evidence=list(worker.suspended["evidence"]))  # type: ignore[index]
    return 0 if job.reward_forfeited else int(job.receipt["core"]["reward"])


__all__ = ["InvalidTransition", "UnknownWorker", "forfeit_while_suspended", "ids_digest", "record_verdict",
           "reinstate_worker", "sampling_secret", "select_for_check", "settleable_reward", "suspend_worker"]
