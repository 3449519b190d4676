#!/usr/bin/env python
"""Worker rules against another model's text, measured on per-position job files (issue #11).

    PYTHONPATH=src .venv/bin/python scripts/bench_verify_detection.py \
        --honest /tmp/vb2/scored-S.jsonl,/tmp/vb2/scored-T2B32.jsonl \
        --cheat /tmp/othermodel/other-48.jsonl,/tmp/othermodel/other-128.jsonl [--trials 10000]

Inputs are JSON lines with per-position rows (``bench_verify_lines.pos_row``): honest jobs from
``bench_verify_honest.py`` and other_model cheat jobs from ``bench_verify_honest.py --kind
other_model``. Every job is judged by the verifier's own ``job_statistic`` / ``judge_job`` (the
published v3 policy), giving per job (failed, u, temperature log E). Then, per worker rule:

- cheats: ``--trials`` workers per cell, each drawing its checked jobs with replacement from the
  cell, checked jobs until suspension (median, worst, share within 5 and 20), also on the first
  L positions of the long jobs (the job cut at L tokens: detection as a function of job length);
- honest: ``--honest-workers`` resampled workers x ``--honest-checked`` checked jobs per honest
  configuration (suspended, highest level), and the rule's own null check: the mean over the
  configuration's real jobs of the CUSUM's per-job e-value exp(theta (-u - drift)) (and of the upper
  side), which must stay <= 1 for the CUSUM to be an e-detector (docs/verification.md).

A CUSUM with allowance d over u is the e-detector (Shin, Ramdas & Rinaldo 2023) of the per-job
e-values exp(theta (+-u - d)) whenever those have mean <= 1 under honest work; for u ~ N(0, s^2)
that holds with theta = 2 d / s^2, and a threshold h then bounds an honest worker's false
suspension within n checked jobs by 2 n exp(-theta h) (both sides; Ville's inequality).

The published policy runs three detectors and suspends when any crosses: v3's two-sided CUSUM
(d 1, h 12) over u, a fast lower-side CUSUM (``fast_drift``, ``fast_threshold``) and the e-detector;
its bound is the sum of theirs. v4's fast CUSUM counted u (d 1.5, h 9); v5's counts each sampled job's
opening evidence (``stats.opening_evidence``: the smallest z over its first 24 and 48 tokens,
standardised), d 1.5 and the published threshold. ``--published-only`` measures just v3, v4, the v5
fast CUSUM alone and v5.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from basis.verification.policy import VerificationPolicy
from basis.verification.stats import job_statistic, opening_evidence
from bench_verify_analysis import HONEST_KINDS, evidence, judge, share
from bench_verify_lines import token_score


@dataclass(frozen=True)
class Rule:
    name: str
    drift: float
    threshold: float  # CUSUM level that suspends (inf: no CUSUM)
    e_alpha: float  # the e-detector's alpha (0: no e-detector)
    e_kind: str = "mix4"  # the e-detector's per-job log E: "mix4" (v3) or "hot" (ratios 1.5 and 2 only)
    fast_drift: float = 0.0  # a second, lower-side-only CUSUM beside it (v4's fast one)
    fast_threshold: float = math.inf  # its level that suspends (inf: none)
    fast_key: str = "open"  # what the fast CUSUM counts: "open" (v5: the opening evidence) or "u" (v4)


def job_evidence(rows: list, temperature: float, ids: list[int], binding: str, policy: VerificationPolicy) -> dict:
    """(failed, u, log E mix4, log E hot, z, opening evidence) of one job as the verifier judges it."""
    stat = job_statistic([token_score(r) for r in rows], temperature, ids)
    failed, u = judge(stat, binding, policy)
    opening = opening_evidence(stat, policy.calibration_for(binding))
    hot = None
    if stat.temperature_log_e is not None:
        sums = [math.fsum(r[5][j] for r in rows) for j in (2, 3)]  # ratios 1.5 and 2.0
        top = max(sums)
        hot = -1e6 if top == -math.inf else top + math.log(sum(math.exp(x - top) for x in sums) / 2)
    return {"failed": failed, "u": u, "mix4": stat.temperature_log_e, "hot": hot, "z": stat.z,
            "tail": stat.tail, "tokens": stat.tokens, "open": u if opening is None else opening}


def read_jobs(files: list[str]) -> list[dict]:
    out = []
    for f in files:
        if not Path(f).exists():
            print(f"({f}: not there, left out)")
            continue
        text = Path(f).read_text()
        for line in text[: text.rfind("\n") + 1].splitlines():
            r = json.loads(line)
            if r.get("pos") and r["temperature"] > 0:
                out.append({**r, "file": Path(f).stem})
    return out


def simulate(ev: list[dict], rule: Rule, workers: int, checks: int, rng: np.random.Generator) -> np.ndarray:
    """Checked jobs until suspension per simulated worker (0: not within ``checks``)."""
    u = np.array([e["u"] for e in ev])
    o = np.array([e[rule.fast_key] for e in ev])
    le = np.array([e[rule.e_kind] if e[rule.e_kind] is not None else 0.0 for e in ev])
    upper = np.zeros(workers)
    lower = np.zeros(workers)
    fast = np.zeros(workers)
    m = np.zeros(workers)
    when = np.zeros(workers, dtype=int)
    e_level = -math.log(rule.e_alpha) if rule.e_alpha > 0 else math.inf
    for n in range(1, checks + 1):
        idx = rng.integers(0, len(ev), workers)
        upper = np.maximum(0, upper + u[idx] - rule.drift)
        lower = np.maximum(0, lower - u[idx] - rule.drift)
        fast = np.maximum(0, fast - o[idx] - rule.fast_drift)
        m = np.maximum(0, m + le[idx])
        hit = (np.maximum(upper, lower) >= rule.threshold) | (m >= e_level) | (fast >= rule.fast_threshold)
        when[(when == 0) & hit] = n
        if (when > 0).all():
            break
    return when


def cheat_row(label: str, ev: list[dict], rule: Rule, trials: int, cap: int, rng: np.random.Generator) -> str:
    when = simulate(ev, rule, trials, cap, rng)
    runs = np.where(when == 0, cap + 1, when)
    worst = f">{cap}" if (when == 0).any() else str(int(runs.max()))
    zs = [e["z"] for e in ev]
    return (f"| {label} | {rule.name} | {len(ev)} | {statistics.fmean(zs):.2f} ({min(zs):.2f}..{max(zs):.2f}) | "
            f"{100 * statistics.fmean(e['failed'] for e in ev):.0f} % | {np.median(runs):.0f} | {worst} | "
            f"{100 * (runs <= 5).mean():.1f} % | {100 * (runs <= 20).mean():.1f} % |")


def theta_star(u: np.ndarray, drift: float, side: int) -> float:
    """The largest theta (grid 0.01) with mean exp(theta (side * u - drift)) <= 1 over these honest jobs:
    the CUSUM side's e-value exponent the measured jobs support."""
    ths = np.arange(0.01, 8.0, 0.01)
    ok = [t for t in ths if np.exp(t * (side * u - drift)).mean() <= 1.0]
    return float(max(ok)) if ok else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--honest", default="/tmp/vb2/scored-S.jsonl,/tmp/vb2/scored-T2B32.jsonl")
    ap.add_argument("--cheat", default="/tmp/othermodel/other-48.jsonl,/tmp/othermodel/other-128.jsonl")
    ap.add_argument("--trials", type=int, default=10_000, help="simulated cheating workers per cell")
    ap.add_argument("--cap", type=int, default=200)
    ap.add_argument("--honest-workers", type=int, default=1000)
    ap.add_argument("--honest-checked", type=int, default=2000)
    ap.add_argument("--lengths", default="16,24,32,40,48,64,96,128")
    ap.add_argument("--boot", type=int, default=200, help="bootstrap resamples of a cell's jobs")
    ap.add_argument("--pools", default="",
                    help="bench_verify.py pool files (JSON): their cheats under the compared rules")
    ap.add_argument("--published-only", action="store_true",
                    help="only v3, v4, the v5 fast CUSUM alone and the published v5 (not the candidate grid)")
    args = ap.parse_args()
    policy = VerificationPolicy()
    rng = np.random.default_rng(11)
    e_alpha = policy.worker_e_alpha
    v3 = Rule("v3: CUSUM d 1 h 12", policy.drift, policy.worker_threshold, e_alpha)
    fd, fh = policy.fast_drift, policy.fast_threshold
    v4 = Rule("v4: v3 + fast CUSUM on u d 1.5 h 9", policy.drift, policy.worker_threshold, e_alpha,
              fast_drift=1.5, fast_threshold=9.0, fast_key="u")
    v5 = Rule(f"v5: v3 + fast CUSUM on the opening d {fd:g} h {fh:g}", policy.drift, policy.worker_threshold,
              e_alpha, fast_drift=fd, fast_threshold=fh)
    fast_alone = Rule(f"fast CUSUM on the opening d {fd:g} h {fh:g} alone", 1.0, math.inf, 0.0, fast_drift=fd,
                      fast_threshold=fh)
    grid = ((1.0, 11.0), (1.0, 10.0), (1.0, 9.0), (1.0, 8.0), (1.5, 9.0), (1.5, 8.0), (1.5, 7.0), (2.0, 6.0),
            (0.5, 15.0))
    if args.published_only:
        rules = [v3, v4, fast_alone, v5]
    else:
        rules = [v3, v4, fast_alone, v5] + [Rule(f"CUSUM d {d} h {h}", d, h, e_alpha) for d, h in grid]
        rules += [Rule("v3, hot-only e-det", 1.0, 12.0, e_alpha, "hot"),
                  Rule("e-det alone (v3 mix)", 1.0, math.inf, e_alpha)]
    compare = [v3, v4, v5] + [r for r in rules if r.fast_drift == 0 and r.threshold < math.inf
                          and (r.drift, r.threshold) in ((1.0, 10.0), (1.0, 9.0), (1.5, 7.0))]

    honest = read_jobs(args.honest.split(","))
    cheats = read_jobs(args.cheat.split(","))
    print(f"policy: job_threshold {policy.job_threshold}, worker_threshold {policy.worker_threshold}, drift "
          f"{policy.drift}, fast_drift {fd}, fast_threshold {fh}, worker_e_alpha {e_alpha}; {len(honest)} honest "
          f"sampled jobs, {len(cheats)} cheat jobs; "
          f"{args.trials} cheating workers a cell, {args.honest_workers} honest workers x {args.honest_checked} "
          "checked jobs a configuration\n")

    hcells: dict[tuple, list[dict]] = {}
    for r in honest:
        key = (r["binding"], r["temperature"], r["top_p"], r.get("worker_threads", 1), r.get("n_batch", 512))
        hcells.setdefault(key, []).append(job_evidence(r["pos"], r["temperature"], r["ids"], r["binding"], policy))
    ccells: dict[tuple, list[dict]] = {}
    for r in cheats:
        ccells.setdefault((r["temperature"], r["top_p"], r["file"]), []).append(
            job_evidence(r["pos"], r["temperature"], r["ids"], r["binding"], policy))

    print("### Cheat (other_model vs smollm2-135m-instruct), v3, v4 and the published v5 policy\n")
    print(CHEAT_HEADER)
    for key, ev in sorted(ccells.items()):
        for rule in (v3, v4, v5):
            print(cheat_row(f"{key[0]}, {key[2]}", ev, rule, args.trials, args.cap, rng))
    # every job of a claimed T cut at 48 tokens (the 48-token files whole, the longer ones' first 48):
    # one population, since the first 48 tokens of a longer job are distributed as a 48-token job
    pooled: dict[float, list[dict]] = {}
    for r in cheats:
        if r["kind"] != "other_model":  # a suffix_other job's first 48 tokens are the claimed model's own
            continue
        pooled.setdefault(r["temperature"], []).append(
            job_evidence(r["pos"][:48], r["temperature"], r["ids"][:48], r["binding"], policy))
    print("\n### Every cheat job cut at 48 tokens, pooled per claimed T: the share within 5 and its spread\n")
    print(f"Bootstrap: {args.boot} resamples of the cell's jobs (with replacement), {args.trials // 10} "
          "workers each; the 5-95 % range of the share of workers suspended within 5 checked jobs.\n")
    print("| claimed T | jobs | rule | within 5 (all jobs) | bootstrap median | bootstrap 5-95 % |")
    print("|---|---|---|---|---|---|")
    for t, ev in sorted(pooled.items()):
        for rule in compare:
            point = (simulate(ev, rule, args.trials, 5, rng) > 0).mean()
            boot = []
            for _ in range(args.boot):
                pick = [ev[i] for i in rng.integers(0, len(ev), len(ev))]
                boot.append((simulate(pick, rule, args.trials // 10, 5, rng) > 0).mean())
            lo, med, hi = np.percentile(boot, [5, 50, 95])
            print(f"| {t} | {len(ev)} | {rule.name} | {100 * point:.1f} % | {100 * med:.1f} % | "
                  f"{100 * lo:.1f}-{100 * hi:.1f} % |")

    print("\n### Cheat z per job (u = z / 1.1): quantiles\n")
    for key, ev in sorted(ccells.items()):
        zs = sorted(e["z"] for e in ev)
        q = [zs[int(p * (len(zs) - 1))] for p in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)]
        print(f"- T {key[0]}, {key[2]}: {len(zs)} jobs, {min(e['tokens'] for e in ev)}.."
              f"{max(e['tokens'] for e in ev)} tokens; z min / 10 / 25 / 50 / 75 / 90 % / max "
              + " / ".join(f"{x:.2f}" for x in q) + f"; failed alone {sum(e['failed'] for e in ev)}; "
              f"z > -1.1 (adds nothing to the CUSUM at drift 1): {sum(z > -1.1 for z in zs)}")

    # honest: per configuration, the e-value exponent each CUSUM side supports, and resampled workers
    print("\n### Honest configurations: the CUSUM as an e-detector\n")
    print("theta*: the largest theta with mean exp(theta (-u - d)) <= 1 (lower side) / exp(theta (u - d)) (upper) over "
          "the configuration's real jobs; Gaussian u with sd s gives 2 d / s^2\n")
    print("| configuration | jobs | u mean / sd / skew / min | theta* d 0.5 | theta* d 1 | theta* d 1.5 | theta* d 2 |")
    print("|---|---|---|---|---|---|---|")
    thetas: dict[float, float] = {}  # both sides
    side_thetas: dict[tuple[float, int], float] = {}  # (drift, side): each side alone
    fast_thetas: dict[tuple[float, str], float] = {}  # (drift, evidence): the fast CUSUM's (lower side)
    for key, ev in sorted(hcells.items()):
        u = np.array([e["u"] for e in ev])
        for d in (1.0, 1.5, 2.0, 2.5):
            for k in ("u", "open"):
                x = np.array([e[k] for e in ev])
                fast_thetas[d, k] = min(fast_thetas.get((d, k), math.inf), theta_star(x, d, -1))
        cells = []
        for d in sorted({0.5, 1.0, 1.5, 2.0, 2.5, fd}):
            lo, hi = theta_star(u, d, -1), theta_star(u, d, +1)
            thetas[d] = min(thetas.get(d, math.inf), lo, hi)
            side_thetas[d, -1] = min(side_thetas.get((d, -1), math.inf), lo)
            side_thetas[d, 1] = min(side_thetas.get((d, 1), math.inf), hi)
            if d not in (0.5, 1.0, 1.5, 2.0):
                continue
            cells.append(f"{lo:.2f} / {hi:.2f}")
        skew = float(((u - u.mean()) ** 3).mean() / u.std() ** 3)
        print(f"| {key[0][:7]} T {key[1]} top_p {key[2]} threads {key[3]} n_batch {key[4]} | {len(ev)} | "
              f"{u.mean():.3f} / {u.std(ddof=1):.3f} / {skew:.2f} / {u.min():.2f} | " + " | ".join(cells) + " |")

    print("\n### Candidate worker rules (each with the v3 e-detector beside its CUSUM unless named)\n")
    print("Bound: an honest worker's false suspension by the whole rule within n = "
          f"{args.honest_checked} checked jobs <= the sum over its detectors: each CUSUM side n exp(-theta h), theta "
          "that side's smallest theta* over the honest configurations at its drift (a fast lower-side CUSUM: "
          "the lower side's at fast_drift, with fast_threshold); the e-detector n x worker_e_alpha. theta: the "
          "CUSUM's lower / upper side's, then the fast CUSUM's. Highest level: the two-sided CUSUM's / the fast "
          "CUSUM's.\n")

    def bound_of(rule: Rule) -> float:
        n = args.honest_checked
        out = n * rule.e_alpha
        if rule.threshold < math.inf:
            out += sum(n * math.exp(-side_thetas[rule.drift, side] * rule.threshold) for side in (-1, 1))
        if rule.fast_threshold < math.inf:
            out += n * math.exp(-fast_thetas[rule.fast_drift, rule.fast_key] * rule.fast_threshold)
        return out

    temps = sorted({k[0] for k in ccells})
    print("| rule | theta | bound, 2,000 checked jobs | honest: suspended (all configurations) | "
          "honest: highest CUSUM | " + " | ".join(f"cheat T {t} ({k[2]}): within 5 / median / worst"
                                                 for k in sorted(ccells) for t in [k[0]]) + " |")
    print("|---|---|---|---|---|" + "---|" * len(ccells))
    for rule in rules:
        th = " / ".join(([f"{side_thetas[rule.drift, -1]:.2f} / {side_thetas[rule.drift, 1]:.2f}"]
                         if rule.threshold < math.inf else [])
                        + ([f"fast {fast_thetas[rule.fast_drift, rule.fast_key]:.2f}"]
                           if rule.fast_threshold < math.inf else []))
        bound = bound_of(rule)
        sus, top, top_f = 0, 0.0, 0.0
        for ev in hcells.values():
            when, t_c, _, t_f = honest_run(ev, rule, args.honest_workers, args.honest_checked, rng)
            sus, top, top_f = sus + int((when > 0).sum()), max(top, t_c), max(top_f, t_f)
        cells = []
        for _key, ev in sorted(ccells.items()):
            when = simulate(ev, rule, args.trials, args.cap, rng)
            runs = np.where(when == 0, args.cap + 1, when)
            worst = f">{args.cap}" if (when == 0).any() else str(int(runs.max()))
            cells.append(f"{100 * (runs <= 5).mean():.1f} % / {np.median(runs):.0f} / {worst}")
        tops = (f"{top:.2f}" if rule.threshold < math.inf else "-") + (
            f" / {top_f:.2f}" if rule.fast_threshold < math.inf else "")
        print(f"| {rule.name} | {th or '-'} | {min(bound, 1.0):.1e} | {sus}/{args.honest_workers * len(hcells)} | "
              f"{tops} | " + " | ".join(cells) + " |")
    _ = temps
    print("\nThe largest CUSUM threshold h (drift 1, with the v3 e-detector) at which each cheat cell is suspended "
          "within 5 checked jobs in >= 99 % of trials, and the honest bound it implies:\n")
    for key, ev in sorted(ccells.items()):
        found = None
        for h in np.arange(12.0, 5.0, -0.25):
            when = simulate(ev, Rule("", 1.0, float(h), e_alpha), args.trials, 5, rng)
            if (when > 0).mean() >= 0.99:
                found = float(h)
                break
        bound = bound_of(Rule("", 1.0, found, e_alpha)) if found else None
        print(f"- T {key[0]}, {key[2]}: " + (f"h <= {found:.2f} (bound {bound:.1e} over {args.honest_checked} checked "
                                             "jobs)" if found else "no h >= 5 reaches it"))

    # the fast CUSUM's parameters: beside v3 and the e-detector, the share of other_model workers at
    # T 1.0 (every job cut at 48 tokens) suspended within 5 checked jobs, against the union's bound
    print("\n### Choosing the fast CUSUM: v3 + a fast lower-side CUSUM (d, h) on the opening evidence + the "
          "e-detector\n")
    print(f"Other model at claimed T 1.0, every job cut at 48 tokens ({len(pooled.get(1.0, []))} jobs): the share of "
          f"{args.trials} workers suspended within 5 checked jobs; the union's honest bound over "
          f"{args.honest_checked} checked jobs (as above). Rows with a bound <= 1e-3.\n")
    print("| fast_drift | fast_threshold | theta (lower side) | bound | within 5 |")
    print("|---|---|---|---|---|")
    for d in (1.0, 1.5, 2.0, 2.5):
        for h in np.arange(5.0, 12.01, 0.5):
            rule = Rule("", v3.drift, v3.threshold, e_alpha, fast_drift=d, fast_threshold=float(h))
            b = bound_of(rule)
            if b > 1e-3 or 1.0 not in pooled:
                continue
            w5 = (simulate(pooled[1.0], rule, args.trials, 5, rng) > 0).mean()
            mark = " (published)" if (d, float(h)) == (fd, fh) else ""
            print(f"| {d:g} | {h:g}{mark} | {fast_thetas[d, 'open']:.2f} | {b:.1e} | {100 * w5:.1f} % |")

    if args.pools:  # every other cheat of the benchmark's pools, under the compared rules
        groups: dict[tuple, list[dict]] = {}
        for f in args.pools.split(","):
            for rec in json.loads(Path(f).read_text()):
                if rec["kind"] not in HONEST_KINDS:
                    # no per-position rows in a pool: its whole-job z stands for its opening z (stat_of)
                    failed, u, log_e, opening = evidence(rec, policy)
                    groups.setdefault((rec["binding"][:7], rec["kind"], rec["temperature"]), []).append(
                        {"failed": failed, "u": u, "mix4": log_e, "hot": None, "z": rec["z"],
                         "open": u if opening is None else opening})
        print("\n### The benchmark's other cheats (pools of bench_verify.py) under the compared rules\n")
        print("checked jobs to suspension: median / worst / within 5 / within 20\n")
        print("| binding | cheat | T | jobs | " + " | ".join(r.name for r in compare) + " |")
        print("|---|---|---|---|" + "---|" * len(compare))
        for key, ev in sorted(groups.items()):
            cells = []
            for rule in compare:
                when = simulate(ev, rule, args.trials, args.cap, rng)
                runs = np.where(when == 0, args.cap + 1, when)
                worst = f">{args.cap}" if (when == 0).any() else str(int(runs.max()))
                med = np.median(runs)
                cells.append(f"{med:.0f} / {worst} / {share(int((runs <= 5).sum()), len(runs))} / "
                             f"{share(int((runs <= 20).sum()), len(runs))}" if med <= args.cap else
                             f">{args.cap} / {worst} / 0 % / 0 %")
            print(f"| {key[0]} | {key[1]} | {key[2]} | {len(ev)} | " + " | ".join(cells) + " |")

    print("\n### Cheat by job length: each job cut at its first L tokens (what max_tokens L would have given)\n")
    print(CHEAT_HEADER)
    for f, t in sorted({(r["file"], r["temperature"]) for r in cheats}):
        jobs = [r for r in cheats if r["file"] == f and r["temperature"] == t]
        longest = max(len(r["ids"]) for r in jobs)
        for L in (int(x) for x in args.lengths.split(",") if int(x) <= longest):
            ev = [job_evidence(r["pos"][:L], t, r["ids"][:L], r["binding"], policy) for r in jobs]
            for rule in compare:
                print(cheat_row(f"{t}, {f}, first {L}", ev, rule, args.trials, args.cap, rng))


CHEAT_HEADER = ("| claimed T, jobs | rule | jobs | z mean (min..max) | caught on first checked job | checked jobs to "
                "suspension: median | worst | within 5 | within 20 |\n|---|---|---|---|---|---|---|---|---|")


def honest_run(ev: list[dict], rule: Rule, workers: int, checks: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, float, float, float]:
    """As ``simulate``, also the highest CUSUM, e-detector and fast CUSUM level any worker reached."""
    u = np.array([e["u"] for e in ev])
    o = np.array([e[rule.fast_key] for e in ev])
    le = np.array([e[rule.e_kind] if e[rule.e_kind] is not None else 0.0 for e in ev])
    upper, lower, m, fast = np.zeros(workers), np.zeros(workers), np.zeros(workers), np.zeros(workers)
    when = np.zeros(workers, dtype=int)
    top = top_m = top_f = 0.0
    e_level = -math.log(rule.e_alpha) if rule.e_alpha > 0 else math.inf
    for n in range(1, checks + 1):
        idx = rng.integers(0, len(ev), workers)
        upper = np.maximum(0, upper + u[idx] - rule.drift)
        lower = np.maximum(0, lower - u[idx] - rule.drift)
        fast = np.maximum(0, fast - o[idx] - rule.fast_drift)
        m = np.maximum(0, m + le[idx])
        level = np.maximum(upper, lower)
        top, top_m, top_f = max(top, float(level.max())), max(top_m, float(m.max())), max(top_f, float(fast.max()))
        when[(when == 0) & ((level >= rule.threshold) | (m >= e_level) | (fast >= rule.fast_threshold))] = n
    return when, top, top_m, top_f


if __name__ == "__main__":
    main()
