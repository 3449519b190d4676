"""The job statistic, the per-job verdict and the per-worker CUSUM (pure arithmetic, no model)."""

from __future__ import annotations

import math
import random

import pytest

from basis.engines.scoring import TokenScore
from basis.verification.policy import BINDING_CALIBRATION, VerificationPolicy, sampled
from basis.verification.sequential import WorkerEvidence
from basis.verification.stats import (
    REPEAT_ALPHA,
    TAIL_ALPHA,
    Calibration,
    job_statistic,
    judge_job,
    repeat_pvalue,
    tail_pvalue,
)


def _honest_job(rng: random.Random, n: int) -> list[TokenScore]:
    """Tokens drawn from random categorical distributions, scored against those distributions."""
    out = []
    for _ in range(n):
        w = [rng.random() ** 3 for _ in range(20)]
        q = [x / sum(w) for x in w]
        t = rng.choices(range(20), weights=q)[0]
        e = sum(p * math.log(p) for p in q)
        v = sum(p * (math.log(p) - e) ** 2 for p in q)
        tail = sum(p for p in q if p <= q[t])
        rank = sum(p > q[t] for p in q)
        out.append(TokenScore(logprob=math.log(q[t]), expected=e, variance=v, rank=rank, tail=tail))
    return out


def test_honest_z_is_roughly_standard_normal_and_tails_are_valid_p_values():
    rng = random.Random(5)
    stats = [job_statistic(_honest_job(rng, 32), 1.0) for _ in range(200)]
    zs = [s.z for s in stats]
    mean = sum(zs) / len(zs)
    sd = math.sqrt(sum((z - mean) ** 2 for z in zs) / len(zs))
    assert abs(mean) < 0.2 and 0.8 < sd < 1.2
    assert sum(s.tail < 0.05 for s in stats) <= 0.05 * len(stats) + 10  # super-uniform, union bound
    policy = VerificationPolicy()
    assert all(judge_job(s, Calibration(), policy.job_threshold)[0] == "passed" for s in stats)


def test_two_absurd_tokens_fail_the_job_through_its_tail_even_when_z_is_fine():
    rng = random.Random(6)
    scores = _honest_job(rng, 40)
    absurd = TokenScore(logprob=-14.0, expected=-2.0, variance=3.0, rank=900, tail=1e-7)
    scores[3] = scores[17] = absurd
    stat = job_statistic(scores, 1.0)
    assert abs(stat.z) < 6 and stat.tail == pytest.approx(40 * 39 / 2 * 1e-14)
    verdict, u = judge_job(stat, Calibration(), 6.0)
    assert verdict == "failed" and u <= -6.0
    assert judge_job(stat, Calibration(), 6.0, tail_alpha=1e-12)[0] == "passed"
    no_tails = [TokenScore(s.logprob, s.expected, s.variance, s.rank) for s in scores]  # a scorer without tails
    assert job_statistic(no_tails, 1.0).tail is None
    assert judge_job(job_statistic(no_tails, 1.0), Calibration(), 6.0)[0] == "passed"


def test_one_absurd_token_alone_is_an_honest_engine_glitch_not_a_failed_job():
    """Real honest llama.cpp workers emit a token of tail ~1e-5 about once in 10,000 positions
    (docs/verification.md): one such token must not fail a job; a one-token job keeps its own tail."""
    rng = random.Random(6)
    scores = _honest_job(rng, 40)
    scores[3] = TokenScore(logprob=-17.9, expected=-2.0, variance=3.3, rank=1226, tail=7.8e-6)
    assert judge_job(job_statistic(scores, 0.7), Calibration(), 5.0)[0] == "passed"
    assert tail_pvalue([7.8e-6]) == pytest.approx(7.8e-6)
    assert tail_pvalue([0.5, 1e-3, 0.2, 1e-3]) == pytest.approx(6 * 1e-6)


def test_greedy_jobs_judge_argmax_agreement_and_never_count_agreement_against_the_worker():
    agree = [TokenScore(logprob=-0.1, expected=-0.5, variance=0.3, rank=0)] * 48
    stat = job_statistic(agree, 0.0)
    assert stat.greedy and stat.agreement == 1.0 and stat.tail is None
    verdict, u = judge_job(stat, Calibration(greedy_agreement=0.97), 6.0)
    assert verdict == "passed" and u == 0.0
    wrong = agree[:24] + [TokenScore(logprob=-3, expected=-0.5, variance=0.3, rank=5)] * 24
    verdict, u = judge_job(job_statistic(wrong, 0.0), Calibration(greedy_agreement=0.97), 6.0)
    assert verdict == "failed" and u < -6
    ev = WorkerEvidence()
    for _ in range(500):  # a long run of perfect greedy jobs never suspends
        ev = ev.update(0.0, failed=False, drift=1.0)
    assert not ev.crossed(12.0)


def test_cusum_is_two_sided_and_forgets_noise():
    ev = WorkerEvidence()
    for u in (2.5, 3.0, 2.8, 3.1, 2.9, 3.0):  # output steadily too likely: greedy when asked to sample
        ev = ev.update(u, failed=False, drift=1.0)
    assert ev.upper > ev.lower == 0 and ev.checked == 6
    rng = random.Random(9)
    honest = WorkerEvidence()
    for _ in range(5000):
        honest = honest.update(rng.gauss(0, 1), failed=False, drift=1.0)
        assert not honest.crossed(12.0)


