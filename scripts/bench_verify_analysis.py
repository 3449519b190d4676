"""The analysis phase of the verification benchmark (``bench_verify.py``): every pooled job judged
with the published policy; honest cells, cheats and cost printed as Markdown tables.
"""

from __future__ import annotations

import math
import random
import statistics

from basis.verification.policy import VerificationPolicy
from basis.verification.sequential import WorkerEvidence
from basis.verification.stats import (
    JobStatistic,
    judge_job,
    opening_evidence,
    standardised,
    temperature_evidence,
    temperature_test,
)

HONEST_KINDS = ("honest", "threads")

TESTS = ("z", "tail", "repeat", "temperature")  # the job tests of the published method, in report order


def temperature_evidence_of(rec: dict) -> tuple[float | None, float | None]:
    """The job's temperature p-value and winning ratio (method v3): recomputed from its per-position
    likelihood ratios when the record has them (so a later fix of the statistic applies to stored
    jobs), else as stored; (None, None) for jobs scored before v3."""
    lrs = rec.get("temperature_lr")
    if lrs and rec.get("agreement") is None:
        return temperature_evidence(lrs)
    return rec.get("temperature_p"), rec.get("temperature_ratio")


def temperature_p(rec: dict) -> float | None:
    return temperature_evidence_of(rec)[0]


def temperature_log_e_of(rec: dict) -> float | None:
    """The job's temperature log E, unclipped (the e-detector's input); None without per-position ratios."""
    lrs = rec.get("temperature_lr")
    if lrs and rec.get("agreement") is None:
        return temperature_test(lrs)[0]
    return rec.get("temperature_log_e")  # per-position files: computed by the verifier's own job_statistic


def stat_of(rec: dict) -> JobStatistic:
    """A pooled job's statistic. Its opening z (policy v5) is the record's (per-position job files); a
    pool record of ``bench_verify.py`` has no per-position rows, and its whole-job z stands in (v5's
    opening z is at most it: cheats' checked jobs to suspension are upper bounds there)."""
    p, ratio = temperature_evidence_of(rec)
    greedy = rec["agreement"] is not None
    return JobStatistic(tokens=rec["tokens"], greedy=greedy, z=rec["z"],
                        agreement=rec["agreement"], tail=rec.get("tail"), repeat=rec.get("repeat"),
                        temperature=p, temperature_ratio=ratio, temperature_log_e=temperature_log_e_of(rec),
                        opening_z=None if greedy else rec.get("opening_z", rec["z"]))


def judge(stat: JobStatistic, binding: str, policy: VerificationPolicy) -> tuple[bool, float]:
    """(failed, evidence) under the published policy, every job test included."""
    verdict, u = judge_job(stat, policy.calibration_for(binding), policy.job_threshold, tail_alpha=policy.tail_alpha,
                           repeat_alpha=policy.repeat_alpha, temperature_alpha=policy.temperature_alpha)
    return verdict == "failed", u


def failed_tests(stat: JobStatistic, binding: str, policy: VerificationPolicy) -> set[str]:
    """Which of the job tests (TESTS) the job fails on its own."""
    cal, out = policy.calibration_for(binding), set()
    u = standardised(stat, cal)
    if (u < -policy.job_threshold) if stat.greedy else (stat.z is not None and abs(u) > policy.job_threshold):
        out.add("z")
    if stat.tail is not None and stat.tail < policy.tail_alpha:
        out.add("tail")
    if stat.repeat is not None and stat.repeat < policy.repeat_alpha:
        out.add("repeat")
    if stat.temperature is not None and stat.temperature < policy.temperature_alpha:
        out.add("temperature")
    return out


def caught_by(stats: list[JobStatistic], binding: str, policy: VerificationPolicy) -> str:
    """Failed jobs per test, "z / tail / repeat / temperature" (a job can fail several)."""
    fails = [failed_tests(s, binding, policy) for s in stats]
    return " / ".join(str(sum(t in f for f in fails)) for t in TESTS)


def share(n: int, of: int) -> str:
    """n of ``of`` as a percentage; "100 %" and "0 %" only when exact (999 of 1,000 is 99.9 %)."""
    pct = 100 * n / of
    text = f"{pct:.0f}"
    if (text == "100" and n < of) or (text == "0" and n > 0):
        text = f"{pct:.1f}" if 0.1 <= pct <= 99.9 else f"{pct:.2f}"
    return f"{text} %"


def log_p(p: float) -> str:
    """A p-value as a power of ten, e.g. 1e-4.5 (1 stays 1, and from 0.01 up: plain, 0.042)."""
    if p >= 1 or p <= 0:
        return "1" if p >= 1 else "0"
    return f"{p:.2g}" if p >= 0.01 else f"1e{math.log10(p):.1f}"


