"""Deliberately misbehaving workers: test doubles for failures a real engine cannot be made to show.

Modes: lie-usage (honest tokens, inflated usage report), bad-text (text disagrees with the ids),
stall-before (accepts the job, never sends a token), stall-after (a few tokens, then hangs),
slow (honest, 20 ms a token: keeps its slots busy), break-schema (advertises constrained decoding,
ignores the schema and ends its canned text as if the output were finished), fake-logprobs (a real
llama.cpp engine's honest tokens, speaking protocol v3 with a receipt store, but reporting made-up
logprobs of the right shape: every token "almost certain").
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from pathlib import Path

from basis.engines.base import GenerateRequest, TokenLogprob, TokenStep
from basis.engines.instant import InstantEngine
from basis.models import load_bindings
from basis.worker import Worker, client, load_key, make_offers


class RogueEngine:
    def __init__(self, mode: str, binding) -> None:
        self.mode = mode
        self.inner = InstantEngine(binding)
        self.models = self.inner.models
        self.supports_json_schema = mode == "break-schema"

    async def generate(self, request: GenerateRequest):
        if self.mode == "break-schema":
            async for step in self.inner.generate(dataclasses.replace(request, json_schema=None)):
                yield dataclasses.replace(step, finish_reason="stop") if step.final else step
            return
        if self.mode == "stall-before":
            await asyncio.Event().wait()
        n = 0
        async for step in self.inner.generate(request):
            n += 1
            if self.mode == "bad-text" and n == 3 and step.ids:
                step = TokenStep(ids=step.ids, text=step.text + "!")
            yield step
            # paced like a real engine, so each step is its own frame
            await asyncio.sleep(0.02 if self.mode == "slow" else 0.002)
            if self.mode == "stall-after" and n == 5:
                await asyncio.Event().wait()

    async def aclose(self) -> None:
        return None


class FakeLogprobsEngine:
    """Honest tokens, fabricated logprobs: each chosen token at -0.01, alternatives below it."""

    supports_logprobs = True

    def __init__(self, binding) -> None:
        from basis.engines.llama_cpp import LlamaCppEngine

        self.inner = LlamaCppEngine(binding, n_ctx=1024, n_threads=1)
        self.models = self.inner.models

    async def generate(self, request: GenerateRequest):
        async for step in self.inner.generate(request):
            if step.logprobs is not None:
                fake = [TokenLogprob(-0.01, tuple((tok if k == 0 else (tok + k) % 1000, -0.01 - 5 * k)
                                                  for k in range(request.top_logprobs)))
                        for tok in step.ids]
                step = dataclasses.replace(step, logprobs=fake)
            yield step

    async def aclose(self) -> None:
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway")
    ap.add_argument("--key-file")
    ap.add_argument("--mode")
    ap.add_argument("--model", default="basis-default")
    ap.add_argument("--capacity", type=int, default=4)
    a = ap.parse_args()
    if a.mode == "lie-usage":
        real = client.Usage
        client.Usage = lambda prompt_tokens, completion_tokens: real(  # type: ignore[assignment]
            prompt_tokens=prompt_tokens * 3, completion_tokens=completion_tokens + 1000)
    bindings = load_bindings()
    served = {a.model: bindings[a.model]}
    engine: RogueEngine | FakeLogprobsEngine = RogueEngine(a.mode, served[a.model])
    store = None
    if a.mode == "fake-logprobs":  # protocol v3 needs a receipt store (v2) and logprobs
        from basis.cli.worker import _open_store

        engine = FakeLogprobsEngine(served[a.model])
        store = _open_store(a.gateway, load_key(a.key_file), Path(a.key_file).with_suffix(".home"))
    worker = Worker(gateway_url=a.gateway, private_key=load_key(a.key_file), engine=engine,
                    offers=make_offers(served, [a.model], a.capacity), store=store)
    asyncio.run(worker.run())


if __name__ == "__main__":
    main()
