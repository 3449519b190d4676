"""Job deadlines: how long a contributor may take before its first token, between tokens, and in all.

Without them a worker that stays connected (heartbeats) but never finishes holds its job, and the
client's reservation, forever; every client timeout plus retry would stack another reservation.
The limits are sized per job from the prompt and ``max_tokens``, published (``/v1/models``,
``/v1/network``, docs/worker-protocol.md), and enforced by the job runner: a missed deadline
ends the job ``failed`` (accepted tokens charged, no reward) and the worker is sent ``cancel``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    value = float(raw)
    if not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds or tokens per second, not {raw!r}")
    return value


@dataclass(frozen=True)
class JobDeadlines:
    """The limits of one job, in seconds from its dispatch to a worker."""

    first_token_s: float  # the first token id must arrive within this
    stall_s: float  # then each next token id within this of the previous one
    total_s: float  # and the whole job (through ``done``) within this

    def describe(self) -> dict[str, float]:
        return {"first_token_s": round(self.first_token_s, 3), "stall_s": round(self.stall_s, 3),
                "total_s": round(self.total_s, 3)}


@dataclass(frozen=True)
class DeadlinePolicy:
    """Generous for a slow CPU worker; tight enough that a stalled one frees its job in a minute.

    first token: ``first_token_s + prompt_tokens / prompt_tokens_per_s`` (queueing and prefill);
    between token frames: ``stall_s``;
    whole job: the first-token limit ``+ max_tokens / output_tokens_per_s``.
    """

    first_token_s: float = 60.0
    prompt_tokens_per_s: float = 100.0
    stall_s: float = 30.0
    output_tokens_per_s: float = 2.0

    @classmethod
    def from_env(cls) -> DeadlinePolicy:
        d = cls()
        return cls(first_token_s=_env_float("BASIS_JOB_FIRST_TOKEN_S", d.first_token_s),
                   prompt_tokens_per_s=_env_float("BASIS_JOB_PROMPT_TOKENS_PER_S", d.prompt_tokens_per_s),
                   stall_s=_env_float("BASIS_JOB_STALL_S", d.stall_s),
                   output_tokens_per_s=_env_float("BASIS_JOB_OUTPUT_TOKENS_PER_S", d.output_tokens_per_s))

    def for_job(self, prompt_tokens: int, max_tokens: int) -> JobDeadlines:
        first = self.first_token_s + prompt_tokens / self.prompt_tokens_per_s
        return JobDeadlines(first_token_s=first, stall_s=self.stall_s,
                            total_s=first + max_tokens / self.output_tokens_per_s)

    def describe(self) -> dict[str, float]:
        """The policy as published (/v1/network)."""
        return {"first_token_s": self.first_token_s, "prompt_tokens_per_s": self.prompt_tokens_per_s,
                "stall_s": self.stall_s, "output_tokens_per_s": self.output_tokens_per_s}

    def describe_model(self, context_window: int, max_output_tokens: int) -> dict[str, Any]:
        """A model's entry at /v1/models: the policy, and the limits of its largest job."""
        largest = self.for_job(max(0, context_window - max_output_tokens), max_output_tokens)
        return {**self.describe(), "max_first_token_s": round(largest.first_token_s, 3),
                "max_total_s": round(largest.total_s, 3)}


class DeadlineMissed(Exception):
    """The serving worker missed one of its job's deadlines: the job ends ``failed``."""

    def __init__(self, kind: str, limits: JobDeadlines) -> None:
        what = {"first_token": f"no first token within {limits.first_token_s:.1f} s",
                "stall": f"no next token within {limits.stall_s:.1f} s",
                "total": f"the job did not finish within {limits.total_s:.1f} s"}[kind]
        super().__init__(what)
        self.kind = kind  # first_token | stall | total
        self.limits = limits
        self.worker: str | None = None


async def within_deadlines(frames: AsyncIterator[Any], limits: JobDeadlines, *,
                           started: float | None = None) -> AsyncIterator[Any]:
    """``frames`` (a worker's ``Tokens`` ... ``Done``), each awaited no longer than ``limits``
    allow, counted from ``started`` (the loop time the job was sent; default now); raises
    DeadlineMissed. Only frames with token ids are progress, so empty frames (or heartbeats)
    cannot hold a job open."""
    loop = asyncio.get_running_loop()
    started = loop.time() if started is None else started
    end_by = started + limits.total_s
    next_by, kind = started + limits.first_token_s, "first_token"
    while True:
        due, which = (end_by, "total") if end_by <= next_by else (next_by, kind)
        try:
            async with asyncio.timeout_at(due):
                frame = await anext(frames)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise DeadlineMissed(which, limits) from None
        if loop.time() >= end_by:
            # A frame that was already buffered returns without suspending, so the timeout (due at
            # the next loop turn) never fires: on a starved loop a trickling worker would outlive
            # the total deadline. Checked here too, the total limit holds however busy the loop is.
            raise DeadlineMissed("total", limits)
        if getattr(frame, "ids", None):
            next_by, kind = loop.time() + limits.stall_s, "stall"
        yield frame
