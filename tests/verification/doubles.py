"""Scorer test doubles (the real reference scorer is llama.cpp, basis.engines.llama_scoring).

``canned``: the honest output is what the InstantEngine emits (its canned text, repeated); a
position holding that id scores exactly its expectation (an honest sample), any other id the
floor. So an honest instant worker's jobs have z = 0 and a random-ids cheat's z is far below.

``slow_canned``: the same, but each check first writes $BASIS_TEST_MARKER and sleeps
$BASIS_TEST_SLEEP seconds (a verifier to kill mid-check).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from basis.engines.instant import InstantEngine
from basis.engines.scoring import LOGPROB_FLOOR, ScoreRequest, ScoringError, TokenScore


class CannedScorer:
    def __init__(self, bindings, sleep: float = 0.0, marker: str | None = None) -> None:
        self.engine = InstantEngine(bindings)
        self.sleep = sleep
        self.marker = marker
        self.calls = 0

    async def score(self, request: ScoreRequest) -> list[TokenScore]:
        self.calls += 1
        if self.marker:
            Path(self.marker).write_text(str(os.getpid()))
        if self.sleep:
            await asyncio.sleep(self.sleep)
        if not request.prompt_ids:
            raise ScoringError("empty prompt")
        _, canned = self.engine._canned(request.model)
        out = []
        for i, token in enumerate(request.output_ids):
            honest = canned[i % len(canned)] == token
            out.append(TokenScore(logprob=-3.0 if honest else LOGPROB_FLOOR, expected=-3.0, variance=1.0,
                                  rank=0 if honest else 5000))
        return out

    async def aclose(self) -> None:
        return None


def canned(bindings):
    scorer = CannedScorer(bindings)
    return lambda model: scorer


def slow_canned(bindings):
    scorer = CannedScorer(bindings, sleep=float(os.environ.get("BASIS_TEST_SLEEP", "30")),
                          marker=os.environ.get("BASIS_TEST_MARKER"))
    return lambda model: scorer


def broken(bindings):
    class Broken:
        async def score(self, request):
            raise ScoringError("reference engine is down")

        async def aclose(self):
            return None

    b = Broken()
    return lambda model: b
