"""Log-probabilities of a job's output tokens: the serving side's report, checked for shape, then
shown as OpenAI shows them (chat: ``choices[].logprobs.content``; legacy completions:
``choices[].logprobs`` with ``tokens``/``token_logprobs``/``top_logprobs``/``text_offset``).

The values are the serving side's report (protocol v3, ``TokenLogprob``), under the model's own
distribution (raw logits, before temperature/top_p). The gateway checks their shape only; their
numbers are compared with the reference on checked jobs (basis.verification.reported_logprobs).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from basis.models import ModelBinding

# float32 rounding in a log-softmax can put the most likely token's log-probability a hair above 0
LOGPROB_SLACK = 1e-4


class ReportedLogprob(Protocol):
    logprob: float
    top: Sequence[tuple[int, float]]


class BadLogprobs(ValueError):
    """The serving side's logprobs do not fit the job (missing, wrong count, not log-probabilities)."""


@dataclass(frozen=True)
class TokenLogprobs:
    """One output token as relayed: its id, reported logprob and top alternatives (id, logprob)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def _valid(lp: Any) -> bool:
    return (isinstance(lp, int | float) and not isinstance(lp, bool) and math.isfinite(lp)
            and lp <= LOGPROB_SLACK)


def checked(binding: ModelBinding, ids: Sequence[int], reported: Sequence[ReportedLogprob] | None,
            top_logprobs: int) -> list[TokenLogprobs]:
    """The report for ``ids`` as TokenLogprobs, or BadLogprobs: one entry per id, each a finite
    log-probability, with exactly ``top_logprobs`` alternatives (fewer only when the vocabulary
    is smaller), distinct ids inside the vocabulary, most likely first."""
    if reported is None:
        raise BadLogprobs("the worker sent tokens without the logprobs the job asked for")
    if len(reported) != len(ids):
        raise BadLogprobs(f"the worker sent {len(reported)} logprobs for {len(ids)} tokens")
    n_vocab = binding.n_vocab
    want = min(top_logprobs, n_vocab)
    out = []
    for token_id, r in zip(ids, reported, strict=True):
        if not _valid(r.logprob):
            raise BadLogprobs(f"the worker reported {r.logprob!r} as a log-probability")
        top = tuple((int(i), float(lp)) for i, lp in r.top)
        if len(top) != want:
            raise BadLogprobs(f"the worker sent {len(top)} top logprobs per token, not {want}")
        if (any(not 0 <= i < n_vocab or not _valid(lp) for i, lp in top) or len({i for i, _ in top}) != len(top)
                or any(a[1] < b[1] for a, b in itertools.pairwise(top))):
            raise BadLogprobs("the worker's top logprobs are not distinct vocabulary ids, most likely first")
        out.append(TokenLogprobs(int(token_id), min(float(r.logprob), 0.0),
                                 tuple((i, min(lp, 0.0)) for i, lp in top)))
    return out


def token_bytes(binding: ModelBinding, token_id: int) -> bytes:
    """A token's bytes as shown to the client; a control token (end of turn among the alternatives)
    shows its name, since its text piece is empty."""
    vocab = binding.vocab
    if token_id in vocab.eog_ids or token_id in vocab.control_ids:
        return vocab.special_pieces[token_id]
    return vocab.pieces[token_id]


def _token(binding: ModelBinding, token_id: int, logprob: float) -> dict[str, Any]:
    raw = token_bytes(binding, token_id)
    return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}


def chat_content(binding: ModelBinding, tokens: Sequence[TokenLogprobs]) -> list[dict[str, Any]]:
    """OpenAI chat's ``logprobs.content``: {token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}."""
    return [{**_token(binding, t.token_id, t.logprob),
             "top_logprobs": [_token(binding, i, lp) for i, lp in t.top]} for t in tokens]


def completion_logprobs(binding: ModelBinding, tokens: Sequence[TokenLogprobs], text_offset: int
                        ) -> tuple[dict[str, Any], int]:
    """OpenAI legacy completions' ``logprobs`` for ``tokens`` whose text starts at character
    ``text_offset`` of the choice's text; returns it with the offset after them. ``top_logprobs``
    is one {token text: logprob} per token (alternatives with equal text keep the likelier)."""
    texts = [token_bytes(binding, t.token_id).decode("utf-8", "replace") for t in tokens]
    offsets = []
    for text in texts:
        offsets.append(text_offset)
        text_offset += len(text)
    top = []
    for t in tokens:
        alternatives: dict[str, float] = {}
        for i, lp in t.top:
            alternatives.setdefault(token_bytes(binding, i).decode("utf-8", "replace"), lp)
        top.append(alternatives)
    return {"tokens": texts, "token_logprobs": [t.logprob for t in tokens], "top_logprobs": top,
            "text_offset": offsets}, text_offset
