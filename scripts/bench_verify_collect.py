"""The collect phase of the verification benchmark (``bench_verify.py``): real engines per claimed
binding, an honest worker or a cheat generating each job and the verifier's scorer re-scoring it.

The prompts and the per-job seed live here too: ``bench_verify_honest.py`` and
``bench_verify_stuck.py`` build their jobs from the same ones.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import tempfile
import time
import zlib
from pathlib import Path

from basis.engines.base import GenerateRequest
from basis.engines.llama_cpp import LlamaCppEngine
from basis.engines.llama_scoring import LlamaScorer
from basis.engines.scoring import LOGPROB_FLOOR, ScoreRequest
from basis.models.binding import ModelBinding
from basis.verification.stats import job_statistic

PROMPTS = [
    "Tell me about the sea.", "Write a short story about a lighthouse keeper.", "Explain how a bicycle works.",
    "What should I cook tonight?", "Describe your favourite city.", "Give me three tips for learning to code.",
    "Why is the sky blue?", "Write a poem about autumn.", "How do trains stay on the rails?",
    "Summarise the history of paper.", "What is a good name for a cat?", "Explain photosynthesis to a child.",
    "Plan a weekend trip to the mountains.", "What makes a good friend?", "Describe a busy market.",
    "How does a refrigerator keep food cold?",
]
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


def retokenised(binding: ModelBinding, other: ModelBinding, other_ids: list[int], tokens: int) -> list[int]:
    """The other_model cheat's output: the other model's ids as text, tokenised by the claimed
    binding, cut at ``tokens``."""
    return binding.tokenize(other.detokenize(other_ids).decode("utf-8", "replace"))[:tokens]


def job_seed(*key: object) -> int:
    """A well-spread seed per job. Not ``base + k``: llama.cpp's sampler streams for consecutive
    seeds are correlated (measured: SmolLM2 at T 1.0, seeds 1000..1007 over 8 different prompts
    gave z -0.51 on average, 7 of 8 within -0.58..-1.04; seeds 100000..100007 +0.47), so a cell of
    consecutive seeds holds far fewer independent jobs than it counts."""
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:4], "big") & 0x7FFFFFFF


class Lab:
    """Engines and the scorer for one claimed binding."""

    def __init__(self, gguf: str, tokens: int, tmp: str, worker_threads: int, consecutive_seeds: bool = False,
                 q2k: bool = True) -> None:
        self.name = gguf
        self.consecutive_seeds = consecutive_seeds
        self.tokens = tokens
        self.binding = ModelBinding(model_id=gguf, gguf=gguf)
        self.other = ModelBinding(model_id=OTHER[gguf], gguf=OTHER[gguf])
        self.engines = {k: LlamaCppEngine(b, n_ctx=512, n_threads=t) for k, b, t in (
            ("honest", self.binding, 1), ("threads", self.binding, worker_threads), ("other", self.other, 1))}
        if q2k:  # quantizing costs CPU: only when a q2k cell is to run
            self.q2k = ModelBinding(model_id=gguf, gguf=quantize_q2k(self.binding.gguf_path, tmp))
            self.engines["q2k"] = LlamaCppEngine(self.q2k, n_ctx=512, n_threads=1)
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
        lrs = [s.temperature_lr for s in scores]
        return {"tokens": len(ids), "z": stat.z, "agreement": stat.agreement, "tail": stat.tail,
                "repeat": stat.repeat, "score_cpu": cpu, "temperature_p": stat.temperature,
                "temperature_ratio": stat.temperature_ratio,
                # per position, per ratio (method v3): the p-value can be recomputed from the pool
                "temperature_lr": None if None in lrs else [[round(x, 6) for x in lr] for lr in lrs],
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
            ids = retokenised(self.binding, ob, oids, self.tokens)
        else:
            raise ValueError(kind)
        if len(ids) < 4:
            return None  # the model ended at once: nothing to judge
        rec = {"binding": self.name, "kind": kind, "temperature": temperature, "top_p": top_p,
               "gen_cpu": gen_cpu, "gen_tokens": gen_tokens, "ids": ids}  # ids: the job can be rescored
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
                    and (not args.kinds or cell[0] in args.kinds)
                    and (not args.temperatures or cell[1] in args.temperatures)]
            if not todo:
                continue
            lab = Lab(gguf, args.tokens, tmp, args.worker_threads, args.seeds == "consecutive",
                      q2k=any(cell[0] == "q2k" for cell in todo))
            for kind, t, p, n in todo:
                t0 = time.time()
                for k in range(n):
                    rec = await lab.job(kind, t, p, k)
                    if rec is not None:
                        pool.append(rec)
                if args.pool:
                    Path(args.pool).write_text(json.dumps(pool))
                print(f"  {gguf} {kind} T={t} top_p={p}: {n} jobs in {time.time() - t0:.0f}s", file=sys.stderr)
