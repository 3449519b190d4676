"""Reference scoring on the CPU: llama.cpp re-reads a worker's output teacher-forced (DESIGN §1.6).

One prefill over ``prompt_ids + output_ids``; llama.cpp is asked for logits only at the output
positions (the last prompt token up to the second-to-last output token), at most
``outputs_per_decode`` rows at a time, so memory stays at that many vocabulary rows whatever the
job's length (Gemma 3's 262k vocabulary is 1 MB of float32 a row: ``logits_all=True`` over a whole
context would be gigabytes). Each chunk of rows is reduced to ``TokenScore`` statistics before the
next decode (``position_scores``, vectorised numpy).

The claimed sampling distribution follows llama.cpp's own sampler chain as ``LlamaCppEngine``
drives it (top_k off, typical off, top_p, min_p off, then temperature): the nucleus is taken on the
temperature-1 distribution, then the kept logits are divided by the temperature and renormalised.
An engine whose chain applies the temperature first (HF, sglang) is scored with
``top_p_before_temperature=False``.

Scoring runs in a thread (never on the event loop). One reference model per (file, threads) per
process, reused by every scorer; jobs on it take turns.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import math
import os
import threading
from collections.abc import Mapping, Sequence

import numpy as np

from basis.engines.scoring import (
    LOGPROB_FLOOR,
    TEMPERATURE_RATIOS,
    ScoreRequest,
    ScoringError,
    TokenScore,
    temperature_log_factors,
)
from basis.models.binding import ModelBinding

GREEDY_TEMPERATURE = 1e-6  # same rule as basis.verification.stats: at or below, the job is greedy
# A token just outside the reference nucleus (inside the nucleus of top_p + this) is scored by its own
# probability instead of the floor, and its tail is taken over that wider nucleus: prefill and decode
# logits differ slightly, and over a flat base-model distribution that moved honest tokens 0.012-0.013
# of mass past the edge (measured, Gemma 3 270M at T 1.3, top_p 0.9). A token on the edge is
# improbable anyway, so nothing is gained by cheating inside the band.
NUCLEUS_TOLERANCE = 0.05
_CTX_STEP = 1024


class _Reference:
    """One llama.cpp model and context used for scoring only."""

    def __init__(self, path: str, n_threads: int) -> None:
        self.path = path
        self.n_threads = n_threads
        self.lock = threading.Lock()
        self.llm = None
        self.n_ctx = 0

    def ensure(self, n_tokens: int, default_ctx: int):
        """The model with a context of at least ``n_tokens`` (reloaded larger when a job needs it)."""
        if self.llm is not None and self.n_ctx >= n_tokens:
            return self.llm
        try:
            import llama_cpp
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ScoringError("llama-cpp-python is not installed (pip install 'basis[cpu]')") from exc
        want = max(default_ctx, -(-n_tokens // _CTX_STEP) * _CTX_STEP)
        if self.llm is not None:
            train = _train_ctx(self.llm)
            if n_tokens > train:
                raise ScoringError(f"job of {n_tokens} tokens exceeds the model's context ({train})")
            want = min(want, train)
            self.llm.close()
            self.llm = None
        llm = llama_cpp.Llama(model_path=self.path, n_ctx=want, n_batch=512, n_threads=self.n_threads,
                              n_threads_batch=self.n_threads, logits_all=False, verbose=False)
        train = _train_ctx(llm)
        if n_tokens > min(want, train):
            llm.close()
            raise ScoringError(f"job of {n_tokens} tokens exceeds the model's context ({train})")
        self.llm, self.n_ctx = llm, want
        return llm


def _train_ctx(llm) -> int:
    train = int(llm._model.n_ctx_train())
    return train if train > 0 else 1 << 20  # 0: the file does not say


_references: dict[tuple[str, int], _Reference] = {}
_references_lock = threading.Lock()


@atexit.register
def _close_all() -> None:
    for ref in list(_references.values()):
        if ref.lock.acquire(timeout=5) and ref.llm is not None:
            with contextlib.suppress(Exception):
                ref.llm.close()
    _references.clear()


def _reference(path: str, n_threads: int) -> _Reference:
    key = (path, n_threads)
    with _references_lock:
        ref = _references.get(key)
        if ref is None:
            ref = _references[key] = _Reference(path, n_threads)
        return ref


def _softmax_stats(z: np.ndarray) -> tuple[float, float, float]:
    """(log-normaliser, E[log q], Var[log q]) of q = softmax(z); float32 work, float64 sums."""
    m = z.max()
    e = np.exp(z - m)
    total = float(e.sum(dtype=np.float64))
    lse = float(m) + math.log(total)
    logq = z - np.float32(lse)
    q = e / np.float32(total)
    expected = float(np.dot(q, logq))
    dev = logq - np.float32(expected)
    return lse, expected, max(float(np.dot(q, dev * dev)), 0.0)


def _temperature_log_norms(z: np.ndarray, lse: float) -> list[float]:
    """log sum_j q_j^(1/s) per ratio s, q = softmax(z) (lse its log-normaliser): one exp over z a
    ratio, float32 work, float64 sums."""
    m = float(z.max())
    d = z - np.float32(m)
    buf = np.empty_like(d)  # reused: in place, no allocation a ratio (Gemma: 262k entries a row)
    out = []
    for s in TEMPERATURE_RATIOS:
        np.multiply(d, np.float32(1.0 / s), out=buf)
        # exp into float32's subnormal range is ~20x slower; raising those terms to e^-80 (2e-35,
        # normal) only enlarges the normaliser, which only lowers the factor: still valid
        np.maximum(buf, np.float32(-80.0), out=buf)
        np.exp(buf, out=buf)
        out.append(m / s + math.log(float(buf.sum(dtype=np.float64))) - lse / s)
    return out


def _tail(z: np.ndarray, zt: np.float32) -> float:
    """softmax(z)'s mass on the entries with z <= zt."""
    e = np.exp(z - z.max())
    return float(e[z <= zt].sum(dtype=np.float64) / e.sum(dtype=np.float64))


