"""Per-position job files in the verification benchmark (``bench_verify.py --lines``): real honest
jobs in bulk (``bench_verify_honest.py``) and stuck-engine jobs (``bench_verify_stuck.py``), one
JSON line a job with its ids and per-position scores (``pos``: one row a position, see ``pos_row``).
"""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

from basis.engines.scoring import TokenScore
from basis.verification.policy import VerificationPolicy
from basis.verification.sequential import WorkerEvidence
from basis.verification.stats import job_statistic, opening_evidence
from bench_verify_analysis import caught_by, checks_until_suspended, judge, log_p, stat_of, suspended, temperature_p


def pos_row(s: TokenScore) -> list:
    """One output position as stored: logprob, expected, variance, rank, tail, and (method v3) the
    per-ratio temperature log likelihood ratios (None where the scorer gave none)."""
    lrs = s.temperature_lr
    return [round(s.logprob, 5), round(s.expected, 5), round(s.variance, 5), s.rank,
            None if s.tail is None else float(f"{s.tail:.6g}"),
            None if lrs is None else [round(x, 6) for x in lrs]]


def token_score(row: list) -> TokenScore:
    """A stored row back as the scorer's TokenScore (rows of five columns: files before v3)."""
    lrs = tuple(row[5]) if len(row) > 5 and row[5] is not None else None
    return TokenScore(logprob=row[0], expected=row[1], variance=row[2], rank=row[3], tail=row[4], temperature_lr=lrs)


def load_lines(files: list[Path]) -> list[dict]:
    """Per-position job records (bench_verify_honest.py / bench_verify_stuck.py) as pool records:
    the statistic recomputed from the stored scores and ids, exactly as the verifier computes it."""
    out = []
    for f in files:
        text = f.read_text()
        for line in text[: text.rfind("\n") + 1].splitlines():  # a last line still being written: left out
            r = json.loads(line)
            if r.get("pos") is None:
                continue  # generated with --no-score: not scored yet (bench_verify_honest.py --rescore)
            scores = [token_score(p) for p in r["pos"]]
            stat = job_statistic(scores, r["temperature"], r["ids"])
            out.append({**{k: v for k, v in r.items() if k not in ("pos", "ids")}, "tokens": stat.tokens, "z": stat.z,
                        "agreement": stat.agreement, "tail": stat.tail, "repeat": stat.repeat,
                        "temperature_p": stat.temperature, "temperature_ratio": stat.temperature_ratio,
                        "temperature_log_e": stat.temperature_log_e, "opening_z": stat.opening_z,
                        # a cheat's generation (another model) is no worker cost
                        "gen_tokens": len(r["ids"]) if r.get("gen_cpu") and r["kind"] == "honest" else 0})
    return out


def analyse_real_honest(recs: list[dict], policy: VerificationPolicy, args) -> None:
    """Bulk real honest jobs: every job judged with the published policy (each test's failures
    counted too), one worker's CUSUM run over all of a configuration's jobs in the order they were
    made (real, no resampling), and ``--trials`` workers of ``--honest-checked`` checked jobs drawn
    with replacement from them (resampled: labelled so)."""
    rng = random.Random(12)
    print("\n### Honest workers: real jobs in bulk\n")
    print("| binding | T | top_p | worker threads / n_batch | real checked jobs | z or agreement: mean (sd) | "
          "failed: any (z / tail / repeat / temperature) | smallest p_temperature | "
          "per-job false fail: observed (95 % upper bound) | "
          "one worker over all of them: max CUSUM / fast CUSUM / e-detector level, suspended | "
          "resampled: suspended workers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        key = (r["binding"], r["temperature"], r["top_p"], r.get("worker_threads", 1), r.get("n_batch", 512))
        groups.setdefault(key, []).append(r)
    for (b, t, p, th, nb), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r.get("k", 0))
        ev, top, top_f, top_e, judged = WorkerEvidence(), 0.0, 0.0, 0.0, []
        stats = [stat_of(r) for r in rs]
        for stat in stats:
            failed, u = judge(stat, b, policy)
            opening = opening_evidence(stat, policy.calibration_for(b))
            ev = ev.update(u, failed=failed, drift=policy.drift, log_e=stat.temperature_log_e,
                           fast_drift=policy.fast_drift, fast_evidence=opening)
            top, top_f, top_e = max(top, ev.level), max(top_f, ev.fast), max(top_e, ev.e_level)
            judged.append((failed, u, stat.temperature_log_e, opening))
        fails = sum(j[0] for j in judged)
        boot = sum(checks_until_suspended(lambda j=judged: rng.choice(j), policy, args.honest_checked) is not None
                   for _ in range(args.trials))
        raw = [r["agreement"] if r["agreement"] is not None else r["z"] for r in rs]
        tps = [p for p in map(temperature_p, rs) if p is not None]
        n = len(rs)
        upper = min(1.0, 3.0 / n if fails == 0 else (fails + 2 * math.sqrt(fails) + 2) / n)  # rule of three / Poisson
        print(f"| {b} | {t} | {p} | {th} / {nb} | {n} | {statistics.fmean(raw):.3f} "
              f"({statistics.stdev(raw) if n > 1 else 0:.3f}) | {fails} ({caught_by(stats, b, policy)}) | "
              f"{log_p(min(tps)) if tps else '-'} | "
              f"{fails / n:.2%} ({upper:.2%}) | {top:.2f} / {top_f:.2f} / {top_e:.2f}, "
              f"{'yes' if suspended(ev, policy) else 'no'} | "
              f"{boot}/{args.trials} x {args.honest_checked} |")
