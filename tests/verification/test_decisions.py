"""The job statistic, the per-job verdict and the per-worker CUSUM (pure arithmetic, no model)."""

from __future__ import annotations

import math
import random

import pytest

from basis.engines.scoring import TokenScore
from basis.verification.policy import BINDING_CALIBRATION, VerificationPolicy, sampled
from basis.verification.sequential import WorkerEvidence
from basis.verification.stats import TAIL_ALPHA, Calibration, job_statistic, judge_job


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


def test_a_single_absurd_token_fails_the_job_through_its_tail_even_when_z_is_fine():
    rng = random.Random(6)
    scores = _honest_job(rng, 40)
    scores[3] = TokenScore(logprob=-14.0, expected=-2.0, variance=3.0, rank=900, tail=1e-7)
    stat = job_statistic(scores, 1.0)
    assert abs(stat.z) < 6 and stat.tail == pytest.approx(40 * 1e-7)
    verdict, u = judge_job(stat, Calibration(), 6.0)
    assert verdict == "failed" and u <= -6.0
    assert judge_job(stat, Calibration(), 6.0, tail_alpha=1e-6)[0] == "passed"
    no_tails = [TokenScore(s.logprob, s.expected, s.variance, s.rank) for s in scores]  # a scorer without tails
    assert job_statistic(no_tails, 1.0).tail is None
    assert judge_job(job_statistic(no_tails, 1.0), Calibration(), 6.0)[0] == "passed"


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
    assert policy.calibration_for("x") == Calibration()
    assert policy.calibration_for("gemma3-270m") == BINDING_CALIBRATION["gemma3-270m"]
    assert policy.calibration_for("y", gguf="gemma3-270m") == BINDING_CALIBRATION["gemma3-270m"]
    hits = sum(sampled(b"k", f"job-{i}", 500) for i in range(20_000))
    assert 800 < hits < 1200
