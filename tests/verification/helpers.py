"""Shared pieces of the verification tests: a ledger with verification on, and contributor jobs
that carry what a verifier needs (ids and sampling parameters)."""

from __future__ import annotations

import uuid

from basis.ledger.projections import Projector, ViewReader
from basis.ledger.service import Ledger
from basis.verification.policy import VerificationPolicy
from basis.verification.stats import JobStatistic

HONEST = "0x" + "11" * 20
CHEAT = "0x" + "22" * 20
# Probation 2, then 1 job in 2 sampled: small numbers so a test sees every path quickly.
POLICY = VerificationPolicy(enabled=True, sample_bps=5000, probation_jobs=2, job_threshold=6.0,
                            worker_threshold=12.0, drift=1.0)


def passing(tokens: int = 8) -> JobStatistic:
    return JobStatistic(tokens=tokens, greedy=False, z=0.3)


def failing(tokens: int = 8) -> JobStatistic:
    return JobStatistic(tokens=tokens, greedy=False, z=-7.5)  # fails one job; two suspend


def contributor_job(ledger: Ledger, account_id, worker: str, *, output_tokens: int = 8, temperature: float = 0.7,
                    model: str = "basis-default", outcome: str = "completed", output_ids: list[int] | None = None):
    """A finished contributor job; returns (job id, receipt)."""
    if output_ids is not None:
        output_tokens = len(output_ids)
    job_id = uuid.uuid4()
    ledger.run(ledger.accept_job(job_id=job_id, account_id=account_id, model=model, prompt_tokens=5,
                                 max_output_tokens=64, assignment=("contributor", worker)))
    ids = output_ids if output_ids is not None else list(range(100, 100 + output_tokens))
    check = {"prompt_ids": [1, 2, 3, 4, 5], "output_ids": ids,
             "temperature": temperature, "top_p": 1.0}
    receipt = ledger.run(ledger.finish_job(job_id, outcome=outcome, output_tokens=output_tokens,
                                           finish_reason="length", check=check))
    return job_id, receipt


def caught_up_views(ledger: Ledger, views_path) -> ViewReader:
    """The views with everything the ledger committed so far (a projector run to the end, stopped)."""
    projector = Projector(ledger.store, views_path)
    projector.catch_up()
    projector.stop()
    return ViewReader(views_path)

