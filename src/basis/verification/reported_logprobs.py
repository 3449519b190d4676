"""Reported log-probabilities against the reference (issue 14, DESIGN §1.6).

A job that asked for logprobs carries the worker's report of each output token's log-probability
(protocol v3: the raw log-softmax, temperature 1, before top_p or a grammar). When such a job is
checked, the reference scorer also yields that value teacher-forced (``TokenScore.raw_logprob``).
A token whose report is further than ``TOKEN_TOLERANCE`` from it is *far*; one far token, or a mean
distance over the job above ``MEAN_TOLERANCE``, makes the job fail its verdict: it counts as evidence
``-job_threshold`` against the worker, like a failed statistic. The comparison is recorded inside
the verdict's ``statistic`` (key ``reported_logprobs``), so the audit re-decides it from the event.

Only the chosen token's value is compared (the top-k alternatives are not kept for the check).

Tolerances, measured with scripts/bench_reported_logprobs.py (SmolLM2-135M-Instruct Q4_1 on the
CPU; honest llama.cpp worker at 1-2 threads against the reference at 1-2 threads and 1, 16 or 64
rows per decode; temperatures 0-1.3; 1609 tokens in 32 jobs): the thread count changes nothing,
but a batched (prefill) row differs from a one-token decode by kernel rounding on quantized
weights: |reported - reference| had mean 0.036, p99 0.23, max 0.46 nats per token, and at most
0.083 nats as a job's mean. The tolerances are 3.3x and 6x those maxima (and the mean's is above
the largest single-token difference, so a one-token job is judged by the token rule alone); a
made-up number misses by whole nats. docs/logprobs.md has the figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from basis.engines.scoring import TokenScore

TOKEN_TOLERANCE = 1.5  # nats: one token reported further than this from the reference is far
MEAN_TOLERANCE = 0.5  # nats: a job whose mean |reported - reference| exceeds this is off
MISSING_ERROR = 30.0  # nats counted for an entry that is missing or not a number (LOGPROB_FLOOR's size)
KEY = "reported_logprobs"  # the verdict statistic's entry


@dataclass(frozen=True)
class ReportedComparison:
    tokens: int  # tokens compared
    far: int  # of them, reported further than ``token_tolerance`` from the reference (or not a number)
    mean_abs_error: float
    max_abs_error: float
    token_tolerance: float
    mean_tolerance: float

    @property
    def consistent(self) -> bool:
        return self.far == 0 and self.mean_abs_error <= self.mean_tolerance

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(reported: Sequence[float | None], scores: Sequence[TokenScore], *,
            token_tolerance: float = TOKEN_TOLERANCE, mean_tolerance: float = MEAN_TOLERANCE) -> ReportedComparison:
    """The worker's reported logprobs against the reference's raw ones (scored with
    ``ScoreRequest.raw_logprobs``). A missing entry, or one that is not a finite number, is far
    (and counts as an error of ``MISSING_ERROR`` in the mean); so is each entry beyond the output."""
    errors: list[float] = []
    far = 0
    for i, score in enumerate(scores):
        if score.raw_logprob is None:
            raise ValueError("the reference was not asked for raw logprobs")
        value = reported[i] if i < len(reported) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            errors.append(MISSING_ERROR)
            far += 1
            continue
        err = abs(float(value) - score.raw_logprob)
        errors.append(err)
        far += err > token_tolerance
    far += max(0, len(reported) - len(scores))  # entries for tokens never output
    return ReportedComparison(tokens=len(scores), far=far, mean_abs_error=sum(errors) / len(errors) if errors else 0.0,
                              max_abs_error=max(errors, default=0.0), token_tolerance=token_tolerance,
                              mean_tolerance=mean_tolerance)


def judge_reported(verdict: str, evidence: float, comparison: Mapping[str, Any] | None, job_threshold: float
                   ) -> tuple[str, float]:
    """The verdict and evidence once the reported logprobs are taken into account: far-off reports
    fail the job and count at least ``job_threshold`` against the worker. ``comparison``: the
    recorded ``ReportedComparison.as_dict()`` (None: the job carried no logprobs)."""
    if comparison is None or (int(comparison["far"]) == 0
                              and float(comparison["mean_abs_error"]) <= float(comparison["mean_tolerance"])):
        return verdict, evidence
    return "failed", min(evidence, -job_threshold)


def split_statistic(statistic: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A recorded verdict statistic as (the job statistic's own fields, the reported comparison)."""
    own = dict(statistic)
    return own, own.pop(KEY, None)