def test_policy_publishes_the_calibration_of_each_bound_file():
    class B:
        def __init__(self, gguf):
            self.gguf = gguf

    policy = VerificationPolicy.for_bindings({"basis-default": B("smollm2-135m-instruct"), "x": B("/some/file.gguf")})
    pub = policy.public()
    assert pub["calibration"] == {"basis-default": vars(BINDING_CALIBRATION["smollm2-135m-instruct"])}
    assert pub["tail_alpha"] == TAIL_ALPHA and pub["job_threshold"] == policy.job_threshold
    assert pub["repeat_alpha"] == REPEAT_ALPHA
    assert policy.calibration_for("x") == Calibration()
    assert policy.calibration_for("gemma3-270m") == BINDING_CALIBRATION["gemma3-270m"]
    assert policy.calibration_for("y", gguf="gemma3-270m") == BINDING_CALIBRATION["gemma3-270m"]
    hits = sum(sampled(b"k", f"job-{i}", 500) for i in range(20_000))
    assert 800 < hits < 1200


def _sample_sequence(rng: random.Random, n: int, repeat_bias: float) -> tuple[list[int], list[float]]:
    """Honest sampling from distributions that, like a small model teacher-forced on a loop,
    predict the previous token with probability ``repeat_bias``; (ids, log q of each)."""
    ids: list[int] = []
    logprobs: list[float] = []
    for _ in range(n):
        w = [rng.random() ** 3 for _ in range(20)]
        q = [x / sum(w) * (1 - repeat_bias) for x in w]
        if ids:
            q[ids[-1]] += repeat_bias
        else:
            q = [x / (1 - repeat_bias) for x in q]
        t = rng.choices(range(20), weights=q)[0]
        ids.append(t)
        logprobs.append(math.log(q[t]))
    return ids, logprobs


def test_repeat_pvalue_is_valid_under_honest_sampling_even_when_the_model_loves_loops():
    rng = random.Random(12)
    for bias in (0.0, 0.5, 0.9):
        ps = [repeat_pvalue(*reversed(_sample_sequence(rng, 24, bias))) for _ in range(2000)]
        for alpha in (0.01, 0.05, 0.2):  # Ville: P(p <= alpha) <= alpha (plus sampling noise)
            assert sum(p <= alpha for p in ps) <= alpha * len(ps) + 3 * math.sqrt(alpha * len(ps)) + 1, (bias, alpha)


def test_a_stuck_engine_fails_its_first_check_though_the_reference_predicts_the_loop():
    # Shaped like the measured ones (SmolLM2, " the" repeated at T 1.0): the first repetition costs
    # ~10 nats, the next few a few more, then the reference, teacher-forced, predicts each further
    # repetition (q 0.6 .. 0.97): z is positive, n x min tail is no evidence, the repeat test fails it.
    rng = random.Random(13)
    honest = _honest_job(rng, 40)
    qs = [0.3, 4e-5, 0.02, 0.3, 0.6] + [0.9] * 10 + [0.97] * 25
    stuck = [TokenScore(logprob=math.log(q), expected=math.log(q) - 0.3, variance=1.0, rank=0 if q > 0.5 else 1,
                        tail=1.0 if q > 0.5 else max(q, 1e-4)) for q in qs]
    stat = job_statistic(stuck, 1.0, [42] * 40)
    assert stat.z > 0 and stat.tail > TAIL_ALPHA and stat.repeat < REPEAT_ALPHA
    verdict, u = judge_job(stat, Calibration(), 5.0)
    assert verdict == "failed" and u <= -5.0
    assert job_statistic(stuck, 1.0).repeat is None  # no ids given: no repeat test
    # the same scores on varied ids: no repetition, no evidence from this test
    assert job_statistic(stuck, 1.0, list(range(40))).repeat == 1.0
    assert judge_job(job_statistic(honest, 1.0, [1, 2] * 20), Calibration(), 5.0)[0] == "passed"


def test_repeat_pvalue_counts_only_the_final_run_and_its_weights():
    lp = [-1.0] * 10
    assert repeat_pvalue(lp, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) == 1.0
    # final run of 3 (positions 8..10, 1-based): H_8 (2 nats, weight 1/112) and H_9 (1 nat, weight 1/144)
    assert math.exp(2) / 112 + math.exp(1) / 144 < 1  # E below 1: p = 1
    assert repeat_pvalue(lp, [1, 2, 3, 4, 5, 6, 7, 9, 9, 9]) == 1.0
    assert repeat_pvalue([-9.0] * 10, [1, 2, 3, 4, 5, 6, 7, 9, 9, 9]) == pytest.approx(
        1 / (math.exp(18) / 112 + math.exp(9) / 144))
    # stuck from the start: H_1 counts positions 2..10 at weight 1/2
    p = repeat_pvalue([-5.0] + [-2.0] * 9, [7] * 10)
    assert 0 < p <= 2 * math.exp(-18) and p == pytest.approx(1 / sum(
        math.exp(2.0 * (10 - k)) * (0.5 if k == 1 else 1 / (2 * k * (k - 1))) for k in range(1, 10)))
    assert repeat_pvalue([-1.0], [7]) == 1.0
