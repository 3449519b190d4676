"""Calibrate the tolerance on reported logprobs (basis.verification.reported_logprobs).

An honest llama.cpp worker reports each output token's raw log-probability from its decode
logits; the verifier's reference recomputes it teacher-forced (one prefill, several rows per
decode). Both are the same model, but thread counts and batch shapes change the float order of
operations. This script generates with LlamaCppEngine at several thread counts, scores the same
ids with LlamaScorer at other thread counts / rows per decode, and prints the distribution of
|reported - reference| per token, per job (max), and the chosen tolerance's margin.

    PYTHONPATH=src .venv/bin/python scripts/bench_reported_logprobs.py [--model M] [--jobs 6] [--tokens 48]

It also prints what reporting costs the worker per token (``token_logprob``: one log-softmax over
the vocabulary, plus the top-k), the only work logprobs add, and only to jobs that ask.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import timeit

import numpy as np

from basis.engines.base import GenerateRequest
from basis.engines.llama_cpp import LlamaCppEngine, token_logprob
from basis.engines.llama_scoring import LlamaScorer
from basis.engines.scoring import ScoreRequest
from basis.models import load_bindings
from basis.verification.reported_logprobs import MEAN_TOLERANCE, TOKEN_TOLERANCE

PROMPTS = ["Write a short poem about the sea.", "Explain what a ledger is.", "List three colours.",
           "Say hi.", "What is 17 times 3?", "Describe a cat in one sentence."]


async def generate(engine: LlamaCppEngine, ids: list[int], model: str, seed: int, temperature: float,
                   max_tokens: int) -> tuple[list[int], list[float]]:
    out: list[int] = []
    lps: list[float] = []
    req = GenerateRequest(prompt_ids=ids, max_tokens=max_tokens, temperature=temperature, top_p=0.95, seed=seed,
                          model=model, logprobs=True, top_logprobs=3)
    async for step in engine.generate(req):
        out.extend(step.ids)
        lps.extend(lp.logprob for lp in step.logprobs or [])
    return out, lps


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="basis-default")
    ap.add_argument("--jobs", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=48)
    args = ap.parse_args()
    binding = load_bindings()[args.model]
    row = np.random.default_rng(0).standard_normal(binding.n_vocab).astype(np.float32) * 3
    for top in (0, 20):
        cost = min(timeit.repeat(lambda top=top: token_logprob(row, 5, top), number=50, repeat=3)) / 50
        print(f"cost per token, vocabulary {binding.n_vocab}, top_logprobs {top}: {cost * 1e3:.3f} ms")
    diffs: list[float] = []
    job_max: list[float] = []
    job_mean: list[float] = []
    # (worker threads, reference threads, rows per reference decode); the verifier's default is 64
    configs = [(1, 2, 64), (2, 1, 64), (2, 2, 16), (1, 1, 1)]
    for worker_threads, ref_threads, rows in configs:
        mine: list[float] = []
        engine = LlamaCppEngine(binding, n_ctx=1024, n_threads=worker_threads)
        scorer = LlamaScorer(binding, n_threads=ref_threads, outputs_per_decode=rows)
        for j in range(args.jobs):
            prompt = binding.apply_chat_template([{"role": "user", "content": PROMPTS[j % len(PROMPTS)]}])
            temperature = (0.0, 0.7, 1.0, 1.3)[j % 4]
            seed = 100 + j + 1000 * worker_threads + 10 * rows
            out, lps = await generate(engine, prompt, args.model, seed, temperature, args.tokens)
            if not out:
                continue
            ref = await scorer.score(ScoreRequest(prompt_ids=prompt, output_ids=out, temperature=temperature,
                                                  top_p=0.95, model=args.model, raw_logprobs=True))
            d = [abs(a - s.raw_logprob) for a, s in zip(lps, ref, strict=True)]  # type: ignore[operator]
            diffs.extend(d)
            mine.extend(d)
            job_max.append(max(d))
            job_mean.append(statistics.fmean(d))
        print(f"worker threads {worker_threads}, reference threads {ref_threads}, rows/decode {rows}: "
              f"{args.jobs} jobs, {len(mine)} tokens, mean |diff| {statistics.fmean(mine):.5f}, max {max(mine):.5f}")
    diffs.sort()
    q = statistics.quantiles(diffs, n=1000)
    print(f"tokens {len(diffs)}  mean {statistics.fmean(diffs):.6f}  p50 {q[499]:.6f}  p99 {q[989]:.6f}  "
          f"p99.9 {q[998]:.6f}  max {diffs[-1]:.6f}")
    print(f"per-job max |diff|: median {statistics.median(job_max):.6f}  max {max(job_max):.6f}")
    print(f"per-job mean |diff|: median {statistics.median(job_mean):.6f}  max {max(job_mean):.6f}")
    print(f"token tolerance {TOKEN_TOLERANCE}: {TOKEN_TOLERANCE / diffs[-1]:.1f}x the largest honest difference; "
          f"mean tolerance {MEAN_TOLERANCE}: {MEAN_TOLERANCE / max(job_mean):.1f}x the largest honest job mean")


if __name__ == "__main__":
    asyncio.run(main())
