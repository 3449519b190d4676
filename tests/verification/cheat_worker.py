"""A cheating contributor for the end-to-end test, written from the public worker protocol: it
answers every job with uniformly random ordinary tokens whose text matches their ids (so the
gateway's own checks all pass), the cheat issue #11 found paid in full."""

from __future__ import annotations

import argparse
import asyncio
import random

from basis.engines.base import GenerateRequest, TokenStep
from basis.engines.instant import InstantEngine
from basis.models import load_bindings
from basis.worker import Worker, load_key, make_offers


def ordinary_ids(binding, limit: int = 20000) -> list[int]:
    """Ids that render alone to printable ASCII: any of them is an acceptable frame."""
    eos = set(binding.eos_token_ids)
    out = []
    for i in range(min(limit, binding.n_vocab)):
        if i in eos:
            continue
        piece = binding.token_pieces([i])[0]
        if piece and piece.isascii() and piece.decode().strip() and piece.decode().isprintable():
            out.append(i)
    return out


class RandomIdsEngine:
    def __init__(self, binding, seed: int = 7, honest_first: int = 0) -> None:
        self.binding = binding
        self.honest = InstantEngine(binding)  # what the honest instant workers send
        self.honest_first = honest_first
        self.jobs = 0
        self.models = (binding.model_id,)
        self.pool = ordinary_ids(binding)
        self.rng = random.Random(seed)

    async def generate(self, request: GenerateRequest):
        self.jobs += 1
        if self.jobs <= self.honest_first:  # earn a little honestly first
            async for step in self.honest.generate(request):
                yield step
            return
        n = max(0, int(request.max_tokens))
        for _ in range(n):
            i = self.rng.choice(self.pool)
            yield TokenStep(ids=[i], text=self.binding.token_pieces([i])[0].decode())
            await asyncio.sleep(0.001)
        yield TokenStep(ids=[], text="", finish_reason="length", prompt_tokens=len(request.prompt_ids),
                        completion_tokens=n)

    async def aclose(self) -> None:
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway")
    ap.add_argument("--key-file")
    ap.add_argument("--model", default="basis-default")
    ap.add_argument("--capacity", type=int, default=4)
    ap.add_argument("--honest-first", type=int, default=0)
    a = ap.parse_args()
    served = {a.model: load_bindings()[a.model]}
    engine = RandomIdsEngine(served[a.model], honest_first=a.honest_first)
    worker = Worker(gateway_url=a.gateway, private_key=load_key(a.key_file), engine=engine,
                    offers=make_offers(served, [a.model], a.capacity))
    asyncio.run(worker.run())


if __name__ == "__main__":
    main()
