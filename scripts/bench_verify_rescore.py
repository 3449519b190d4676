"""Rescoring job lines with the current scorer (``bench_verify_honest.py --rescore IN --out OUT``).

Generation is the expensive part and does not depend on the verification method; scoring does. So
bulk honest jobs are generated once (``--no-score``: ids only) and scored here, each job once, by
the verifier's ``LlamaScorer`` (1 thread) as it is now: the prompt rebuilt exactly as generation
built it (``PROMPTS[k % len(PROMPTS)]`` in the binding's chat template), the line written again
with new ``pos`` rows (``bench_verify_lines.pos_row``: v3 adds the temperature likelihood ratios),
``score_cpu`` and the scoring ``method``. Resumes: jobs already in OUT (by binding, configuration
and k) are skipped. With ``follow`` it keeps reading the lines a running generator appends, until
``until`` (Unix time).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from basis.engines.llama_scoring import LlamaScorer
from basis.engines.scoring import ScoreRequest
from basis.models.binding import ModelBinding
from basis.verification.stats import METHOD
from bench_verify_collect import PROMPTS
from bench_verify_lines import pos_row

POLL_S = 5.0  # how often a follower looks for new lines


def job_key(r: dict) -> tuple:
    """A job's identity in a bulk file: binding, configuration and its index k."""
    return (r["binding"], r["temperature"], r["top_p"], r.get("worker_threads", 1), r.get("n_batch", 512), r["k"])


def complete_lines(path: Path, offset: int) -> tuple[list[str], int]:
    """The whole lines of ``path`` from byte ``offset`` on, and the offset after the last of them
    (a line the generator is still writing, without its newline yet, waits for the next read)."""
    if not path.exists():
        return [], offset
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    return [ln for ln in data[:end].decode().splitlines() if ln.strip()], offset + end


def job_lines(path: Path, follow: bool, until: float) -> Iterator[dict]:
    """Every job line of ``path``; following, also those appended later, until ``until``."""
    offset = 0
    while True:
        lines, offset = complete_lines(path, offset)
        for line in lines:
            yield json.loads(line)
        if not follow or (until and time.time() > until):
            return
        if not lines:
            time.sleep(POLL_S)


class Rescorer:
    """One LlamaScorer (1 thread) per binding met in the input."""

    def __init__(self) -> None:
        self.bindings: dict[str, ModelBinding] = {}
        self.scorers: dict[str, LlamaScorer] = {}

    def _scorer(self, name: str) -> tuple[ModelBinding, LlamaScorer]:
        if name not in self.scorers:
            self.bindings[name] = ModelBinding(model_id=name, gguf=name)
            self.scorers[name] = LlamaScorer(self.bindings[name], n_threads=1)
        return self.bindings[name], self.scorers[name]

    async def rescore(self, r: dict) -> dict:
        binding, scorer = self._scorer(r["binding"])
        prompt = binding.apply_chat_template([{"role": "user", "content": PROMPTS[r["k"] % len(PROMPTS)]}])
        t0 = time.process_time()
        scores = await scorer.score(ScoreRequest(prompt_ids=prompt, output_ids=r["ids"], temperature=r["temperature"],
                                                 top_p=r["top_p"]))
        cpu = time.process_time() - t0
        return {**r, "score_cpu": round(cpu, 4), "method": METHOD, "pos": [pos_row(s) for s in scores]}


async def rescore_file(src: Path, out: Path, follow: bool = False, until: float = 0.0) -> int:
    """Scores every job of ``src`` not yet in ``out`` (appending to it); returns how many it scored."""
    done = set()
    if out.exists():
        lines, whole = complete_lines(out, 0)
        with out.open("r+b") as fh:  # a line cut short by a kill mid-write: dropped, its job scored again
            fh.truncate(whole)
        done = {job_key(json.loads(line)) for line in lines}
    rescorer, n, t0 = Rescorer(), 0, time.time()
    with out.open("a") as fh:
        for r in job_lines(src, follow, until):
            if until and time.time() > until:
                print("deadline reached", file=sys.stderr)
                break
            key = job_key(r)
            if key in done or not r.get("ids"):
                continue
            fh.write(json.dumps(await rescorer.rescore(r)) + "\n")
            fh.flush()
            done.add(key)
            n += 1
            if n % 50 == 0:
                print(f"{src.name}: {n} jobs rescored in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    print(f"{src.name}: {n} jobs rescored in {time.time() - t0:.0f}s, {len(done)} in {out}", file=sys.stderr)
    return n


def main_rescore(src: str, out: str, follow: bool, until: float) -> None:
    asyncio.run(rescore_file(Path(src), Path(out), follow, until))
