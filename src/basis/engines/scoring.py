"""Teacher-forced scoring: the reference model's view of a worker's output (DESIGN §1.6).

A scorer runs one prefill over ``prompt_ids + output_ids`` and reports, for each output
position i, statistics of the *claimed sampling distribution* q_i (the reference logits divided
by the job's temperature, top_p applied, renormalised) and of the worker's token t_i under it.
Engines implement it next to generation: llama.cpp on the CPU, sglang on GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

# log q_i(t_i) of a token outside the claimed nucleus is -inf; the statistic needs a floor.
LOGPROB_FLOOR = -30.0


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


@runtime_checkable
class Scorer(Protocol):
    async def score(self, request: ScoreRequest) -> list[TokenScore]:
        """One TokenScore per output id, in order (raises ScoringError)."""
        ...

    async def aclose(self) -> None: ...