def evidence(rec: dict, policy: VerificationPolicy) -> tuple[bool, float, float | None, float | None]:
    """(failed, CUSUM evidence u, temperature log E for the e-detector, the fast CUSUM's opening
    evidence) of one pooled job."""
    stat = stat_of(rec)
    return (*judge(stat, rec["binding"], policy), stat.temperature_log_e,
            opening_evidence(stat, policy.calibration_for(rec["binding"])))


def suspended(ev: WorkerEvidence, policy: VerificationPolicy) -> bool:
    """Any published worker rule: the CUSUM, the fast lower-side CUSUM (v4, v5), or the e-detector over the
    temperature e-values."""
    return (ev.crossed(policy.worker_threshold) or ev.fast_crossed(policy.fast_threshold)
            or ev.e_crossed(policy.worker_e_alpha))


def checks_until_suspended(draw, policy: VerificationPolicy, cap: int) -> int | None:
    """``draw()`` gives (failed, u), (failed, u, log E) or (failed, u, log E, opening evidence) for
    each checked job."""
    ev = WorkerEvidence()
    for n in range(1, cap + 1):
        failed, u, *rest = draw()
        ev = ev.update(u, failed=failed, drift=policy.drift, log_e=rest[0] if rest else None,
                       fast_drift=policy.fast_drift, fast_evidence=rest[1] if len(rest) > 1 else None)
        if suspended(ev, policy):
            return n
    return None


def normal_tail(mu: float, sd: float, thr: float) -> float:
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    return phi((-thr - mu) / sd) + 1 - phi((thr - mu) / sd)


def analyse(pool: list[dict], args) -> None:
    policy = VerificationPolicy()
    rng = random.Random(11)
    print(f"policy: job_threshold {policy.job_threshold}, worker_threshold {policy.worker_threshold}, "
          f"drift {policy.drift}, tail_alpha {policy.tail_alpha}, repeat_alpha {policy.repeat_alpha}, "
          f"temperature_alpha {policy.temperature_alpha}, worker_e_alpha {policy.worker_e_alpha}; calibration "
          + "; ".join(f"{m}: {vars(policy.calibration_for(m))}" for m in args.bindings))
    groups: dict[tuple, list[dict]] = {}
    for rec in pool:
        groups.setdefault((rec["binding"], rec["kind"], rec["temperature"], rec["top_p"]), []).append(rec)
    if any(kind in HONEST_KINDS for _, kind, _, _ in groups):
        analyse_honest_cells(pool, groups, policy, rng, args)
    if any(kind not in HONEST_KINDS for _, kind, _, _ in groups):
        analyse_cheats(groups, policy, rng, args)
    print_cost(pool + args.real, policy, args)


