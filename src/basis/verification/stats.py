"""Job-level statistics and the per-job verdict (VERIFICATION.md "A statistic that has the right null").

Sampled jobs: z = sum_i (log q_i(t_i) - E[log q_i]) / sqrt(sum_i Var[log q_i]), roughly N(0, 1)
for an honest worker whatever the text; standardised per binding from measured honest runs
(``Calibration``), two-sided (greedy-when-asked-to-sample shows as z too *high*).
Greedy jobs: the share of tokens that are the reference argmax, against the honest rate.
Sampled jobs also carry a tail p-value: n x the smallest per-token ``TokenScore.tail`` (the claimed
distribution's mass on tokens at most as likely as the worker's). Under honest sampling each tail
is super-uniform, so P(p <= a) <= a whatever the model and text (a union bound, no calibration):
it catches what the sum averages away, such as the improbable entry into a stuck repetition
whose later tokens the reference, teacher-forced, finds likely.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from basis.engines.scoring import TokenScore

METHOD = "teacher-forced-z/v1"
GREEDY_TEMPERATURE = 1e-6  # at or below this the job is greedy
TAIL_ALPHA = 5e-4  # a sampled job fails when its tail p-value is below this (honest false fails <= 0.05 %)
Verdict = Literal["passed", "failed"]


@dataclass(frozen=True)
class JobStatistic:
    tokens: int
    greedy: bool
    z: float | None = None  # sampled jobs
    agreement: float | None = None  # greedy jobs: share of argmax tokens
    tail: float | None = None  # sampled jobs: min(1, n * min_i tail_i), a p-value (None: scorer gave no tails)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Calibration:
    """Honest behaviour of one binding, measured (scripts/bench_verify.py), never assumed."""

    z_mean: float = 0.0
    z_sd: float = 1.0
    greedy_agreement: float = 0.97


def job_statistic(scores: Sequence[TokenScore], temperature: float) -> JobStatistic:
    n = len(scores)
    if temperature <= GREEDY_TEMPERATURE:
        agree = sum(1 for s in scores if s.rank == 0) / n if n else 1.0
        return JobStatistic(tokens=n, greedy=True, agreement=agree)
    excess = sum(s.logprob - s.expected for s in scores)
    var = sum(s.variance for s in scores)
    z = excess / math.sqrt(var) if var > 0 else 0.0
    tails = [s.tail for s in scores]
    tail = None if not n or any(t is None for t in tails) else min(1.0, n * min(tails))  # type: ignore[type-var]
    return JobStatistic(tokens=n, greedy=False, z=z, tail=tail)


def standardised(stat: JobStatistic, calibration: Calibration) -> float:
    """The job's evidence in honest standard deviations (0: typical honest job)."""
    if stat.tokens == 0:
        return 0.0
    if stat.greedy:
        p = min(max(calibration.greedy_agreement, 1e-6), 1 - 1e-6)
        assert stat.agreement is not None
        return (stat.agreement - p) / math.sqrt(p * (1 - p) / stat.tokens)
    assert stat.z is not None
    return (stat.z - calibration.z_mean) / calibration.z_sd


def judge_job(stat: JobStatistic, calibration: Calibration, job_threshold: float,
              tail_alpha: float = TAIL_ALPHA) -> tuple[Verdict, float]:
    """(verdict, standardised evidence): a job fails when its evidence is beyond the threshold
    on either side (greedy: only below, and its evidence is capped at 0, since agreeing with the
    reference is never suspicious: an honest CPU worker agrees more often than the calibrated rate),
    or when its tail p-value is below ``tail_alpha``; such a job counts as evidence of at least
    ``job_threshold`` against the worker (below: its output was too unlikely)."""
    u = standardised(stat, calibration)
    if stat.greedy:  # agreeing with the reference is never evidence against the worker
        u = min(u, 0.0)
    bad = u < -job_threshold if stat.greedy else abs(u) > job_threshold
    if not stat.greedy and stat.tail is not None and stat.tail < tail_alpha:
        bad, u = True, min(u, -job_threshold)
    return ("failed" if bad else "passed"), u
