"""A stuck engine against the real reference (llama.cpp, SmolLM2-135M-Instruct, the default
binding's file): the reference, teacher-forced on the loop, predicts each further repetition, yet
the repeat test fails the job on its own; an honest sample of the same model passes it."""

from __future__ import annotations

import asyncio

import pytest

from basis.engines.base import GenerateRequest
from basis.engines.llama_cpp import LlamaCppEngine
from basis.engines.scoring import ScoreRequest
from basis.models.binding import ModelBinding
from basis.verification.policy import BINDING_CALIBRATION, VerificationPolicy
from basis.verification.stats import job_statistic, judge_job
from tests.models.support import require_llama

pytestmark = [pytest.mark.llama]


def test_a_stuck_engine_fails_on_its_first_check_and_an_honest_one_passes():
    require_llama()
    from basis.engines.llama_scoring import LlamaScorer

    binding = ModelBinding(model_id="smollm2-135m-instruct", gguf="smollm2-135m-instruct")
    scorer = LlamaScorer(binding, n_threads=1)
    policy = VerificationPolicy()
    cal = BINDING_CALIBRATION["smollm2-135m-instruct"]
    prompt = binding.apply_chat_template([{"role": "user", "content": "Tell me about the sea."}])

    async def judged(ids: list[int], temperature: float):
        scores = await scorer.score(ScoreRequest(prompt_ids=prompt, output_ids=ids, temperature=temperature))
        stat = job_statistic(scores, temperature, ids)
        return stat, judge_job(stat, cal, policy.job_threshold, policy.tail_alpha, policy.repeat_alpha)[0]

    (the,) = binding.tokenize(" the")
    for temperature in (0.7, 1.0, 1.3):
        stat, verdict = asyncio.run(judged([the] * 40, temperature))
        assert stat.repeat is not None and stat.repeat < policy.repeat_alpha and verdict == "failed", stat
    engine = LlamaCppEngine(binding, n_ctx=512, n_threads=1)

    async def honest() -> list[int]:
        req = GenerateRequest(prompt_ids=prompt, max_tokens=40, temperature=1.0, seed=20261201)
        return [i async for step in engine.generate(req) for i in step.ids]

    stat, verdict = asyncio.run(judged(asyncio.run(honest()), 1.0))
    assert verdict == "passed" and stat.repeat is not None and stat.repeat > 0.01, stat