def analyse_honest_cells(pool: list[dict], groups: dict[tuple, list[dict]], policy: VerificationPolicy,
                         rng: random.Random, args) -> None:
    print("\n### Honest workers\n")
    pooled_sd = {}
    for b in args.bindings:
        us = [standardised(stat_of(r), policy.calibration_for(b)) for r in pool
              if r["binding"] == b and r["kind"] in HONEST_KINDS and r["agreement"] is None]
        if len(us) > 1:
            pooled_sd[b] = statistics.stdev(us)
    for b in args.bindings:
        hz = [r["z"] for r in pool if r["binding"] == b and r["kind"] in HONEST_KINDS and r["agreement"] is None]
        ga = [r["agreement"] for r in pool if r["binding"] == b and r["kind"] in HONEST_KINDS
              and r["agreement"] is not None]
        tails = [r["tail"] for r in pool if r["binding"] == b and r["kind"] in HONEST_KINDS and r["tail"] is not None]
        if len(hz) > 1:
            print(f"- {b}: pooled honest sampled jobs {len(hz)}: z mean {statistics.fmean(hz):.3f}, "
                  f"sd {statistics.stdev(hz):.3f}, min {min(hz):.2f}, max {max(hz):.2f}; tail p-value < 0.05 in "
                  f"{sum(t < 0.05 for t in tails)}, < 0.01 in {sum(t < 0.01 for t in tails)} (super-uniform: "
                  f"at most {0.05 * len(tails):.1f} and {0.01 * len(tails):.1f} expected)"
                  + (f"; greedy agreement mean {statistics.fmean(ga):.3f}, min {min(ga):.3f} over {len(ga)} jobs"
                     if ga else ""))
    print()
    print("| binding | worker | T | top_p | jobs | z or agreement: mean (sd; min..max) | u min..max | "
          "false fails seen | est. false-fail rate | suspended (bootstrap) | suspended (stress) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key, recs in sorted(groups.items()):
        b, kind, t, p = key
        if kind not in HONEST_KINDS:
            continue
        ev = [evidence(r, policy) for r in recs]
        us = [e[1] for e in ev]
        raw = [r["agreement"] if r["agreement"] is not None else r["z"] for r in recs]
        greedy = recs[0]["agreement"] is not None
        # the normal fit uses the uncapped deviates (greedy evidence is capped at 0 when judged)
        raw_u = [standardised(stat_of(r), policy.calibration_for(b)) for r in recs]
        mu = statistics.fmean(raw_u)
        sd = max(statistics.stdev(raw_u) if len(raw_u) > 1 else 1.0, 0.25)
        if not greedy:  # the stress test: the cell's mean, the binding's pooled sd (+25 % below)
            sd = pooled_sd.get(b, sd)
        thr = policy.job_threshold
        est = normal_tail(mu, sd, thr) if not greedy else 0.5 * math.erfc((thr + mu) / (sd * math.sqrt(2)))
        boot = sum(checks_until_suspended(lambda ev=ev: rng.choice(ev), policy, args.honest_checked) is not None
                   for _ in range(args.trials))

        def normal_draw(mu=mu, sd=sd, greedy=greedy, thr=thr):
            u = rng.gauss(mu, 1.25 * sd)
            if greedy:
                return u < -thr, min(u, 0.0)
            return abs(u) > thr, u

        par = sum(checks_until_suspended(normal_draw, policy, args.honest_checked) is not None
                  for _ in range(args.trials))
        print(f"| {b} | {kind} | {t} | {p} | {len(recs)} | {statistics.fmean(raw):.3f} "
              f"({statistics.stdev(raw) if len(raw) > 1 else 0:.3f}; {min(raw):.2f}..{max(raw):.2f}) | "
              f"{min(us):.2f}..{max(us):.2f} | {sum(e[0] for e in ev)}/{len(ev)} | {est:.1e} | "
              f"{boot}/{args.trials} x {args.honest_checked} | {par}/{args.trials} x {args.honest_checked} |")


def analyse_cheats(groups: dict[tuple, list[dict]], policy: VerificationPolicy, rng: random.Random, args) -> None:
    print("\n### Cheats\n")
    print("| binding | cheat | claimed T | jobs | z mean (min..max) | caught on first checked job | "
          "failed by z / tail / repeat / temperature | p_temperature: largest (median) | "
          "checked jobs to suspension: median | worst | suspended within 5 / 20 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key, recs in sorted(groups.items()):
        b, kind, t, _ = key
        if kind in HONEST_KINDS:
            continue
        ev = [evidence(r, policy) for r in recs]
        runs = [checks_until_suspended(lambda ev=ev: rng.choice(ev), policy, args.cap) for _ in range(args.trials)]
        done = sorted(n for n in runs if n is not None)
        never = len(runs) - len(done)
        med = statistics.median([n if n is not None else math.inf for n in runs])
        worst = f">{args.cap}" if never else str(max(done))
        zs = [r["z"] for r in recs]
        tps = [p for p in map(temperature_p, recs) if p is not None]
        tp = f"{log_p(max(tps))} ({log_p(statistics.median(tps))})" if tps else "-"
        print(f"| {b} | {kind} | {t} | {len(recs)} | {statistics.fmean(zs):.2f} ({min(zs):.2f}..{max(zs):.2f}) | "
              f"{100 * sum(e[0] for e in ev) / len(ev):.0f} % | {caught_by([stat_of(r) for r in recs], b, policy)} | "
              f"{tp} | {med if med != math.inf else f'>{args.cap}'} | "
              f"{worst} | {share(sum(n <= 5 for n in done), len(runs))} / "
              f"{share(sum(n <= 20 for n in done), len(runs))} |")


def print_cost(recs: list[dict], policy: VerificationPolicy, args) -> None:
    header = "\n### Cost\n"
    for b in args.bindings:
        gen = [r for r in recs if r["binding"] == b and r.get("gen_tokens")]
        sc = [r for r in recs if r["binding"] == b and "score_cpu" in r]
        if not gen or not sc:
            continue
        g = sum(r["gen_cpu"] for r in gen) / max(1, sum(r["gen_tokens"] for r in gen))
        s = sum(r["score_cpu"] for r in sc) / max(1, sum(r["tokens"] for r in sc))
        rate = policy.sample_bps / 10_000
        if header:
            print(header)
            header = ""
        print(f"- {b}: worker {1000 * g:.1f} ms CPU per generated token; verifier {1000 * s:.1f} ms CPU per checked "
              f"token ({s / g:.2f}x); at the {100 * rate:.0f} % sample rate verification costs "
              f"{100 * rate * s / g:.1f} % of the serving CPU (probation jobs aside)")
