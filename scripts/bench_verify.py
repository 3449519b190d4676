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
The gateway, protocol and ledger path is covered by the end-to-end tests, not here.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

from basis.engines.base import GenerateRequest
from basis.engines.llama_cpp import LlamaCppEngine
from basis.engines.llama_scoring import LlamaScorer
from basis.engines.scoring import LOGPROB_FLOOR, ScoreRequest, TokenScore
from basis.models.binding import ModelBinding
from basis.verification.policy import VerificationPolicy
from basis.verification.sequential import WorkerEvidence
from basis.verification.stats import JobStatistic, job_statistic, judge_job, standardised

PROMPTS = [
    "Tell me about the sea.", "Write a short story about a lighthouse keeper.", "Explain how a bicycle works.",
    "What should I cook tonight?", "Describe your favourite city.", "Give me three tips for learning to code.",
    "Why is the sky blue?", "Write a poem about autumn.", "How do trains stay on the rails?",
    "Summarise the history of paper.", "What is a good name for a cat?", "Explain photosynthesis to a child.",
    "Plan a weekend trip to the mountains.", "What makes a good friend?", "Describe a busy market.",
    "How does a refrigerator keep food cold?",
]
HONEST_KINDS = ("honest", "threads")
OTHER = {"gemma3-270m": "smollm2-135m-instruct", "smollm2-135m-instruct": "gemma3-270m"}


def quantize_q2k(src: str, out_dir: str) -> str:
    """The claimed model requantized to Q2_K now, with llama.cpp's own quantizer."""
    import llama_cpp

    dst = str(Path(out_dir) / (Path(src).stem + ".Q2_K.gguf"))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K
    params.allow_requantize = True
    params.nthread = 1
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")
    return dst


def job_seed(*key: object) -> int:
    """A well-spread seed per job. Not ``base + k``: llama.cpp's sampler streams for consecutive
    seeds are correlated (measured: SmolLM2 at T 1.0, seeds 1000..1007 over 8 different prompts
    gave z -0.51 on average, 7 of 8 within -0.58..-1.04; seeds 100000..100007 +0.47), so a cell of
    consecutive seeds holds far fewer independent jobs than it counts."""
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:4], "big") & 0x7FFFFFFF


