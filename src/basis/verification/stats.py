"""Job-level statistics and the per-job verdict (VERIFICATION.md "A statistic that has the right null").

Sampled jobs: z = sum_i (log q_i(t_i) - E[log q_i]) / sqrt(sum_i Var[log q_i]), roughly N(0, 1)
for an honest worker whatever the text; standardised per binding from measured honest runs
(``Calibration``), two-sided (greedy-when-asked-to-sample shows as z too *high*).
Greedy jobs: the share of tokens that are the reference argmax, against the honest rate.
Sampled jobs also carry a tail p-value from the two smallest per-token ``TokenScore.tail`` values
(the claimed distribution's mass on tokens at most as likely as the worker's): C(n, 2) x t_(2)^2.
Under honest sampling each tail is super-uniform given the tokens before it, so any two positions
are both below a with probability <= a^2, and P(p <= a) <= a whatever the model and text (a union
bound over pairs, no calibration): it catches what the sum averages away, such as improbable tokens
spliced into plausible text. Two, not one: an honest llama.cpp worker emits a token the reference
calls absurd (tail ~1e-5) about once in 10,000 positions, more than exact sampling allows
(float32 sampling and kernel rounding), which failed 2 of 682 honest SmolLM2 jobs on a single
token; needing two such tokens in one job failed none, and a one-token job keeps n x t_(1).
Sampled jobs also carry a repeat p-value (``repeat_pvalue``): the likelihood ratio of "a stuck
engine repeating one id" against the claimed sampler, an e-value valid by Ville's inequality
whatever the output length, so no calibration either. A stuck engine's z can sit near 0: once the
loop has started, the reference, teacher-forced, predicts each further repetition (induction);
the likelihood ratio counts the whole repeated run against the claimed distribution instead.
Sampled jobs also carry a temperature p-value (``temperature_pvalue``, new in v3): the likelihood
ratio of "the worker sampled at another temperature", T * s for s in TEMPERATURE_RATIOS (greedy is
s -> 0), against the claimed sampler, again an e-value valid by Ville's inequality. It catches what
z only leans towards: greedy-when-asked-to-sample (z ~ +1.8 a job) and a doubled temperature.
Sampled jobs also carry the opening z (``opening_z``, policy v5): the smallest z over the job's first
``OPENING_WINDOWS`` output tokens (a window longer than the job is the whole job). Another model's text
shows most in its opening and thins after it (docs/benchmarks.md "Job length"), so the whole-job z of a
long job dilutes what its opening shows; the fast CUSUM (sequential.py) counts the opening z instead.
It decides no job on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from basis.engines.scoring import TEMPERATURE_RATIOS, TokenScore

# v2: the repeat test beside z, and the tail test on two tokens; v3: the temperature test
METHOD = "teacher-forced-z/v3"
GREEDY_TEMPERATURE = 1e-6  # at or below this the job is greedy
TAIL_ALPHA = 5e-4  # a sampled job fails when its tail p-value is below this (honest false fails <= 0.05 %)
REPEAT_ALPHA = 2e-4  # a sampled job fails when its repeat p-value is below this (honest false fails <= 0.02 %)
# a sampled job fails when its temperature p-value is below this (honest false fails <= 0.02 %)
TEMPERATURE_ALPHA = 2e-4
LOG_E_FLOOR = -1e6  # a temperature log E of -inf (every alternative impossible) is recorded as this
# the opening windows (output tokens) whose smallest z is the fast CUSUM's evidence (policy v5): two
# windows, so a short opening (24) and a longer one (48) both show; measured, docs/benchmarks.md "Policy v5"
OPENING_WINDOWS = (24, 48)
Verdict = Literal["passed", "failed"]


@dataclass(frozen=True)
class JobStatistic:
    tokens: int
    greedy: bool
    z: float | None = None  # sampled jobs
    agreement: float | None = None  # greedy jobs: share of argmax tokens
    tail: float | None = None  # sampled jobs: tail_pvalue of the per-token tails (None: scorer gave no tails)
    repeat: float | None = None  # sampled jobs: the repeat p-value (None: the ids were not given)
    # sampled jobs: the temperature p-value (None: the scorer gave no temperature factors)
    temperature: float | None = None
    # the ratio s of TEMPERATURE_RATIOS whose alternative explains the output best (largest
    # likelihood ratio): s < 1 a colder sampler (output too likely), s > 1 a hotter one
    temperature_ratio: float | None = None
    # sampled jobs: log E of the temperature test, unclipped (temperature = min(1, exp(-log E)));
    # E < 1 is evidence *for* the worker, which the per-worker e-detector counts (sequential.py)
    temperature_log_e: float | None = None
    # sampled jobs: the smallest z over the first OPENING_WINDOWS tokens (None: judged before policy v5)
    opening_z: float | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Calibration:
    """Honest behaviour of one binding, measured (scripts/bench_verify.py), never assumed."""

    z_mean: float = 0.0
    z_sd: float = 1.0
    greedy_agreement: float = 0.97


def repeat_pvalue(logprobs: Sequence[float], ids: Sequence[int]) -> float:
    """p-value of "the output ends in one id repeated" against honest sampling from the claimed q.

    Alternative H_k (k >= 1): the first k tokens are sampled honestly, then token k is repeated to
    the end. Its likelihood ratio against the claimed sampler is E_k = 1 / prod_{i > k} q_i(t_i)
    when t_k = ... = t_n, else 0. Each E_k, followed token by token, is a non-negative martingale
    with mean 1 under honest sampling, so the mixture E = sum_k w_k E_k with fixed weights
    (w_1 = 1/2, w_k = 1 / (2 k (k - 1)) for k >= 2, summing to 1) is one too, and by Ville's
    inequality P(E >= 1 / alpha at any length) <= alpha: ``min(1, 1 / E)`` is a valid p-value
    for any stopping rule (end-of-turn or max_tokens). ``logprobs`` are log q_i(t_i) as scored
    (floored: a floor only lowers E, so the test stays valid)."""
    n = len(ids)
    if n < 2 or len(logprobs) != n:
        return 1.0
    start = n - 1  # 0-based index of the first token of the final run of one id
    while start > 0 and ids[start - 1] == ids[n - 1]:
        start -= 1
    suffix = 0.0  # -sum of log q over positions after k (0-based positions k .. n-1)
    terms = []
    for k in range(n - 1, start, -1):  # 1-based k = start + 1 .. n - 1: positions k .. n - 1 repeat id k
        suffix -= float(logprobs[k])
        weight = 0.5 if k == 1 else 1.0 / (2 * k * (k - 1))
        terms.append(math.log(weight) + suffix)
    if not terms:
        return 1.0
    top = max(terms)
    log_e = top + math.log(sum(math.exp(t - top) for t in terms))
    return 1.0 if log_e <= 0 else math.exp(-log_e)


def _logsumexp(xs: Sequence[float]) -> float:
    top = max(xs)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(x - top) for x in xs))


def temperature_evidence(lrs: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(p-value, best ratio) of the temperature test (``temperature_test``)."""
    log_e, best = temperature_test(lrs)
    return (1.0 if log_e <= 0 else math.exp(-log_e)), best