def _nucleus_floor(p: np.ndarray, top_p: float) -> float:
    """The smallest probability kept by top_p over ``p`` (llama.cpp: the shortest prefix of the
    descending order whose cumulative sum reaches top_p, at least one token)."""
    k = min(p.size, 1024)
    while True:
        top = np.partition(p, p.size - k)[p.size - k:] if k < p.size else p
        top = np.sort(top)[::-1]
        cs = np.cumsum(top, dtype=np.float64)
        if cs[-1] >= top_p or k == p.size:
            i = min(int(np.searchsorted(cs, top_p, side="left")), top.size - 1)
            return float(top[i])
        k = min(p.size, k * 8)


def position_scores(logits: np.ndarray, tokens: Sequence[int], temperature: float, top_p: float = 1.0, *,
                    top_p_before_temperature: bool = True, raw: bool = False) -> list[TokenScore]:
    """TokenScores of ``tokens[i]`` under row i of ``logits`` (raw reference logits, shape (n, vocab)).

    Greedy (temperature <= GREEDY_TEMPERATURE): the temperature-1 distribution, top_p ignored
    (the rank decides). Otherwise q = the claimed sampling distribution; log q(t) of a token
    outside the nucleus (beyond NUCLEUS_TOLERANCE) is LOGPROB_FLOOR, and log q is floored there too.
    """
    greedy = temperature <= GREEDY_TEMPERATURE
    temp = 1.0 if greedy else float(temperature)
    nucleus = not greedy and top_p < 1.0
    out: list[TokenScore] = []
    for row, tok in zip(logits, tokens, strict=True):
        lt = float(row[tok])
        rank = int(np.count_nonzero(row > lt))
        z = row if temp == 1.0 else row / np.float32(temp)
        zt = z[tok]
        outside = False
        strict_out = False  # outside the strict nucleus (the tolerance band or beyond): the temperature test
        z_tail = z
        if nucleus:
            base = row if top_p_before_temperature else z
            p = np.exp(base - base.max())
            p /= p.sum(dtype=np.float64)
            keep = p >= _nucleus_floor(p, top_p)
            # the tolerant nucleus: what an honest worker's own (slightly different) logits may keep
            wide = top_p + NUCLEUS_TOLERANCE
            kept_tol = p >= _nucleus_floor(p, wide) if wide < 1.0 else np.ones(p.shape, dtype=bool)
            outside = not kept_tol[tok]
            strict_out = not keep[tok]
            z_tail = z[kept_tol]
            z = z[keep]
        lse, expected, variance = _softmax_stats(z)
        tail = 0.0 if outside else _tail(z_tail, zt)
        logprob = LOGPROB_FLOOR if outside else max(LOGPROB_FLOOR, float(zt) - lse)
        temp_lr = None
        if not greedy:  # the temperature test's factors (basis.engines.scoring.temperature_log_factors)
            edge = float(z.min()) - lse if strict_out else None
            temp_lr = temperature_log_factors(float(zt) - lse, _temperature_log_norms(z, lse), edge)
        raw_lp = None
        if raw:  # the temperature-1 distribution before any nucleus: one more pass over the row
            raw_lp = lt - (lse if z is row else float(row.max()) + math.log(
                float(np.exp(row - row.max()).sum(dtype=np.float64))))
        out.append(TokenScore(logprob=logprob, expected=expected, variance=variance, rank=rank, tail=min(1.0, tail),
                              raw_logprob=raw_lp, temperature_lr=temp_lr))
    return out


