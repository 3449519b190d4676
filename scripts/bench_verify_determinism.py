#!/usr/bin/env python
"""Does a llama.cpp worker with other threads and n_batch compute the same distribution? (issue #11)

The honest configurations of the verification benchmark include a worker at 2 threads and n_batch
32 beside the default 1 thread / n_batch 512. Where both compute the same logits to the bit, a
job's tokens, and so every statistic the verifier computes from them, are the same function of its
seed: the two configurations' honest records are one. This runs the same jobs (same prompt, seed,
temperature and top_p) through both workers' ``LlamaCppEngine`` with log-probabilities on and
compares the ids and each position's reported log-probability and top alternatives.

    PYTHONPATH=src:scripts .venv/bin/python scripts/bench_verify_determinism.py \
        --binding smollm2-135m-instruct --configs 0.7/1.0,1.0/1.0 --jobs 30
"""

from __future__ import annotations

import argparse
import asyncio
import time

from basis.engines.base import GenerateRequest
from basis.engines.llama_cpp import LlamaCppEngine
from basis.models.binding import ModelBinding
from bench_verify import PROMPTS, job_seed
from bench_verify_honest import N_CTX, worker_engine


async def one_job(engine: LlamaCppEngine, req: GenerateRequest) -> tuple[list[int], list[tuple]]:
    ids: list[int] = []
    lps: list[tuple] = []
    async for step in engine.generate(req):
        ids += step.ids
        lps += [(lp.logprob, lp.top) for lp in step.logprobs or ()]
    return ids, lps


async def run(args) -> None:
    binding = ModelBinding(model_id=args.binding, gguf=args.binding)
    a = worker_engine(binding, 1, N_CTX)
    b = worker_engine(binding, args.threads, args.batch)
    template = a.binding("")
    configs = [tuple(float(x) for x in c.split("/")) for c in args.configs.split(",") if c]
    same_ids = same_lps = jobs = tokens = 0
    worst = 0.0
    t0 = time.time()
    for k in range(args.jobs):
        for t, p in configs:
            text = PROMPTS[k % len(PROMPTS)]
            req = GenerateRequest(
                prompt_ids=template.apply_chat_template([{"role": "user", "content": text}]),
                max_tokens=args.tokens,
                temperature=t,
                top_p=p,
                seed=job_seed("determinism", t, p, k),
                logprobs=True,
                top_logprobs=5,
            )
            ids_a, lps_a = await one_job(a, req)
            ids_b, lps_b = await one_job(b, req)
            jobs += 1
            tokens += len(ids_a)
            same_ids += ids_a == ids_b
            same_lps += lps_a == lps_b
            for (la, _), (lb, _) in zip(lps_a, lps_b, strict=False):
                worst = max(worst, abs(la - lb))
            if ids_a != ids_b:
                first = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y), None)
                print(f"T {t} top_p {p} k {k}: ids differ (first at {first}; lengths {len(ids_a)} / {len(ids_b)})")
    print(
        f"{args.binding}: 1 thread / n_batch {N_CTX} against {args.threads} threads / n_batch {args.batch}, "
        f"{jobs} jobs ({tokens} tokens, configurations {args.configs}), {time.time() - t0:.0f} s: "
        f"ids identical in {same_ids}/{jobs}, every reported log-probability and top-5 alternative "
        f"identical in {same_lps}/{jobs}; largest log-probability difference {worst:.3g}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binding", default="smollm2-135m-instruct")
    ap.add_argument("--configs", default="0.7/1.0,1.0/1.0", help="temperature/top_p, comma-separated")
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
