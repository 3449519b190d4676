#!/usr/bin/env python
"""Other per-job e-values against another model's text (issue #11), beside the published v3 rules.

    # the scorer with another (hot) ratio grid: per-position log factors of each job of IN
    PYTHONPATH=src nice -n 10 .venv/bin/python scripts/bench_verify_alternatives.py rescore \
        --ratios 1.05,1.1,1.25,1.5,2.0 /tmp/othermodel/other-48.jsonl ratios-cheat.jsonl
    # judged: each e-value's own e-detector, and beside the v3 CUSUM and e-detector
    PYTHONPATH=src .venv/bin/python scripts/bench_verify_alternatives.py analyse \
        --fine ratios-cheat.jsonl --lines /tmp/othermodel/other-48.jsonl

The temperature factor at ratio s is exactly exp(lambda X - K(lambda)), X the token's centred
log-probability and K its cumulant generating function under the claimed distribution, with
lambda = 1/s - 1: the per-position e-value "built on the centred log-probability with the exact MGF"
is the temperature test at s > 1, and a finer hot grid (s near 1: lambda near 0) is the one whose
K stays near its Gaussian lambda^2 Var / 2 instead of being dominated by the vocabulary's long tail.
``rescore`` scores with the verifier's ``LlamaScorer`` after replacing the ratio grid
(``TEMPERATURE_RATIOS``, read by the scorer at call time) for this process only.

``analyse`` also judges the tail p-value (``tail_pvalue``: super-uniform under honest sampling) as
an e-value through the calibrator e(p) = integral over k in (0, 1) of k p^(k-1) dk
= (1 - p + p ln p) / (p ln^2 p), whose mean is <= 1 for any super-uniform p.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path

import numpy as np

from basis.verification.policy import VerificationPolicy
from bench_verify_detection import job_evidence, read_jobs


def calibrated_log_e(p: float | None) -> float:
    """log of the p-to-e calibrator (module doc); -1e6 for p >= 1 (e = 0)."""
    if p is None or p >= 1.0:
        return -1e6
    p = max(p, 1e-300)
    lp = math.log(p)
    return math.log((1 - p + p * lp) / (p * lp * lp))


async def rescore(src: Path, out: Path, ratios: tuple[float, ...]) -> None:
    import basis.engines.llama_scoring as llama_scoring
    import basis.engines.scoring as scoring
    from basis.engines.llama_scoring import LlamaScorer
    from basis.engines.scoring import ScoreRequest
    from basis.models.binding import ModelBinding
    from bench_verify_collect import PROMPTS

    scoring.TEMPERATURE_RATIOS = llama_scoring.TEMPERATURE_RATIOS = ratios  # this process only
    scorers: dict[str, tuple[ModelBinding, LlamaScorer]] = {}
    with out.open("a") as fh:
        for r in read_jobs([str(src)]):
            if r["binding"] not in scorers:
                b = ModelBinding(model_id=r["binding"], gguf=r["binding"])
                scorers[r["binding"]] = (b, LlamaScorer(b, n_threads=1))
            b, scorer = scorers[r["binding"]]
            prompt = b.apply_chat_template([{"role": "user", "content": PROMPTS[r["k"] % len(PROMPTS)]}])
            scores = await scorer.score(ScoreRequest(prompt_ids=prompt, output_ids=r["ids"],
                                                     temperature=r["temperature"], top_p=r["top_p"]))
            fh.write(json.dumps({"kind": r["kind"], "temperature": r["temperature"], "top_p": r["top_p"], "k": r["k"],
                                 "ratios": ratios, "lr": [list(s.temperature_lr) for s in scores]}) + "\n")


def _lse_mean(xs: list[float]) -> float:
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs) / len(xs))


def analyse(fine: Path, lines: list[str], trials: int, cap: int) -> None:
    policy = VerificationPolicy()
    jobs = {(r["kind"], r["temperature"], r["top_p"], r["k"]): r for r in read_jobs(lines)}
    cells: dict[float, list[dict]] = {}
    ratios: list[float] = []
    for line in fine.read_text().splitlines():
        f = json.loads(line)
        r = jobs.get((f["kind"], f["temperature"], f["top_p"], f["k"]))
        if r is None:
            continue
        ratios = f["ratios"]
        e = job_evidence(r["pos"], r["temperature"], r["ids"], r["binding"], policy)
        e["sums"] = [math.fsum(lr[j] for lr in f["lr"]) for j in range(len(ratios))]
        e["tail_e"] = calibrated_log_e(e["tail"])
        cells.setdefault(f["temperature"], []).append(e)
    mixes = {f"s {s}": [j] for j, s in enumerate(ratios)}
    mixes["mixture of all"] = list(range(len(ratios)))
    rng = np.random.default_rng(5)
    print(f"ratio grid {ratios}; e-detector threshold log(1/{policy.worker_e_alpha:g}); {trials} workers a cell\n")
    print("| claimed T | jobs | per-job e-value | median log E | its e-detector alone: within 5 / 20, median | "
          "beside the v3 CUSUM and e-detector: within 5 / 20, median, worst |")
    print("|---|---|---|---|---|---|")
    for t, ev in sorted(cells.items()):
        keys = {name: [_lse_mean([e["sums"][j] for j in js]) for e in ev] for name, js in mixes.items()}
        keys["tail p, calibrated"] = [e["tail_e"] for e in ev]
        keys["none (v3 as published)"] = [-1e6 for _ in ev]
        for name, les in keys.items():
            row = []
            for beside in (False, True):
                when = _simulate(ev, np.array(les), beside, policy, trials, cap, rng)
                runs = np.where(when == 0, cap + 1, when)
                worst = f">{cap}" if (when == 0).any() else str(int(runs.max()))
                row.append(f"{100 * (runs <= 5).mean():.1f} % / {100 * (runs <= 20).mean():.1f} %, "
                           f"{np.median(runs):.0f}" + (f", {worst}" if beside else ""))
            print(f"| {t} | {len(ev)} | {name} | {float(np.median(les)):.2f} | {row[0]} | {row[1]} |")


def _simulate(ev: list[dict], extra: np.ndarray, beside: bool, policy: VerificationPolicy, workers: int, cap: int,
              rng: np.random.Generator) -> np.ndarray:
    """Checked jobs until suspension: the extra e-value's e-detector, with (``beside``) the v3 CUSUM
    and e-detector; 0: not within ``cap``."""
    u = np.array([e["u"] for e in ev])
    v3 = np.array([e["mix4"] for e in ev])
    level = -math.log(policy.worker_e_alpha)
    lo, hi, m, m3 = (np.zeros(workers) for _ in range(4))
    when = np.zeros(workers, dtype=int)
    for n in range(1, cap + 1):
        idx = rng.integers(0, len(ev), workers)
        m = np.maximum(0, m + extra[idx])
        hit = m >= level
        if beside:
            lo = np.maximum(0, lo - u[idx] - policy.drift)
            hi = np.maximum(0, hi + u[idx] - policy.drift)
            m3 = np.maximum(0, m3 + v3[idx])
            hit |= (lo >= policy.worker_threshold) | (hi >= policy.worker_threshold) | (m3 >= level)
        when[(when == 0) & hit] = n
    return when


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    rs = sub.add_parser("rescore")
    rs.add_argument("src")
    rs.add_argument("out")
    rs.add_argument("--ratios", default="1.05,1.1,1.25,1.5,2.0")
    an = sub.add_parser("analyse")
    an.add_argument("--fine", required=True)
    an.add_argument("--lines", default="/tmp/othermodel/other-48.jsonl")
    an.add_argument("--trials", type=int, default=10_000)
    an.add_argument("--cap", type=int, default=200)
    args = ap.parse_args()
    if args.cmd == "rescore":
        asyncio.run(rescore(Path(args.src), Path(args.out), tuple(float(x) for x in args.ratios.split(","))))
    else:
        analyse(Path(args.fine), args.lines.split(","), args.trials, args.cap)


if __name__ == "__main__":
    sys.exit(main())