class LlamaScorer:
    """``Scorer`` over llama.cpp for one or more model bindings (the reference: the binding's GGUF)."""

    def __init__(self, bindings: ModelBinding | Mapping[str, ModelBinding], *, n_threads: int | None = None,
                 n_ctx: int = 2048, outputs_per_decode: int = 64, top_p_before_temperature: bool = True) -> None:
        if isinstance(bindings, ModelBinding):
            bindings = {bindings.model_id: bindings}
        self._bindings = dict(bindings)
        self.n_threads = int(n_threads or max(1, os.cpu_count() or 1))
        self.n_ctx = int(n_ctx)
        self.outputs_per_decode = max(1, int(outputs_per_decode))
        self.top_p_before_temperature = top_p_before_temperature
        self.tokens_scored = 0

    def binding(self, model: str) -> ModelBinding:
        if model in self._bindings:
            return self._bindings[model]
        if not model and len(self._bindings) == 1:
            return next(iter(self._bindings.values()))
        raise ScoringError(f"model {model!r} has no reference here")

    def warm_up(self) -> None:
        for b in self._bindings.values():
            ref = _reference(b.gguf_path, self.n_threads)
            with ref.lock:
                ref.ensure(1, self.n_ctx)

    def _validate(self, binding: ModelBinding, req: ScoreRequest) -> None:
        t, p = req.temperature, req.top_p
        if not (isinstance(t, int | float) and math.isfinite(t) and t >= 0):
            raise ScoringError(f"temperature must be a finite number >= 0, not {t!r}")
        if not (isinstance(p, int | float) and 0 < p <= 1):
            raise ScoringError(f"top_p must be in (0, 1], not {p!r}")
        if not req.prompt_ids:
            raise ScoringError("empty prompt: nothing predicts the first output token")
        n_vocab = binding.n_vocab
        for name, ids in (("prompt", req.prompt_ids), ("output", req.output_ids)):
            bad = next((i for i in ids if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n_vocab),
                       None)
            if bad is not None:
                raise ScoringError(f"{name} id {bad!r} is outside the vocabulary (0..{n_vocab - 1})")

    async def score(self, request: ScoreRequest) -> list[TokenScore]:
        binding = self.binding(request.model)
        # validation too runs in the thread: the first call may load the binding's vocabulary
        return await asyncio.to_thread(self.score_sync, binding, request)

    def score_sync(self, binding: ModelBinding, req: ScoreRequest) -> list[TokenScore]:
        """The scoring itself (blocking; call from a thread)."""
        self._validate(binding, req)
        prompt, output = list(req.prompt_ids), list(req.output_ids)
        if not output:
            return []
        ids = prompt + output
        ref = _reference(binding.gguf_path, self.n_threads)
        with ref.lock:
            llm = ref.ensure(len(ids), self.n_ctx)
            try:
                scores = self._decode_and_score(llm, prompt, output, req)
            except ScoringError:
                raise
            except Exception as exc:
                raise ScoringError(f"llama.cpp scoring failed: {exc}") from exc
        self.tokens_scored += len(scores)
        return scores

    def _decode_and_score(self, llm, prompt: list[int], output: list[int], req: ScoreRequest) -> list[TokenScore]:
        import llama_cpp

        ctx, batch, n_vocab = llm._ctx, llm._batch, llm.n_vocab()
        ctx.kv_cache_clear()
        ids = prompt + output
        first = len(prompt) - 1  # logits at position j predict ids[j + 1]
        last = len(ids) - 2
        scores: list[TokenScore] = []
        pos = 0
        n_batch = llm.n_batch
        while pos <= last:
            step = n_batch if pos < first else self.outputs_per_decode
            end = min(first if pos < first else last + 1, pos + step)
            chunk = ids[pos:end]
            b = batch.batch
            b.n_tokens = len(chunk)
            for k, tok in enumerate(chunk):
                b.token[k] = tok
                b.pos[k] = pos + k
                b.n_seq_id[k] = 1
                b.seq_id[k][0] = 0
                b.logits[k] = pos + k >= first
            ctx.decode(batch)
            if pos >= first:
                rows = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx.ctx), shape=(len(chunk), n_vocab))
                targets = ids[pos + 1:end + 1]
                scores.extend(position_scores(rows, targets, req.temperature, req.top_p,
                                              top_p_before_temperature=self.top_p_before_temperature,
                                              raw=req.raw_logprobs))
            pos = end
        return scores

    async def aclose(self) -> None:
        # Reference models are shared per process (see _reference); nothing to release per scorer.
        return None
