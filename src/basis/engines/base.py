"""The engine interface shared by the worker and the gateway's own (gateway-served) engine.

Contract of ``Engine.generate`` (docs/engines.md):

* every step but the last carries ``ids`` (never an end-of-sequence / end-of-turn id, never a
  requested stop id) and the ``text`` those ids completed, per the UTF-8 rule in
  ``basis.models.utf8`` (an incomplete multi-byte character is held back until it completes);
* the last step has ``ids == []``, ``finish_reason`` ``"stop"`` or ``"length"``, and ``text``
  the decoder's final flush ("" or U+FFFD for an incomplete tail);
* closing the iterator early (``aclose()``, or cancelling the task consuming it) stops the
  generation promptly and frees the engine;
* engine failures raise ``EngineError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length"]


class EngineError(RuntimeError):
    """The engine could not run or finish a generation."""


@dataclass(frozen=True)
class GenerateRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_ids: list[int] | None = None
    model: str = ""
    request_id: str = ""  # used as sglang's rid; any unique string
    # Constrained decoding (structured output, tool calls): the output is JSON valid against this
    # schema. Only engines with ``supports_json_schema = True`` take it; others raise EngineError.
    json_schema: dict | None = None
    # Log-probabilities (engines with ``supports_logprobs = True``): each step then carries one
    # TokenLogprob per id, with ``top_logprobs`` alternatives.
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True)
class TokenLogprob:
    """An output token's log-probability under the model's own distribution (the raw logits at
    its position, log-softmaxed: before temperature, top_p or a grammar act, as OpenAI and vLLM
    report them), and the most likely alternatives as (id, logprob), most likely first."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TokenStep:
    ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[TokenLogprob] | None = None  # one per id when the request asked for them
    finish_reason: FinishReason | None = None
    # Self-reported usage on the final step (audit only).
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def final(self) -> bool:
        return self.finish_reason is not None


def supports_json_schema(engine: object) -> bool:
    return bool(getattr(engine, "supports_json_schema", False))


def supports_logprobs(engine: object) -> bool:
    return bool(getattr(engine, "supports_logprobs", False))


@runtime_checkable
class Engine(Protocol):
    @property
    def models(self) -> Collection[str]:
        """Advertised model ids this engine serves."""
        ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[TokenStep]:
        """Stream the completion of ``request.prompt_ids`` (an async generator)."""
        ...

    async def aclose(self) -> None: ...
