"""The temperature test (teacher-forced-z/v3): the likelihood ratio of "sampled at T * s" against
the claimed sampler. Validity and power by Monte Carlo on synthetic distributions (numpy, through the
scorer's own ``position_scores``), the scorer's factors against a direct float64 computation of the
definition, the verdict's side, and the real SmolLM2 reference on a greedy and an honest generation."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from basis.engines.llama_scoring import position_scores
from basis.engines.scoring import TEMPERATURE_PROB_FLOOR, TEMPERATURE_RATIOS, TokenScore
from basis.verification.policy import VerificationPolicy
from basis.verification.sequential import WorkerEvidence
from basis.verification.stats import (
    TEMPERATURE_ALPHA,
    Calibration,
    JobStatistic,
    job_statistic,
    judge_job,
    temperature_pvalue,
)

VOCAB = 200


def _nucleus(p: np.ndarray, top_p: float) -> np.ndarray:
    """llama.cpp's top_p: the shortest prefix of the descending order whose mass reaches top_p."""
    if top_p >= 1.0:
        return np.ones(p.shape, dtype=bool)
    order = np.argsort(-p, kind="stable")
    m = int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1
    keep = np.zeros(p.shape, dtype=bool)
    keep[order[:m]] = True
    return keep


def _sampler(row: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """The distribution llama.cpp samples from: nucleus on the temperature-1 distribution, then T."""
    r = row.astype(np.float64)
    keep = _nucleus(np.exp(r - np.logaddexp.reduce(r)), top_p)
    z = np.where(keep, r / temperature, -np.inf)
    return np.exp(z - np.logaddexp.reduce(z[keep]))


def _jobs(rng: np.random.Generator, worker: str, scale: float, top_p: float, jobs: int, n: int = 40,
          temperature: float = 0.7) -> list[JobStatistic]:
    out = []
    for _ in range(jobs):
        logits = (rng.standard_normal((n, VOCAB)) * scale).astype(np.float32)
        if worker == "greedy":
            ids = [int(row.argmax()) for row in logits]
        else:
            t = temperature * (2.0 if worker == "double" else 1.0)
            ids = [int(rng.choice(VOCAB, p=_sampler(row, t, top_p))) for row in logits]
        out.append(job_statistic(position_scores(logits, ids, temperature, top_p), temperature, ids))
    return out


@pytest.mark.parametrize(("scale", "top_p"), [(1.5, 1.0), (3.0, 1.0), (3.0, 0.9)], ids=["flat", "peaked", "nucleus"])
def test_honest_p_values_are_valid_and_greedy_or_double_temperature_fail(scale, top_p):
    rng = np.random.default_rng(int(scale * 10) + int(top_p * 100))
    honest = np.array([s.temperature for s in _jobs(rng, "honest", scale, top_p, 300)])
    for a in (0.05, 0.01):  # P(p < a) <= a, plus sampling slack (the e-value is conservative: far below)
        assert (honest < a).mean() <= a + 0.02, (a, np.sort(honest)[:10])
    assert (honest < TEMPERATURE_ALPHA).sum() == 0
    # Double temperature inside a nucleus is weaker evidence: the nucleus cuts the tail where a hotter
    # sampler differs most (measured here: 71-88 % of 40-token jobs at top_p 0.9, 95-98 % at top_p 1).
    for worker, min_caught in (("greedy", 0.95), ("double", 0.85 if top_p >= 1.0 else 0.55)):
        stats = _jobs(rng, worker, scale, top_p, 60)
        caught = np.mean([s.temperature < TEMPERATURE_ALPHA for s in stats])
        assert caught >= min_caught, (worker, caught)
        side = [judge_job(s, Calibration(), 5.0)[1] for s in stats if s.temperature < TEMPERATURE_ALPHA]
        if worker == "greedy":  # too likely: the CUSUM's upper side
            assert all(u >= 5.0 for u in side) and all(s.temperature_ratio < 1 for s in stats if s.temperature < 1e-3)
        else:  # too unlikely: the lower side
            assert all(u <= -5.0 for u in side) and all(s.temperature_ratio > 1 for s in stats if s.temperature < 1e-3)


def test_one_absurd_token_cannot_fail_an_honest_job_alone():
    """Honest llama.cpp workers emit a token the reference calls absurd about once in 10,000
    positions (q of 1e-8 or less, or outside the nucleus); the floor F bounds its factor (at most
    F^(1/s - 1) for s > 1; below 1 for s < 1 at so unlikely a token), so it fails no job, not even alone."""
    rng = np.random.default_rng(3)
    for top_p in (1.0, 0.9):
        for _ in range(40):
            logits = (rng.standard_normal((40, VOCAB)) * 2.0).astype(np.float32)
            ids = [int(rng.choice(VOCAB, p=_sampler(row, 0.7, top_p))) for row in logits]
            base = position_scores(logits, ids, 0.7, top_p)
            for absurd in ("argmin", 1e-6, 1e-8):
                rows = logits.copy()
                if absurd == "argmin":  # the reference's least likely token (floored outside a nucleus)
                    tok = int(rows[5].argmin())
                else:  # give the worker's token at position 5 exactly this q
                    q = _sampler(rows[5], 0.7, 1.0)
                    tok = int(q.argmin())
                    others = np.delete(np.arange(VOCAB), tok)
                    rows[5, tok] = 0.7 * (math.log(absurd / (1 - absurd)) + np.logaddexp.reduce(rows[5, others] / 0.7))
                scores = list(base)
                scores[5] = position_scores(rows[5:6], [tok], 0.7, top_p)[0]
                stat = job_statistic(scores, 0.7, [*ids[:5], tok, *ids[6:]])
                assert stat.temperature > TEMPERATURE_ALPHA * 10, (top_p, absurd, stat)
                alone = job_statistic(scores[5:6], 0.7, [tok])  # a one-token job of it
                assert alone.temperature > TEMPERATURE_ALPHA * 10, (top_p, absurd, alone)
                lr = scores[5].temperature_lr
                for s, x in zip(TEMPERATURE_RATIOS, lr, strict=True):
                    assert x <= ((1 / s - 1) * math.log(TEMPERATURE_PROB_FLOOR) if s > 1 else 0.0) + 1e-9


def _direct_factors(row: np.ndarray, token: int, temperature: float, top_p: float,
                    before: bool) -> list[float]:
    """The definition in float64: q the claimed distribution on the strict nucleus N, q^(s) the
    same nucleus at T * s; factor q^(s)(t) / max(q(t), F); a token outside N: the smaller of its own
    factor (its probability extended over N plus itself, as if inside) and the edge token's."""
    r = row.astype(np.float64)
    z = r / temperature
    base = r if before else z
    keep = _nucleus(np.exp(base - np.logaddexp.reduce(base)), top_p)
    lse = np.logaddexp.reduce(z[keep])
    out = []
    for s in TEMPERATURE_RATIOS:
        zs = np.where(keep, z / s, -np.inf)
        lse_s = np.logaddexp.reduce(zs[keep])

        def factor(j: int, lse_s: float = lse_s, s: float = s) -> float:
            q = math.exp(z[j] - lse)  # q(j) over N (for j outside N: its would-be probability)
            qs = math.exp(z[j] / s - lse_s)
            return math.log(qs / max(q, TEMPERATURE_PROB_FLOOR))

        if keep[token]:
            out.append(factor(token))
        else:
            edge = int(np.flatnonzero(keep)[np.argmin(z[keep])])
            out.append(min(factor(token), factor(edge)))
    return out


@pytest.mark.parametrize("before", [True, False], ids=["llama-order", "sglang-order"])
def test_position_scores_temperature_factors_equal_the_definition(before):
    rng = np.random.default_rng(21)
    for _ in range(30):
        row = (rng.standard_normal(VOCAB) * rng.choice([1.0, 3.0, 6.0])).astype(np.float32)
        order = np.argsort(-row)
        temperature = float(rng.choice([0.3, 0.7, 1.0, 1.3]))
        top_p = float(rng.choice([1.0, 0.9, 0.6]))
        for token in (int(order[0]), int(order[2]), int(order[20]), int(order[-1])):
            got = position_scores(row[None, :], [token], temperature, top_p, top_p_before_temperature=before)[0]
            want = _direct_factors(row, token, temperature, top_p, before)
            assert got.temperature_lr == pytest.approx(want, rel=1e-4, abs=1e-4), (temperature, top_p, token)
    greedy = position_scores(row[None, :], [int(order[0])], 0.0)[0]
    assert greedy.temperature_lr is None


def test_temperature_pvalue_is_the_mixture_e_value_and_the_verdict_side_follows_the_winning_ratio():
    lrs = [(0.5, 0.2, -0.1, -0.3)] * 20  # colder fits: prod = e^10 at s = 0.25
    e = sum(math.exp(20 * x) for x in lrs[0]) / 4
    assert temperature_pvalue(lrs) == pytest.approx(1 / e)
    assert temperature_pvalue([(-1.0, -1.0, -1.0, -1.0)]) == 1.0 and temperature_pvalue([]) == 1.0
    assert temperature_pvalue([(-math.inf, -math.inf, 1.0, 1.0)] * 12) == pytest.approx(1 / (2 * math.exp(12) / 4))
    scores = [TokenScore(logprob=-1.0, expected=-1.2, variance=1.0, rank=0, temperature_lr=lr) for lr in lrs]
    stat = job_statistic(scores, 0.7)
    assert stat.temperature == pytest.approx(1 / e) and stat.temperature_ratio == 0.25
    verdict, u = judge_job(stat, Calibration(), 5.0)
    assert verdict == "failed" and u == 5.0  # pushes the upper side
    hotter = JobStatistic(tokens=40, greedy=False, z=0.4, temperature=1e-5, temperature_ratio=2.0)
    assert judge_job(hotter, Calibration(), 5.0) == ("failed", -5.0)
    no_ratio = JobStatistic(tokens=40, greedy=False, z=-0.4, temperature=1e-5)  # the sign of z decides
    assert judge_job(no_ratio, Calibration(), 5.0) == ("failed", -5.0)
    assert judge_job(hotter, Calibration(), 5.0, temperature_alpha=1e-6)[0] == "passed"
    z_failed = JobStatistic(tokens=40, greedy=False, z=-8.0, temperature=1e-5, temperature_ratio=0.25)
    assert judge_job(z_failed, Calibration(), 5.0) == ("failed", -8.0)  # z's evidence stands
    v2 = JobStatistic(tokens=40, greedy=False, z=0.4)  # a v2 statistic: no temperature test at all
    assert judge_job(v2, Calibration(), 5.0, temperature_alpha=1.0) == ("passed", 0.4)
    partial = [TokenScore(logprob=-1.0, expected=-1.2, variance=1.0, rank=0), *scores[1:]]
    assert job_statistic(partial, 0.7).temperature is None  # a position without factors: no test
    assert job_statistic(scores, 0.0).temperature is None  # greedy jobs are judged by argmax agreement
    ev = WorkerEvidence()
    for _ in range(3):  # three greedy-when-asked-to-sample jobs caught: the upper side crosses 12
        ev = ev.update(u, failed=True, drift=1.0)
    assert ev.upper == 12.0 and ev.crossed(12.0)


def test_policy_publishes_the_temperature_test():
    pub = VerificationPolicy().public()
    assert pub["method"] == "teacher-forced-z/v3" and pub["temperature_alpha"] == TEMPERATURE_ALPHA
    assert pub["temperature_ratios"] == list(TEMPERATURE_RATIOS)
    assert pub["temperature_prob_floor"] == TEMPERATURE_PROB_FLOOR


@pytest.mark.llama
def test_real_reference_fails_greedy_claimed_at_t07_and_passes_honest_samples():
    from basis.engines.base import GenerateRequest
    from basis.engines.llama_cpp import LlamaCppEngine
    from basis.engines.llama_scoring import LlamaScorer
    from basis.engines.scoring import ScoreRequest
    from basis.models.binding import ModelBinding
    from basis.verification.policy import BINDING_CALIBRATION
    from tests.models.support import require_llama

    require_llama()
    binding = ModelBinding(model_id="smollm2-135m-instruct", gguf="smollm2-135m-instruct")
    scorer = LlamaScorer(binding, n_threads=1)
    engine = LlamaCppEngine(binding, n_ctx=512, n_threads=1)
    policy = VerificationPolicy()
    cal = BINDING_CALIBRATION["smollm2-135m-instruct"]
    prompt = binding.apply_chat_template([{"role": "user", "content": "Write a short story about a lighthouse."}])

    async def run(temperature: float, seed: int) -> tuple[JobStatistic, str]:
        req = GenerateRequest(prompt_ids=prompt, max_tokens=64, temperature=temperature, seed=seed)
        ids = [i async for step in engine.generate(req) for i in step.ids]
        scores = await scorer.score(ScoreRequest(prompt_ids=prompt, output_ids=ids, temperature=0.7))
        stat = job_statistic(scores, 0.7, ids)
        return stat, judge_job(stat, cal, policy.job_threshold, policy.tail_alpha, policy.repeat_alpha,
                               policy.temperature_alpha)[0]

    stat, verdict = asyncio.run(run(0.0, 1))  # greedy, claimed as a T 0.7 sample
    assert stat.temperature is not None and stat.temperature < policy.temperature_alpha, stat
    assert verdict == "failed" and stat.temperature_ratio < 1, stat
    for seed in (20261201, 7, 4242):  # honest samples at the claimed T 0.7
        stat, verdict = asyncio.run(run(0.7, seed))
        assert verdict == "passed" and stat.temperature is not None and stat.temperature > 0.01, (seed, stat)
