#!/usr/bin/env python
"""How the temperature test's probability floor F trades power for robustness (issue #11, v3).

    PYTHONPATH=src nice -n 10 .venv/bin/python scripts/bench_temperature_floor.py \
        --binding smollm2-135m-instruct --claimed 1.3 --actual 2.6 --jobs 12 [--top-p 1.0]

Real jobs: ``LlamaCppEngine`` generates 40 tokens at ``--actual`` (0: greedy; equal to ``--claimed``:
honest), ``LlamaScorer`` scores them at ``--claimed``, once; the temperature p-value is then
recomputed from the recorded per-position (log q, log Z_s, edge) for each floor, and the script
prints per floor how many jobs reach p < TEMPERATURE_ALPHA and the median p. The published floor
is ``basis.engines.scoring.TEMPERATURE_PROB_FLOOR``.
"""

from __future__ import annotations

import argparse
import asyncio
import math

import basis.engines.llama_scoring as llama_scoring
from basis.engines import scoring
from basis.engines.base import GenerateRequest
from basis.engines.llama_cpp import LlamaCppEngine
from basis.engines.scoring import ScoreRequest
from basis.models.binding import ModelBinding
from basis.verification.stats import TEMPERATURE_ALPHA, temperature_evidence

PROMPTS = ["Tell me about the sea.", "Write a short story about a lighthouse.", "Explain how bread rises.",
           "What is a good name for a cat?", "Describe a city at night.", "Give me three tips for studying.",
           "Why is the sky blue?", "Write a haiku about winter."]
FLOORS = (1e-4, 1e-6, 1e-8, 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binding", default="smollm2-135m-instruct")
    ap.add_argument("--claimed", type=float, required=True)
    ap.add_argument("--actual", type=float, required=True)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--jobs", type=int, default=12)
    args = ap.parse_args()
    recorded: list[tuple[float, list[float | None], float | None]] = []
    exact = scoring.temperature_log_factors

    def spy(logq, norms, edge=None):  # the scorer's inputs to the factor, kept for every floor
        recorded.append((logq, list(norms), edge))
        return exact(logq, norms, edge)

    llama_scoring.temperature_log_factors = spy
    binding = ModelBinding(model_id=args.binding, gguf=args.binding)
    scorer = llama_scoring.LlamaScorer(binding, n_threads=1)
    engine = LlamaCppEngine(binding, n_ctx=512, n_threads=1)
    jobs = []

    async def one(i: int) -> None:
        prompt = binding.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])
        req = GenerateRequest(prompt_ids=prompt, max_tokens=40, temperature=args.actual, top_p=args.top_p,
                              seed=1_000_003 * i + 17)
        ids = [x async for step in engine.generate(req) for x in step.ids]
        recorded.clear()
        await scorer.score(ScoreRequest(prompt_ids=prompt, output_ids=ids, temperature=args.claimed, top_p=args.top_p))
        jobs.append(list(recorded))

    for i in range(args.jobs):
        asyncio.run(one(i))
    n = len(jobs)
    print(f"{args.binding}: {n} jobs of 40 tokens sampled at T {args.actual}, claimed {args.claimed}, "
          f"top_p {args.top_p}")
    for floor in FLOORS:
        scoring._LOG_PROB_FLOOR = math.log(floor)
        ps = sorted(temperature_evidence([exact(*r) for r in job])[0] for job in jobs)
        mark = "  (published)" if floor == scoring.TEMPERATURE_PROB_FLOOR else ""
        print(f"  F {floor:g}: p < {TEMPERATURE_ALPHA:g} in {sum(p < TEMPERATURE_ALPHA for p in ps)}/{n}, "
              f"median p {ps[n // 2]:.2g}, smallest {ps[0]:.2g}{mark}")


if __name__ == "__main__":
    main()
