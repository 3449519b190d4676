"""LlamaScorer re-scores real llama.cpp output teacher-forced (DESIGN §1.6), and the per-position
arithmetic (position_scores) against hand-computed distributions."""

from __future__ import annotations

import asyncio
import math
import random

import numpy as np
import pytest

from basis.engines import GenerateRequest
from basis.engines.llama_scoring import LlamaScorer, position_scores
from basis.engines.scoring import LOGPROB_FLOOR, Scorer, ScoreRequest, ScoringError
from basis.verification.stats import job_statistic

N = 16  # output tokens a job: CI stays fast


# -- arithmetic, no model --------------------------------------------------------------------
def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_position_scores_match_the_claimed_distribution_by_hand():
    logits = np.array([[2.0, 1.0, 0.5, -1.0, -3.0]], dtype=np.float32)
    for temp in (0.7, 1.0, 1.3):
        q = _softmax(logits[0].astype(np.float64) / temp)
        expected = float(q @ np.log(q))
        variance = float(q @ (np.log(q) - expected) ** 2)
        for tok in range(5):
            (s,) = position_scores(logits, [tok], temp)
            assert s.logprob == pytest.approx(math.log(q[tok]), abs=1e-5)
            assert s.expected == pytest.approx(expected, abs=1e-5)
            assert s.variance == pytest.approx(variance, abs=1e-5)
            assert s.rank == tok


def test_nucleus_is_taken_before_the_temperature_like_llama_cpp_and_outside_tokens_are_floored():
    logits = np.array([[3.0, 2.0, 1.0, 0.0, -6.0]], dtype=np.float32)
    p = _softmax(logits[0].astype(np.float64))  # ~0.64, 0.24, 0.09, 0.03, ...
    assert p[0] + p[1] < 0.9 <= p[0] + p[1] + p[2]
    kept = logits[0, :3].astype(np.float64) / 1.5
    q = _softmax(kept)
    (s,) = position_scores(logits, [2], 1.5, 0.9)
    assert s.logprob == pytest.approx(math.log(q[2]), abs=1e-5)
    assert s.expected == pytest.approx(float(q @ np.log(q)), abs=1e-5)
    (s,) = position_scores(logits, [4], 1.5, 0.9)
    assert s.logprob == LOGPROB_FLOOR and s.rank == 4 and s.tail == 0.0
    (s,) = position_scores(logits, [0], 1.5, 0.9)
    assert s.tail == pytest.approx(1.0)
    # token 3 lies past the nucleus of 0.9 even with the drift tolerance (mass above it 0.967)
    (s,) = position_scores(logits, [3], 1.5, 0.9)
    assert s.logprob == LOGPROB_FLOOR and s.tail == 0.0
    # temperature first (HF/sglang order): at T=1.5 the nucleus of 0.95 holds four tokens
    (s,) = position_scores(logits, [3], 1.5, 0.95, top_p_before_temperature=False)
    assert s.logprob == pytest.approx(math.log(_softmax(logits[0, :4].astype(np.float64) / 1.5)[3]), abs=1e-5)


def test_greedy_uses_the_temperature_one_distribution_and_the_rank():
    logits = np.array([[0.0, 4.0, 1.0]], dtype=np.float32)
    (s,) = position_scores(logits, [2], 0.0, 0.5)
    assert s.rank == 1
    assert s.logprob == pytest.approx(math.log(_softmax(logits[0].astype(np.float64))[2]), abs=1e-5)


# -- real models -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
    from tests.models.support import require_llama

    require_llama()
    from basis.models.binding import ModelBinding

    return ModelBinding(model_id="smol", gguf="smollm2-135m-instruct")


async def _generate(engine, prompt, temperature, top_p, seed, model):
    req = GenerateRequest(prompt_ids=prompt, max_tokens=N, temperature=temperature, top_p=top_p, seed=seed,
                          model=model)
    return [i async for step in engine.generate(req) for i in step.ids]