class Lab:
    """Engines and the scorer for one claimed binding."""

    def __init__(self, gguf: str, tokens: int, tmp: str, worker_threads: int, consecutive_seeds: bool = False) -> None:
        self.name = gguf
        self.consecutive_seeds = consecutive_seeds
        self.tokens = tokens
        self.binding = ModelBinding(model_id=gguf, gguf=gguf)
        self.other = ModelBinding(model_id=OTHER[gguf], gguf=OTHER[gguf])
        self.q2k = ModelBinding(model_id=gguf, gguf=quantize_q2k(self.binding.gguf_path, tmp))
        self.engines = {k: LlamaCppEngine(b, n_ctx=512, n_threads=t) for k, b, t in (
            ("honest", self.binding, 1), ("threads", self.binding, worker_threads), ("other", self.other, 1),
            ("q2k", self.q2k, 1))}
        self.scorer = LlamaScorer(self.binding, n_threads=1)
        ordinary = [i for i in range(self.binding.n_vocab) if self.binding.vocab.pieces[i]]
        self.ordinary = [i for i in ordinary if i not in self.binding.eos_token_ids]

    def seed(self, *key: object) -> int:
        """A well-spread seed per job (``--seeds spread``), or the earlier ``base + k`` scheme
        (``--seeds consecutive``: reproduces the jobs of earlier reports). llama.cpp's sampler streams
        for consecutive seeds are correlated: see job_seed."""
        if self.consecutive_seeds:
            base = {"honest": 1000, "threads": 1000, "double_temperature": 2000, "greedy": 3000, "q2k": 4000,
                    "other_model": 5000}.get(str(key[0]), 0)
            return base + int(key[-1])  # type: ignore[call-overload]
        return job_seed(self.name, *key)

    async def generate(self, engine: str, prompt_text: str, temperature: float, top_p: float, seed: int,
                       max_tokens: int = 0):
        eng = self.engines[engine]
        b = eng.binding("")
        prompt = b.apply_chat_template([{"role": "user", "content": prompt_text}])
        req = GenerateRequest(prompt_ids=prompt, max_tokens=max_tokens or self.tokens, temperature=temperature,
                              top_p=top_p, seed=seed)
        t0 = time.process_time()
        ids = [i async for step in eng.generate(req) for i in step.ids]
        return b, ids, time.process_time() - t0

    async def score(self, prompt_text: str, ids: list[int], temperature: float, top_p: float) -> dict:
        prompt = self.binding.apply_chat_template([{"role": "user", "content": prompt_text}])
        t0 = time.process_time()
        scores = await self.scorer.score(ScoreRequest(prompt_ids=prompt, output_ids=ids, temperature=temperature,
                                                      top_p=top_p, model=self.name))
        cpu = time.process_time() - t0
        stat = job_statistic(scores, temperature, ids)
        return {"tokens": len(ids), "z": stat.z, "agreement": stat.agreement, "tail": stat.tail,
                "repeat": stat.repeat, "score_cpu": cpu,
                "excess": sum(s.logprob - s.expected for s in scores), "var": sum(s.variance for s in scores),
                "floored": sum(s.logprob <= LOGPROB_FLOOR for s in scores)}

    async def job(self, kind: str, temperature: float, top_p: float, k: int) -> dict | None:
        rng = random.Random(zlib.crc32(repr((self.name, kind, temperature, top_p, k)).encode()))
        text = PROMPTS[k % len(PROMPTS)]
        gen_cpu, gen_tokens = 0.0, 0
        seed = self.seed(kind, temperature, top_p, k)
        if kind in ("honest", "threads"):
            _, ids, gen_cpu = await self.generate(kind, text, temperature, top_p, seed)
            gen_tokens = len(ids)
        elif kind == "random":
            ids = [rng.choice(self.ordinary) for _ in range(self.tokens)]
        elif kind == "stuck":  # a common token (one of the first 5,000 ordinary ids): the hard case
            ids = [rng.choice(self.ordinary[:5000])] * self.tokens
        elif kind == "stuck_any":  # any ordinary id, as a broken engine would
            ids = [rng.choice(self.ordinary)] * self.tokens
        elif kind == "stuck_first":  # the reference's own most likely first token: the entry costs nothing
            _, first, _ = await self.generate("honest", text, 0.0, 1.0, 0, max_tokens=1)
            if not first:
                return None
            ids = first[:1] * self.tokens
        elif kind == "double_temperature":
            _, ids, _ = await self.generate("honest", text, 2 * temperature, top_p, seed)
        elif kind == "greedy":
            _, ids, _ = await self.generate("honest", text, 0.0, 1.0, seed)
        elif kind == "q2k":
            _, ids, _ = await self.generate("q2k", text, temperature, top_p, seed)
        elif kind == "other_model":
            ob, oids, _ = await self.generate("other", text, temperature, top_p, seed)
            ids = self.binding.tokenize(ob.detokenize(oids).decode("utf-8", "replace"))[: self.tokens]
        else:
            raise ValueError(kind)
        if len(ids) < 4:
            return None  # the model ended at once: nothing to judge
        rec = {"binding": self.name, "kind": kind, "temperature": temperature, "top_p": top_p,
               "gen_cpu": gen_cpu, "gen_tokens": gen_tokens}
        rec.update(await self.score(text, ids, temperature, top_p))
        return rec