def temperature_test(lrs: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(log E, best ratio) of the temperature test from the per-position log factors
    (``TokenScore.temperature_lr``, one entry per ratio of TEMPERATURE_RATIOS); log E is not
    clipped at 0 (-inf: every alternative got factor 0).

    Alternative s: the worker sampled from q^(s), proportional to q^(1/s) on the claimed support.
    Its factor at a position, q^(s)(t) / max(q(t), F), has mean sum_j q_j q^(s)_j / max(q_j, F) <= 1
    under honest sampling given the tokens before it (the floor F only lowers it), so the product
    over positions is a non-negative supermartingale of initial value 1, and so is the mixture
    E = sum_s prod_i factor_{i,s} / |S|. By Ville's inequality P(E >= 1/a at any length) <= a:
    ``min(1, 1 / E)`` is a valid p-value for any stopping rule, with no calibration."""
    k = len(TEMPERATURE_RATIOS)
    if not lrs:
        return 0.0, 1.0
    sums = [math.fsum(float(lr[j]) for lr in lrs) for j in range(k)]  # -inf: that ratio got factor 0
    log_e = _logsumexp(sums) - math.log(k)
    best = TEMPERATURE_RATIOS[max(range(k), key=lambda j: sums[j])]
    return log_e, best


def temperature_pvalue(lrs: Sequence[Sequence[float]]) -> float:
    """The temperature test's p-value (``temperature_evidence``)."""
    return temperature_evidence(lrs)[0]


def tail_pvalue(tails: Sequence[float]) -> float:
    """C(n, 2) x (second smallest tail)^2, a valid p-value for two improbable tokens (module doc)."""
    n = len(tails)
    if n == 1:
        return min(1.0, tails[0])
    second = sorted(tails)[1]
    return min(1.0, n * (n - 1) / 2 * second * second)


def job_statistic(scores: Sequence[TokenScore], temperature: float,
                  output_ids: Sequence[int] | None = None) -> JobStatistic:
    """``output_ids`` (the worker's ids, in order) enable the repeat test of sampled jobs."""
    n = len(scores)
    if temperature <= GREEDY_TEMPERATURE:
        agree = sum(1 for s in scores if s.rank == 0) / n if n else 1.0
        return JobStatistic(tokens=n, greedy=True, agreement=agree)
    z = _z(scores)
    opening_z = min(_z(scores[:w]) for w in OPENING_WINDOWS)  # a window past the end: the whole job
    tails = [s.tail for s in scores]
    tail = None if not n or any(t is None for t in tails) else tail_pvalue(tails)  # type: ignore[arg-type]
    repeat = None
    if output_ids is not None and len(output_ids) == n:
        repeat = repeat_pvalue([s.logprob for s in scores], output_ids)
    temperature = ratio = log_e = None
    lrs = [s.temperature_lr for s in scores]
    if n and all(lr is not None and len(lr) == len(TEMPERATURE_RATIOS) for lr in lrs):
        log_e, ratio = temperature_test(lrs)  # type: ignore[arg-type]
        log_e = max(log_e, LOG_E_FLOOR)  # finite for JSON; any value this low resets the e-detector alike
        temperature = 1.0 if log_e <= 0 else math.exp(-log_e)
    return JobStatistic(tokens=n, greedy=False, z=z, tail=tail, repeat=repeat, temperature=temperature,
                        temperature_ratio=ratio, temperature_log_e=log_e, opening_z=opening_z)


def _z(scores: Sequence[TokenScore]) -> float:
    excess = sum(s.logprob - s.expected for s in scores)
    var = sum(s.variance for s in scores)
    return excess / math.sqrt(var) if var > 0 else 0.0


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


def opening_evidence(stat: JobStatistic, calibration: Calibration) -> float | None:
    """The fast CUSUM's evidence for a sampled job (policy v5): its opening z, standardised like z.
    None for a greedy job and for a statistic from before v5: the fast CUSUM then counts the job's
    evidence u as before (sequential.py)."""
    if stat.greedy or stat.opening_z is None or stat.tokens == 0:
        return None
    return (stat.opening_z - calibration.z_mean) / calibration.z_sd


def judge_job(stat: JobStatistic, calibration: Calibration, job_threshold: float,
              tail_alpha: float = TAIL_ALPHA, repeat_alpha: float = REPEAT_ALPHA,
              temperature_alpha: float = TEMPERATURE_ALPHA) -> tuple[Verdict, float]:
    """(verdict, standardised evidence): a job fails when its evidence is beyond the threshold
    on either side (greedy: only below, and its evidence is capped at 0, since agreeing with the
    reference is never suspicious: an honest CPU worker agrees more often than the calibrated rate),
    or when its tail p-value is below ``tail_alpha`` or its repeat p-value below ``repeat_alpha``;
    such a job counts as evidence of at least ``job_threshold`` against the worker (below: its
    output was too unlikely as a whole). Else a temperature p-value below ``temperature_alpha``
    fails it; unless z failed it already (its evidence stands), its evidence is ``job_threshold``
    on the side of the ratio that won: +job_threshold for a colder sampler (s < 1, output too likely:
    the CUSUM's upper side), -job_threshold for a hotter one (a statistic without the ratio: the
    sign of z). A statistic without a temperature p-value (v2
    and older verdicts) is judged exactly as before."""
    u = standardised(stat, calibration)
    if stat.greedy:  # agreeing with the reference is never evidence against the worker
        u = min(u, 0.0)
    bad = u < -job_threshold if stat.greedy else abs(u) > job_threshold
    if not stat.greedy and ((stat.tail is not None and stat.tail < tail_alpha)
                            or (stat.repeat is not None and stat.repeat < repeat_alpha)):
        bad, u = True, min(u, -job_threshold)
    elif not stat.greedy and stat.temperature is not None and stat.temperature < temperature_alpha:
        if not bad:  # a job z failed already keeps z's evidence (its side and size)
            colder = stat.temperature_ratio < 1 if stat.temperature_ratio is not None else (stat.z or 0.0) > 0
            u = job_threshold if colder else -job_threshold
        bad = True
    return ("failed" if bad else "passed"), u
