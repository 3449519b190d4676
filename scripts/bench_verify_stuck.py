#!/usr/bin/env python
"""A stuck engine repeating one id, per id choice (issue #11): scores to design and check the
job statistic on.

    PYTHONPATH=src .venv/bin/python scripts/bench_verify_stuck.py --out stuck.jsonl \
        [--bindings gemma3-270m,smollm2-135m-instruct] [--temperatures 0.7,1.0,1.3] [--random 4]

Per claimed binding, prompt (bench_verify.PROMPTS), temperature and id choice, the output is one
id repeated ``--tokens`` times, scored by the verifier's ``LlamaScorer`` (1 thread). Id choices:
``first`` (the reference's own most likely first token for the prompt: the entry costs nothing),
``the`` / ``space`` / ``newline`` (common tokens), ``random<k>`` (ordinary ids drawn at random).
One JSON line a job with its ids and per-position scores, the format of bench_verify_honest.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import zlib
from pathlib import Path

from basis.engines.base import GenerateRequest
from basis.engines.llama_cpp import LlamaCppEngine
from basis.engines.llama_scoring import LlamaScorer
from basis.engines.scoring import ScoreRequest
from basis.models.binding import ModelBinding
from bench_verify import PROMPTS
from bench_verify_lines import pos_row

COMMON = {"the": " the", "space": " ", "newline": "\n"}


def common_id(binding: ModelBinding, text: str) -> int:
    ids = binding.tokenize(text)
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {ids} in {binding.model_id}, not one token")
    return ids[0]


async def run(args) -> None:
    out = Path(args.out)
    with out.open("a") as fh:
        for gguf in args.bindings.split(","):
            binding = ModelBinding(model_id=gguf, gguf=gguf)
            scorer = LlamaScorer(binding, n_threads=1)
            engine = LlamaCppEngine(binding, n_ctx=512, n_threads=1)
            ordinary = [i for i in range(binding.n_vocab) if binding.vocab.pieces[i]
                        and i not in binding.eos_token_ids and i not in binding.control_token_ids]
            for k, text in enumerate(PROMPTS):
                prompt = binding.apply_chat_template([{"role": "user", "content": text}])
                first = [i async for s in engine.generate(GenerateRequest(prompt_ids=prompt, max_tokens=1,
                                                                         temperature=0.0)) for i in s.ids]
                rng = random.Random(zlib.crc32(f"{gguf}/{k}".encode()))
                choices = {"first": first[0], **{name: common_id(binding, t) for name, t in COMMON.items()},
                           **{f"random{j}": rng.choice(ordinary) for j in range(args.random)}}
                for t in (float(x) for x in args.temperatures.split(",")):
                    for name, tok in choices.items():
                        ids = [tok] * args.tokens
                        scores = await scorer.score(ScoreRequest(prompt_ids=prompt, output_ids=ids, temperature=t))
                        rec = {"binding": gguf, "kind": "stuck", "choice": name, "temperature": t, "top_p": 1.0,
                               "k": k, "ids": ids,
                               "pos": [pos_row(s) for s in scores]}
                        fh.write(json.dumps(rec) + "\n")
                fh.flush()
                print(f"{gguf} prompt {k} done", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bindings", default="smollm2-135m-instruct,gemma3-270m")
    ap.add_argument("--temperatures", default="0.7,1.0,1.3")
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--random", type=int, default=4)
    ap.add_argument("--out", required=True)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
