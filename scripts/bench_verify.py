#!/usr/bin/env python
"""Verification benchmark (issue #11 part 6): honest workers and cheats, real llama.cpp engines.

    PYTHONPATH=src .venv/bin/python scripts/bench_verify.py [--jobs 12] [--cheat-jobs 8] [--tokens 48]
        [--bindings gemma3-270m,smollm2-135m-instruct] [--pool pool.json] [--analyse-only]

Phase 1 (collect) drives the engines directly, no gateway: a worker generates (``LlamaCppEngine``,
the engine contributors run) and the verifier scores (``LlamaScorer``, one thread), for every
honest configuration and every cheat, per binding; each job's statistics go to ``--pool`` (JSON),
so the analysis can be rerun without generating again.

Phase 2 (analyse) judges every pooled job with the published policy (``VerificationPolicy``'s
defaults: thresholds, CUSUM drift, per-binding calibration) and prints
- per cheat: the share caught on its first checked job (all pooled jobs judged alone) and checked
  jobs until suspension (median, worst) over ``--trials`` workers, each drawing its checked jobs
  with replacement from the cheat's pool;
- per honest configuration: the pooled z, the per-job false fails observed and the normal-tail
  estimate of the false-fail rate, and suspensions among ``--trials`` workers of
  ``--honest-checked`` checked jobs each (drawn with replacement from the cell's jobs, and, as a
  stress test of the tails a few jobs cannot show, from a normal with the cell's mean and the
  binding's pooled sd inflated 25 %);
- the verifier's CPU seconds per checked token against the worker's per generated token.
With ``--lines``, per-position job files join the analysis: real honest jobs made in bulk by
``bench_verify_honest.py`` (judged one by one, one worker's CUSUM over them in order, and resampled
workers) and stuck-engine jobs per id choice from ``bench_verify_stuck.py``.
Modules: bench_verify_collect (engines, cheats, the collect phase), bench_verify_analysis (the
pooled jobs judged), bench_verify_lines (per-position job files). The gateway, protocol and ledger
path is covered by the end-to-end tests, not here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from basis.verification.policy import VerificationPolicy
from bench_verify_analysis import analyse
from bench_verify_collect import PROMPTS, collect, job_seed
from bench_verify_lines import analyse_real_honest, load_lines

__all__ = ["PROMPTS", "job_seed"]  # bench_verify_honest.py and bench_verify_stuck.py build their jobs from these


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bindings", default="gemma3-270m,smollm2-135m-instruct")
    ap.add_argument("--jobs", type=int, default=12, help="honest jobs per configuration")
    ap.add_argument("--cheat-jobs", type=int, default=8, help="jobs per cheat and temperature")
    ap.add_argument("--tokens", type=int, default=48, help="output tokens a job (max_tokens)")
    ap.add_argument("--worker-threads", type=int, default=2, help="thread count of the 'threads' honest worker")
    ap.add_argument("--trials", type=int, default=200, help="simulated workers per configuration")
    ap.add_argument("--honest-checked", type=int, default=2000, help="checked jobs per simulated honest worker")
    ap.add_argument("--cap", type=int, default=500, help="give up on a cheat's trial after this many checks")
    ap.add_argument("--pool", default="", help="JSON file of scored jobs: read, extended cell by cell "
                    "(a rerun resumes); several files, comma-separated, with --analyse-only")
    ap.add_argument("--kinds", default="", help="only these workers (honest, threads, random, stuck, ...), "
                    "comma-separated; default all")
    ap.add_argument("--temperatures", default="", help="only cells at these claimed temperatures, "
                    "comma-separated; default all")
    ap.add_argument("--seeds", choices=("spread", "consecutive"), default="spread",
                    help="per-job seeds: hashed (default), or base + k as in the reports before 2026-12-01 evening")
    ap.add_argument("--analyse-only", action="store_true", help="only analyse the jobs in --pool")
    ap.add_argument("--lines", default="", help="JSON-lines files of per-position jobs (bench_verify_honest.py, "
                    "bench_verify_stuck.py), comma-separated: honest ones are reported as real bulk jobs, stuck "
                    "ones join the cheats")
    args = ap.parse_args()
    args.bindings = [b for b in args.bindings.split(",") if b]
    args.kinds = {k for k in args.kinds.split(",") if k}
    args.temperatures = {float(t) for t in args.temperatures.split(",") if t}
    files = [Path(f) for f in args.pool.split(",") if f]
    pool = [rec for f in files if f.exists() for rec in json.loads(f.read_text())]
    if not args.analyse_only:
        if len(files) > 1:
            ap.error("collecting writes one --pool file")
        asyncio.run(collect(args, pool))  # resumes: cells already in the pool are kept
    lines = load_lines([Path(f) for f in args.lines.split(",") if f])
    for r in lines:
        if r["kind"] == "stuck":
            r["kind"] = f"stuck:{r['choice']}"  # one cheat cell per id choice
    pool += [r for r in lines if r["kind"] != "honest"]
    args.bindings = sorted({r["binding"] for r in pool} | {r["binding"] for r in lines})
    real = args.real = [r for r in lines if r["kind"] == "honest"]
    analyse(pool, args)
    if real:
        analyse_real_honest(real, VerificationPolicy(), args)


if __name__ == "__main__":
    main()