def _honest_jobs(binding, temperature, top_p, seeds):
    from basis.engines.llama_cpp import LlamaCppEngine

    engine = LlamaCppEngine(binding, n_ctx=256, n_threads=1)
    scorer = LlamaScorer(binding, n_threads=1)
    prompt = binding.apply_chat_template([{"role": "user", "content": "Describe the sea in a few words."}])

    async def run():
        out = []
        for seed in seeds:
            ids = await _generate(engine, prompt, temperature, top_p, seed, binding.model_id)
            req = ScoreRequest(prompt_ids=prompt, output_ids=ids, temperature=temperature, top_p=top_p,
                               model=binding.model_id)
            out.append((ids, await scorer.score(req)))
        return out

    return prompt, scorer, asyncio.run(run())


@pytest.mark.llama
@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9)])
def test_honest_output_scores_near_zero_and_random_ids_hugely_negative(binding, temperature, top_p):
    prompt, scorer, jobs = _honest_jobs(binding, temperature, top_p, seeds=(1, 2))
    assert isinstance(scorer, Scorer)
    for ids, scores in jobs:
        assert len(scores) == len(ids) > 0
        assert all(s.logprob > LOGPROB_FLOOR and s.variance >= 0 and s.expected <= 0 for s in scores)
        z = job_statistic(scores, temperature).z
        assert abs(z) < 4.5, z
    rng = random.Random(7)
    noise = [rng.randrange(1000, binding.n_vocab) for _ in range(N)]
    scores = asyncio.run(scorer.score(ScoreRequest(prompt_ids=prompt, output_ids=noise, temperature=temperature,
                                                   top_p=top_p, model=binding.model_id)))
    assert job_statistic(scores, temperature).z < -8


@pytest.mark.llama
def test_greedy_output_is_mostly_the_reference_argmax(binding):
    _, _, jobs = _honest_jobs(binding, 0.0, 1.0, seeds=(1,))
    ((_ids, scores),) = jobs
    stat = job_statistic(scores, 0.0)
    assert stat.greedy and stat.agreement >= 0.9, [s.rank for s in scores]


@pytest.mark.llama
def test_second_binding_with_another_vocabulary(smollm2):
    _, _, jobs = _honest_jobs(smollm2, 1.0, 1.0, seeds=(4, 5))
    for _, scores in jobs:
        assert abs(job_statistic(scores, 1.0).z) < 4.5


@pytest.mark.llama
def test_bad_requests_are_scoring_errors_and_long_jobs_grow_the_context(binding):
    scorer = LlamaScorer(binding, n_threads=1, n_ctx=64)
    prompt = binding.apply_chat_template([{"role": "user", "content": "Hi"}])

    def score(**kw):
        req = {"prompt_ids": prompt, "output_ids": [100, 200], "temperature": 1.0, "model": binding.model_id} | kw
        return asyncio.run(scorer.score(ScoreRequest(**req)))

    for bad in ({"output_ids": [binding.n_vocab]}, {"output_ids": [-1]}, {"prompt_ids": []},
                {"temperature": -0.5}, {"temperature": float("nan")}, {"top_p": 0.0}, {"model": "nope"}):
        with pytest.raises(ScoringError):
            score(**bad)
    assert score(output_ids=[]) == []
    long = score(output_ids=[100 + i for i in range(90)])  # prompt + 90 > n_ctx 64: reloaded larger
    assert len(long) == 90


def test_a_token_just_past_the_nucleus_edge_is_scored_not_floored():
    # honest prefill/decode drift moved real tokens 0.012-0.013 of mass past the edge (Gemma, T 1.3)
    p = np.array([[0.5, 0.38, 0.04, 0.035, 0.025, 0.02]], dtype=np.float64)
    logits = np.log(p).astype(np.float32)  # nucleus of 0.9: the first three (0.92)
    (s,) = position_scores(logits, [3], 1.3, 0.9)  # mass above it 0.92: within 0.9 + 0.05
    assert s.logprob > LOGPROB_FLOOR and s.tail > 0.01
    (s,) = position_scores(logits, [5], 1.3, 0.9)  # mass above it 0.98: outside
    assert s.logprob == LOGPROB_FLOOR and s.tail == 0.0
