"""Teacher-forced scoring: the reference model's view of a worker's output (DESIGN §1.6).

A scorer runs one prefill over ``prompt_ids + output_ids`` and reports, for each output
position i, statistics of the *claimed sampling distribution* q_i (the reference logits divided
by the job's temperature, top_p applied, renormalised) and of the worker's token t_i under it.
Engines implement it next to generation: llama.cpp on the CPU, sglang on GPUs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

# log q_i(t_i) of a token outside the claimed nucleus is -inf; the statistic needs a floor.
LOGPROB_FLOOR = -30.0
# The temperature test (verification.stats.temperature_pvalue): the alternatives "the worker sampled
# from q^(s)", q^(s) proportional to q^(1/s) on q's support (the same nucleus at temperature T * s),
# one per ratio s. s < 1: colder (greedy is s -> 0); s > 1: hotter.
TEMPERATURE_RATIOS: tuple[float, ...] = (0.25, 0.5, 1.5, 2.0)
# The test's per-position factor is q^(s)(t) / max(q(t), TEMPERATURE_PROB_FLOOR): flooring the
# denominator only lowers the factor (the test stays valid), and bounds what one absurd token can add
# (at most TEMPERATURE_PROB_FLOOR ** (1/s - 1) for s > 1: a factor 1,000 at s = 2). Not higher: a
# hotter sampler's evidence is in exactly such tokens (SmolLM2 at T 2.6 claimed 1.3, 12 real jobs: a
# floor of 1e-4 caught none, 1e-6 all, median p 1e-10).
TEMPERATURE_PROB_FLOOR = 1e-6
_LOG_PROB_FLOOR = math.log(TEMPERATURE_PROB_FLOOR)


class ScoringError(RuntimeError):
    """The reference engine could not score the job (not a verdict on the worker)."""


@dataclass(frozen=True)
class ScoreRequest:
    prompt_ids: list[int]
    output_ids: list[int]
    temperature: float  # the job's own; 0 means greedy
    top_p: float = 1.0
    model: str = ""  # advertised model id (selects the binding)
    # Also report each output token's raw log-probability (TokenScore.raw_logprob): what a worker
    # reports as its logprobs, checked by basis.verification.reported_logprobs.
    raw_logprobs: bool = False


@dataclass(frozen=True)
class TokenScore:
    """One output position. Under greedy (temperature 0) ``logprob``/``expected``/``variance``
    are those of the temperature-1 distribution and ``rank`` carries the decision."""

    logprob: float  # log q_i(t_i), floored at LOGPROB_FLOOR
    expected: float  # E_{v~q_i}[log q_i(v)] (minus the entropy)
    variance: float  # Var_{v~q_i}[log q_i(v)]
    rank: int  # rank of t_i in the raw reference logits, 0 = argmax
    # q_i's mass on tokens at most as likely as t_i (0 outside the nucleus): under honest sampling
    # P(tail <= a) <= a at every position, whatever the model, so unlikely tokens (re-tokenisation
    # artefacts, spliced text) are evidence without calibration (verification.stats.tail_pvalue).
    # None: not computed.
    tail: float | None = None
    # log softmax(raw reference logits)[t_i]: temperature 1, no top_p, not floored (the convention
    # of reported logprobs). None unless the request asked for it.
    raw_logprob: float | None = None
    # Per ratio s of TEMPERATURE_RATIOS, in order: the log of the temperature test's factor at this
    # position, log q^(s)(t_i) - log max(q_i(t_i), TEMPERATURE_PROB_FLOOR) (``temperature_log_factors``).
    # Under honest sampling each factor has mean <= 1 given the tokens before it. None: not computed
    # (greedy jobs). An entry of -inf: the scorer could not bound that ratio's factor here, so it
    # counts as 0 (always a valid lower bound; that alternative gets no evidence from the job).
    temperature_lr: tuple[float, ...] | None = None


def temperature_log_factors(logq: float, log_norms: Sequence[float | None], edge: float | None = None
                            ) -> tuple[float, ...]:
    """The temperature test's log factor per ratio at one position.

    ``logq``: log q(t) of the worker's token under the claimed distribution, NOT floored at
    LOGPROB_FLOOR (below F the factor grows with q: raising q to a floor would raise it);
    ``log_norms[k]``: log Z_s = log sum_{j in the nucleus} q_j^(1/s) for
    s = TEMPERATURE_RATIOS[k] (an upper bound is fine: it only lowers the factor; None: not bounded,
    the factor is 0).
    Then log q^(s)(t) = logq / s - log Z_s, and the factor is q^(s)(t) / max(q(t), F).

    ``edge``: the token lies outside the strict nucleus (the NUCLEUS_TOLERANCE band, or floored), so
    q^(s) gives it no mass; ``edge`` is log q of the nucleus' least likely token. The factor is then
    the smaller of its own (computed from ``logq`` as if it were inside) and the edge token's: never
    larger than the factor of a token inside the nucleus (for s < 1 the factor grows with q, for
    s > 1 it shrinks with q down to F), so a cheat gains nothing by leaving the nucleus, and an
    honest worker's drift past the edge cannot add evidence beyond an edge token's.
    """

    def factor(lq: float, log_norm: float, s: float) -> float:
        return lq / s - log_norm - max(lq, _LOG_PROB_FLOOR)

    out: list[float] = []
    for s, log_norm in zip(TEMPERATURE_RATIOS, log_norms, strict=True):
        if log_norm is None:
            out.append(-math.inf)
            continue
        f = factor(logq, log_norm, s)
        if edge is not None:
            f = min(f, factor(edge, log_norm, s))
        out.append(f)
    return tuple(out)


@runtime_checkable
class Scorer(Protocol):
    async def score(self, request: ScoreRequest) -> list[TokenScore]:
        """One TokenScore per output id, in order (raises ScoringError)."""
        ...

    async def aclose(self) -> None: ...