def plan(args) -> list[tuple[str, float, float, int]]:
    """(kind, claimed temperature, top_p, jobs), most telling first: a bounded run that is cut
    short still has the main cells."""
    j, c = args.jobs, args.cheat_jobs
    out = [("honest", 1.0, 1.0, j), ("honest", 0.7, 1.0, j), ("honest", 0.0, 1.0, j)]
    for t in (0.7, 1.0):
        out += [(k, t, 1.0, c) for k in ("random", "stuck", "double_temperature", "greedy", "other_model", "q2k")]
    out += [(k, t, 1.0, c) for t in (0.7, 1.0, 1.3) for k in ("stuck_any", "stuck_first")]
    out += [("honest", 1.3, 1.0, j), ("honest", 0.7, 0.9, j), ("honest", 1.0, 0.9, j), ("honest", 1.3, 0.9, j),
            ("threads", 1.0, 1.0, max(2, j // 2))]
    out += [(k, 1.3, 1.0, c) for k in ("random", "stuck", "double_temperature", "greedy", "other_model", "q2k")]
    return out


async def collect(args, pool: list[dict]) -> None:
    """Runs every planned cell not already in ``pool``, saving the pool after each cell."""
    done = {(r["binding"], r["kind"], r["temperature"], r["top_p"]) for r in pool}
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        for gguf in args.bindings:
            todo = [cell for cell in plan(args) if (gguf, *cell[:3]) not in done
                    and (not args.kinds or cell[0] in args.kinds)]
            if not todo:
                continue
            lab = Lab(gguf, args.tokens, tmp, args.worker_threads, args.seeds == "consecutive")
            for kind, t, p, n in todo:
                t0 = time.time()
                for k in range(n):
                    rec = await lab.job(kind, t, p, k)
                    if rec is not None:
                        pool.append(rec)
                if args.pool:
                    Path(args.pool).write_text(json.dumps(pool))
                print(f"  {gguf} {kind} T={t} top_p={p}: {n} jobs in {time.time() - t0:.0f}s", file=sys.stderr)


# -- analysis ----------------------------------------------------------------------------------
def stat_of(rec: dict) -> JobStatistic:
    return JobStatistic(tokens=rec["tokens"], greedy=rec["agreement"] is not None, z=rec["z"],
                        agreement=rec["agreement"], tail=rec.get("tail"), repeat=rec.get("repeat"))


def evidence(rec: dict, policy: VerificationPolicy) -> tuple[bool, float]:
    verdict, u = judge_job(stat_of(rec), policy.calibration_for(rec["binding"]), policy.job_threshold,
                           tail_alpha=policy.tail_alpha, repeat_alpha=policy.repeat_alpha)
    return verdict == "failed", u


def checks_until_suspended(draw, policy: VerificationPolicy, cap: int) -> int | None:
    ev = WorkerEvidence()
    for n in range(1, cap + 1):
        failed, u = draw()
        ev = ev.update(u, failed=failed, drift=policy.drift)
        if ev.crossed(policy.worker_threshold):
            return n
    return None


def normal_tail(mu: float, sd: float, thr: float) -> float:
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    return phi((-thr - mu) / sd) + 1 - phi((thr - mu) / sd)


def analyse(pool: list[dict], args) -> None:
    policy = VerificationPolicy()
    rng = random.Random(11)
    print(f"policy: job_threshold {policy.job_threshold}, worker_threshold {policy.worker_threshold}, "
          f"drift {policy.drift}; calibration "
          + "; ".join(f"{m}: {vars(policy.calibration_for(m))}" for m in args.bindings))
    groups: dict[tuple, list[dict]] = {}
    for rec in pool:
        groups.setdefault((rec["binding"], rec["kind"], rec["temperature"], rec["top_p"]), []).append(rec)

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
        us = [u for _, u in ev]
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
              f"{min(us):.2f}..{max(us):.2f} | {sum(f for f, _ in ev)}/{len(ev)} | {est:.1e} | "
              f"{boot}/{args.trials} x {args.honest_checked} | {par}/{args.trials} x {args.honest_checked} |")

    print("\n### Cheats\n")
    print("| binding | cheat | claimed T | jobs | z mean (min..max) | caught on first checked job | "
          "checked jobs to suspension: median | worst | suspended within 5 / 20 |")
    print("|---|---|---|---|---|---|---|---|---|")
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
        print(f"| {b} | {kind} | {t} | {len(recs)} | {statistics.fmean(zs):.2f} ({min(zs):.2f}..{max(zs):.2f}) | "
              f"{100 * sum(f for f, _ in ev) / len(ev):.0f} % | {med if med != math.inf else f'>{args.cap}'} | "
              f"{worst} | {100 * sum(n <= 5 for n in done) / len(runs):.0f} % / "
              f"{100 * sum(n <= 20 for n in done) / len(runs):.0f} % |")

    print("\n### Cost\n")
    for b in args.bindings:
        gen = [r for r in pool + args.real if r["binding"] == b and r.get("gen_tokens")]
        sc = [r for r in pool + args.real if r["binding"] == b and "score_cpu" in r]
        if not gen or not sc:
            continue
        g = sum(r["gen_cpu"] for r in gen) / max(1, sum(r["gen_tokens"] for r in gen))
        s = sum(r["score_cpu"] for r in sc) / max(1, sum(r["tokens"] for r in sc))
        rate = policy.sample_bps / 10_000
        print(f"- {b}: worker {1000 * g:.1f} ms CPU per generated token; verifier {1000 * s:.1f} ms CPU per checked "
              f"token ({s / g:.2f}x); at the {100 * rate:.0f} % sample rate verification costs "
              f"{100 * rate * s / g:.1f} % of the serving CPU (probation jobs aside)")


def load_lines(files: list[Path]) -> list[dict]:
    """Per-position job records (bench_verify_honest.py / bench_verify_stuck.py) as pool records:
    the statistic recomputed from the stored scores and ids, exactly as the verifier computes it."""
    out = []
    for f in files:
        for line in f.read_text().splitlines():
            r = json.loads(line)
            scores = [TokenScore(*p) for p in r["pos"]]
            stat = job_statistic(scores, r["temperature"], r["ids"])
            out.append({**{k: v for k, v in r.items() if k not in ("pos", "ids")}, "tokens": stat.tokens, "z": stat.z,
                        "agreement": stat.agreement, "tail": stat.tail, "repeat": stat.repeat,
                        "gen_tokens": len(r["ids"]) if r.get("gen_cpu") else 0})
    return out


def analyse_real_honest(recs: list[dict], policy: VerificationPolicy, args) -> None:
    """Bulk real honest jobs: every job judged with the published policy, one worker's CUSUM run
    over all of a configuration's jobs in the order they were made (real, no resampling), and
    ``--trials`` workers of ``--honest-checked`` checked jobs drawn with replacement from them
    (resampled: labelled so)."""
    rng = random.Random(12)
    print("\n### Honest workers: real jobs in bulk\n")
    print("| binding | T | top_p | worker threads / n_batch | real checked jobs | z or agreement: mean (sd) | "
          "failed (z / tail / repeat) | per-job false fail: observed (95 % upper bound) | "
          "one worker over all of them: max CUSUM level, suspended | resampled: suspended workers |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        key = (r["binding"], r["temperature"], r["top_p"], r.get("worker_threads", 1), r.get("n_batch", 512))
        groups.setdefault(key, []).append(r)
    for (b, t, p, th, nb), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r.get("k", 0))
        cal = policy.calibration_for(b)
        ev, fails, causes, top, judged = WorkerEvidence(), 0, [0, 0, 0], 0.0, []
        for r in rs:
            stat = stat_of(r)
            verdict, u = judge_job(stat, cal, policy.job_threshold, tail_alpha=policy.tail_alpha,
                                   repeat_alpha=policy.repeat_alpha)
            if verdict == "failed":
                fails += 1
                causes[0] += stat.z is not None and abs(standardised(stat, cal)) > policy.job_threshold
                causes[1] += stat.tail is not None and stat.tail < policy.tail_alpha
                causes[2] += stat.repeat is not None and stat.repeat < policy.repeat_alpha
            ev = ev.update(u, failed=verdict == "failed", drift=policy.drift)
            top = max(top, ev.level)
            judged.append((verdict == "failed", u))
        boot = sum(checks_until_suspended(lambda j=judged: rng.choice(j), policy, args.honest_checked) is not None
                   for _ in range(args.trials))
        raw = [r["agreement"] if r["agreement"] is not None else r["z"] for r in rs]
        n = len(rs)
        upper = 3.0 / n if fails == 0 else (fails + 2 * math.sqrt(fails) + 2) / n  # rule of three / rough Poisson
        print(f"| {b} | {t} | {p} | {th} / {nb} | {n} | {statistics.fmean(raw):.3f} "
              f"({statistics.stdev(raw) if n > 1 else 0:.3f}) | {fails} ({causes[0]} / {causes[1]} / {causes[2]}) | "
              f"{fails / n:.2%} ({upper:.2%}) | {top:.2f}, {'yes' if ev.crossed(policy.worker_threshold) else 'no'} | "
              f"{boot}/{args.trials} x {args.honest_checked} |")


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
    ap.add_argument("--seeds", choices=("spread", "consecutive"), default="spread",
                    help="per-job seeds: hashed (default), or base + k as in the reports before 2026-12-01 evening")
    ap.add_argument("--analyse-only", action="store_true", help="only analyse the jobs in --pool")
    ap.add_argument("--lines", default="", help="JSON-lines files of per-position jobs (bench_verify_honest.py, "
                    "bench_verify_stuck.py), comma-separated: honest ones are reported as real bulk jobs, stuck "
                    "ones join the cheats")
    args = ap.parse_args()
    args.bindings = [b for b in args.bindings.split(",") if b]
    args.kinds = {k for k in args.kinds.split(",") if k}
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
