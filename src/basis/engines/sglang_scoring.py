"""Reference scoring on an sglang server (``basis.engines.scoring.Scorer``, GPU side).

One non-streaming teacher-forced prefill::

    POST /generate {"input_ids": P + C, "sampling_params": {"max_new_tokens": 0, ...},
                    "return_logprob": true, "logprob_start_len": len(P) - 1,
                    "top_logprobs_num": k, "return_text_in_logprobs": false}

answers ``meta_info.input_token_logprobs`` with len(C) + 1 entries ``[logprob, id, null]``
(entry 0 is ``[null, P[-1], null]``; entry j is log p(C[j-1])) and ``input_top_logprobs`` (entry 0
``null``, entry j the k most likely tokens at C[j-1]'s position). These are a plain log_softmax of
the raw logits: no temperature, top-p or penalties (sglang 0.5.23, ``logprob_result_processor``).
``max_new_tokens: 0`` is a prefill only from sglang 0.5.2 on (the engine's gate asks 0.5.6).

**Approximation.** The claimed distribution q_i (the job's temperature, then top_p) is built from the
top-k alone, renormalised: the raw probability mass outside the top-k is left out. With k = 64
and temperatures up to 1 that mass is usually a few percent at most; it grows with temperature
(a hotter q spreads onto the tail). A worker's token outside the top-k keeps its exact raw
logprob: under top_p < 1 it is outside the nucleus whenever the top-k already covers top_p
(``LOGPROB_FLOOR``); under top_p = 1 it is scored against the top-k plus itself. Its rank is then
reported as k (meaning "k or worse"). Ask for a larger k (``top_k=``) to shrink the left-out mass.

**Temperature test** (``TokenScore.temperature_lr``): here never the approximation above, but a
factor that is never larger than the exact one (the definition over the whole vocabulary,
``basis.engines.scoring.temperature_log_factors``), from the top-k alone. With w_j = p_j^(1/T) (p the
raw probabilities), the factor is w_t^(1/s) / S_s / max(w_t / W_N, F), S_s = sum_{j in N} w_j^(1/s)
and W_N = sum_{j in N} w_j over the nucleus N. So: W_N from below (the top-k part of the smallest
nucleus the top-k allow), S_s from above: the top-k part of the largest possible nucleus, plus, when
that may reach past the top-k, a bound on the rest, whose raw mass is R = 1 - sum(top-k p) and whose
every p is at most the k-th: for an exponent a = 1/(T s) >= 1, sum p^a <= p_k^(a - 1) R; for a < 1,
by Hölder, sum p^a <= M^(1 - a) R^a over the M = n_vocab - k other tokens (``n_vocab`` unknown: that
ratio gets factor 0 at that position). A token that may lie outside the nucleus gets the smallest of
its own and every candidate edge token's bounds; if the nucleus may reach past the top-k it gets 0.

sglang answers any id >= vocab_size - 1 as 0: the returned ids are checked against those sent
(a mismatch is a ScoringError, never a verdict).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import replace

import httpx

from basis.engines.base import EngineError
from basis.engines.scoring import (
    LOGPROB_FLOOR,
    TEMPERATURE_RATIOS,
    ScoreRequest,
    ScoringError,
    TokenScore,
    temperature_log_factors,
)
from basis.engines.sglang_server import MIN_VERSION, MIN_VERSION_TEXT, ServerInfo, auth_headers, fetch_server_info

DEFAULT_TOP_K = 64
# sglang's logprobs are rounded (float32 log_softmax): the raw mass left outside the top-k is taken
# at least this large, so rounding can never shrink the temperature test's bound on it.
_REMAINDER_SLACK = 1e-6


def _logsumexp(xs: Sequence[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _log_add(a: float, b: float | None) -> float | None:
    """log(e^a + e^b); None (unbounded) absorbs."""
    return None if b is None else _logsumexp([a, b])


def temperature_factors_from_top(ranked: Sequence[tuple[float, int]], token_logprob: float, token_id: int,
                                 temperature: float, top_p: float, n_vocab: int | None) -> tuple[float, ...]:
    """The temperature test's log factors at one position, never above the exact ones (module doc).
    ``ranked``: the raw top-k ``(logprob, id)``, most likely first."""
    e = 1.0 / temperature
    lw = [lp * e for lp, _ in ranked]  # log w_j of the top-k
    k = len(ranked)
    idx = next((j for j, (_, i) in enumerate(ranked) if i == token_id), None)
    lw_t = token_logprob * e
    remainder = max(0.0, -math.expm1(_logsumexp([lp for lp, _ in ranked]))) + _REMAINDER_SLACK
    if idx is None:  # the worker's token is known exactly: the rest holds the remainder less it
        remainder = max(_REMAINDER_SLACK, remainder - math.exp(token_logprob))
    others = None if n_vocab is None else n_vocab - k - (idx is None)
    lp_k = ranked[-1][0]

    def rest(a: float) -> float | None:
        """log of an upper bound on sum p^a over the tokens outside the top-k (and not t)."""
        if a >= 1.0:
            return (a - 1.0) * lp_k + math.log(remainder)
        if others is None:
            return None
        return (1.0 - a) * math.log(max(1, others)) + a * math.log(remainder)

    own_w = [lw_t] if idx is None else []  # t outside the top-k: its own weight, known exactly
    cum: list[float] = []  # log C_m = log sum of the top m weights, m = 1..k
    for x in lw:
        cum.append(x if not cum else max(cum[-1], x) + math.log1p(math.exp(-abs(cum[-1] - x))))
    log_w_lo = _logsumexp([cum[-1], *own_w])  # W, the whole vocabulary's weight, is at least this
    unbounded = tuple(-math.inf for _ in TEMPERATURE_RATIOS)
    if top_p >= 1.0:  # the nucleus is the whole vocabulary; t is in it
        norms = []
        for s in TEMPERATURE_RATIOS:
            top_s = _logsumexp([x / s for x in lw + own_w])
            bound = _log_add(top_s, rest(e / s))
            norms.append(None if bound is None else bound - log_w_lo / s)
        return temperature_log_factors(lw_t - log_w_lo, norms)
    log_p = math.log(top_p)
    log_w_hi = _log_add(log_w_lo, rest(e))  # ... and at most this
    m_lo = next((m for m in range(k) if cum[m] - log_w_lo >= log_p), None)  # 0-based: nucleus = top m + 1
    m_hi = None if log_w_hi is None else next((m for m in range(k) if cum[m] - log_w_hi >= log_p), None)
    inside = idx is not None and m_lo is not None and idx <= m_lo
    if m_hi is None and not inside:
        return unbounded  # the nucleus may reach past the top-k: its edge is unknown
    log_wn_lo = cum[m_lo] if m_lo is not None else cum[-1]
    norms = []
    for s in TEMPERATURE_RATIOS:
        if m_hi is not None:
            bound = _logsumexp([x / s for x in lw[: m_hi + 1]])
        else:
            bound = _log_add(_logsumexp([x / s for x in lw + own_w]), rest(e / s))
        norms.append(None if bound is None else bound - log_wn_lo / s)
    own = lw_t - log_wn_lo
    if inside:
        return temperature_log_factors(own, norms)
    assert m_lo is not None and m_hi is not None  # m_hi found implies m_lo found (W_hi >= W_lo)
    candidates = [temperature_log_factors(own, norms, lw[j] - log_wn_lo) for j in range(m_lo, m_hi + 1)]
    return tuple(min(c[r] for c in candidates) for r in range(len(TEMPERATURE_RATIOS)))


def score_position(top: Sequence[tuple[float, int]], token_logprob: float, token_id: int,
                   temperature: float, top_p: float, n_vocab: int | None = None) -> TokenScore:
    """TokenScore of one position from the raw top-k ``(logprob, id)`` and the worker's token's raw
    logprob (``n_vocab``: the model's vocabulary size, for the temperature test's bounds)."""
    if not top:
        raise ScoringError("sglang returned no top logprobs for a position")
    ranked = sorted(top, key=lambda e: -e[0])
    rank = sum(1 for lp, _ in ranked if lp > token_logprob)
    in_top = any(i == token_id for _, i in ranked)
    greedy = temperature <= 0.0
    t = 1.0 if greedy else float(temperature)
    p = 1.0 if greedy else float(top_p)
    scaled = [lp / t for lp, _ in ranked]
    ids = [i for _, i in ranked]
    if not in_top and p >= 1.0:  # a valid tail token: score it against the top-k plus itself
        scaled.append(token_logprob / t)
        ids.append(token_id)
    z = _logsumexp(scaled)
    logq = [s - z for s in scaled]
    # Nucleus: the smallest prefix (by probability) whose mass reaches top_p, as sglang samples.
    if p < 1.0:
        keep, mass = 0, 0.0
        for lq in logq:
            keep += 1
            mass += math.exp(lq)
            if mass >= p:
                break
        kz = _logsumexp(logq[:keep])
        nucleus = {ids[j]: logq[j] - kz for j in range(keep)}
    else:
        nucleus = dict(zip(ids, logq, strict=True))
    probs = [(math.exp(lq), lq) for lq in nucleus.values()]
    expected = sum(q * lq for q, lq in probs)
    variance = max(0.0, sum(q * (lq - expected) ** 2 for q, lq in probs))
    observed = nucleus.get(token_id)
    logprob = LOGPROB_FLOOR if observed is None else max(LOGPROB_FLOOR, observed)
    temp_lr = None if greedy else temperature_factors_from_top(ranked, token_logprob, token_id, t, p, n_vocab)
    return TokenScore(logprob=logprob, expected=expected, variance=variance, rank=rank, temperature_lr=temp_lr)


class SGLangScorer:
    """``Scorer`` over an sglang server's ``/generate`` prefill (one request per job)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, top_k: int = DEFAULT_TOP_K,
                 timeout: float = 120.0, client: httpx.AsyncClient | None = None, n_vocab: int | None = None) -> None:
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.top_k = int(top_k)
        # the model's vocabulary size (ModelBinding.n_vocab): bounds the temperature test's hotter
        # alternatives from the top-k; without it those get no evidence (module doc)
        self.n_vocab = n_vocab
        self.api_key = api_key
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout, headers=auth_headers(api_key))
        self._lock = asyncio.Lock()
        self.server: ServerInfo | None = None

    async def check_server(self, client: httpx.AsyncClient | None = None,
                           timeout: httpx.Timeout | float = 30.0) -> ServerInfo:
        """The same version gate as the engine's (``max_new_tokens: 0`` is a prefill only from 0.5.2,
        and the logprob layout read here is 0.5.6's to 0.5.23's). Raises ScoringError. ``client``:
        another than the scorer's own (a start-up check on another event loop)."""
        async with self._lock:
            if self.server is None:
                try:
                    info = await fetch_server_info(client or self._client, self.base_url, self.api_key, timeout)
                except EngineError as exc:
                    raise ScoringError(str(exc)) from exc
                if info.version_tuple[:3] < MIN_VERSION:
                    raise ScoringError(f"sglang {info.version} cannot score: the minimum is sglang {MIN_VERSION_TEXT}")
                self.server = info
            return self.server

    def payload(self, request: ScoreRequest) -> dict:
        return {
            "input_ids": [*request.prompt_ids, *request.output_ids],
            # Neutral sampling: the prefill's logprobs ignore it, but a preferred-params server must not
            # make the request fail or generate (max_new_tokens 0: prefill only).
            "sampling_params": {"max_new_tokens": 0, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0},
            "stream": False,
            "return_logprob": True,
            "logprob_start_len": len(request.prompt_ids) - 1,
            "top_logprobs_num": self.top_k,
            "return_text_in_logprobs": False,
        }

    async def score(self, request: ScoreRequest) -> list[TokenScore]:
        if not request.output_ids:
            return []
        if not request.prompt_ids:
            raise ScoringError("scoring needs at least one prompt id")
        if self.server is None:
            await self.check_server()
        try:
            resp = await self._client.post(f"{self.base_url}/generate", json=self.payload(request))
        except httpx.HTTPError as exc:
            raise ScoringError(f"sglang scoring request failed: {exc}") from exc
        if resp.status_code != 200:
            raise ScoringError(f"sglang /generate answered {resp.status_code}: {resp.text[:300]}")
        try:
            body = resp.json()
        except ValueError as exc:
            raise ScoringError(f"sglang answered non-JSON: {resp.text[:200]!r}") from exc
        if isinstance(body, list):  # a batch of one
            body = body[0] if len(body) == 1 else {}
        if not isinstance(body, dict) or "error" in body:
            raise ScoringError(f"sglang scoring error: {str(body)[:300]}")
        meta = body.get("meta_info") or {}
        return self._scores(request, meta)

    def _scores(self, request: ScoreRequest, meta: dict) -> list[TokenScore]:
        tokens = meta.get("input_token_logprobs")
        tops = meta.get("input_top_logprobs")
        n = len(request.output_ids)
        if not isinstance(tokens, list) or not isinstance(tops, list):
            raise ScoringError("sglang returned no input_token_logprobs / input_top_logprobs")
        if len(tokens) != n + 1 or len(tops) != n + 1:
            raise ScoringError(f"sglang returned {len(tokens)} input logprobs for {n} output ids (expected {n + 1})")
        sent = [request.prompt_ids[-1], *request.output_ids]
        got = [int(e[1]) for e in tokens]
        if got != sent:
            j = next(j for j in range(n + 1) if got[j] != sent[j])
            raise ScoringError(f"sglang scored id {got[j]} where {sent[j]} was sent (position {j}; "
                               "ids >= vocab_size - 1 come back as 0)")
        out = []
        for j in range(1, n + 1):
            lp = tokens[j][0]
            row = tops[j]
            if lp is None or not row:
                raise ScoringError(f"sglang returned no logprob at output position {j - 1}")
            top = [(float(e[0]), int(e[1])) for e in row]
            score = score_position(top, float(lp), int(request.output_ids[j - 1]), request.temperature,
                                   request.top_p, self.n_vocab)
            # sglang's input logprobs are the raw log_softmax already (module docstring)
            out.append(replace(score, raw_logprob=float(lp)) if request.raw_logprobs else score)
        return out

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()
