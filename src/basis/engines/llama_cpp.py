"""CPU engine: llama-cpp-python over a GGUF file.

Generation runs in a thread (never on the event loop); the tokens come from the engine itself
(``Llama.generate`` over the prompt ids), each id is turned into bytes with the binding's
per-id table and into text with the incremental UTF-8 rule. One ``Llama`` per model file per
process; jobs on the same file take turns (one context).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import os
import random
import threading
from collections.abc import AsyncIterator, Collection, Mapping

import numpy as np

from basis.engines.base import EngineError, GenerateRequest, TokenLogprob, TokenStep
from basis.models.binding import ModelBinding
from basis.models.utf8 import IncrementalText

DEFAULT_N_CTX = int(os.environ.get("BASIS_LLAMA_N_CTX", "4096"))

_llamas: dict[tuple[str, int, int], tuple[object, threading.Lock]] = {}
_llamas_lock = threading.Lock()


@atexit.register
def _close_all() -> None:
    for llm, lock in list(_llamas.values()):
        if lock.acquire(timeout=5):
            with contextlib.suppress(Exception):
                llm.close()
    _llamas.clear()


def _load_llama(path: str, n_ctx: int, n_threads: int):
    key = (path, n_ctx, n_threads)
    with _llamas_lock:
        hit = _llamas.get(key)
        if hit is None:
            try:
                import llama_cpp
            except ImportError as exc:  # pragma: no cover
                raise EngineError("llama-cpp-python is not installed (pip install 'basis[cpu]')") from exc
            llm = llama_cpp.Llama(
                model_path=path,
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                n_batch=min(512, n_ctx),
                verbose=False,
            )
            hit = (llm, threading.Lock())
            _llamas[key] = hit
        return hit


# A JSON string character as upstream llama.cpp's json-schema-to-grammar defines it. The converter
# bundled with llama-cpp-python 0.3.x has `char ::= [^"\\] | ...`, which lets the model write raw
# control characters (a newline) inside a string: not JSON (found by tests/gateway/test_structured_llama.py).
JSON_CHAR_RULE = r'char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'


@functools.lru_cache(maxsize=64)
def _grammar(schema_text: str):
    """llama.cpp's own JSON-schema-to-GBNF converter (llama_cpp.llama_grammar.json_schema_to_gbnf),
    with its string characters held to JSON's; the gateway admits only the schema keywords it
    enforces (basis.gateway.chat.structured)."""
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        rules = [JSON_CHAR_RULE if line.startswith("char ::= ") else line
                 for line in json_schema_to_gbnf(schema_text).splitlines()]
        return LlamaGrammar.from_string("\n".join(rules), verbose=False)
    except Exception as exc:
        raise EngineError(f"llama.cpp cannot build a grammar for this schema: {exc}") from exc


def token_logprob(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """``token``'s log-softmax under raw ``logits`` (one row), and the ``top`` best alternatives.
    float32 work, float64 normaliser (as the reference scorer computes it)."""
    m = logits.max()
    lse = float(m) + float(np.log(np.exp(logits - m).sum(dtype=np.float64)))
    alternatives: tuple[tuple[int, float], ...] = ()
    if top > 0:
        k = min(top, logits.size)
        best = np.argpartition(logits, logits.size - k)[logits.size - k:]
        best = best[np.argsort(-logits[best], kind="stable")]
        alternatives = tuple((int(i), float(logits[i]) - lse) for i in best)
    return TokenLogprob(logprob=float(logits[token]) - lse, top=alternatives)


def _last_logits(llm, n_vocab: int) -> np.ndarray:
    """The logits llama.cpp sampled the latest token from (its last decoded row; the sampler's
    temperature, top_p and grammar work on a copy, so these are the model's own)."""
    import llama_cpp

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,))


class _Stop:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class LlamaCppEngine:
    supports_json_schema = True
    supports_logprobs = True

    def __init__(
        self,
        bindings: ModelBinding | Mapping[str, ModelBinding],
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
    ) -> None:
        if isinstance(bindings, ModelBinding):
            bindings = {bindings.model_id: bindings}
        self._bindings = dict(bindings)
        self.n_ctx = int(n_ctx or DEFAULT_N_CTX)
        self.n_threads = int(n_threads or max(1, (os.cpu_count() or 2)))
        self.tokens_generated = 0

    @property
    def models(self) -> Collection[str]:
        return tuple(self._bindings)

    def binding(self, model: str) -> ModelBinding:
        if model in self._bindings:
            return self._bindings[model]
        if not model and len(self._bindings) == 1:
            return next(iter(self._bindings.values()))
        raise EngineError(f"model {model!r} is not served by this engine")

    def warm_up(self) -> None:
        """Load the weights of every served model now (otherwise the first job does it)."""
        for b in self._bindings.values():
            _load_llama(b.gguf_path, self.n_ctx, self.n_threads)
            b.vocab.pieces  # noqa: B018 - builds the byte table

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenStep]:
        binding = self.binding(request.model)
        prompt = list(request.prompt_ids)
        if not prompt:
            raise EngineError("empty prompt")
        if len(prompt) >= self.n_ctx:
            raise EngineError(f"prompt of {len(prompt)} tokens does not fit the context ({self.n_ctx})")
        n_vocab = binding.n_vocab
        if any(i < 0 or i >= n_vocab for i in prompt):
            raise EngineError("prompt contains an id outside the vocabulary")
        max_tokens = min(int(request.max_tokens), self.n_ctx - len(prompt))
        # A control id (padding, turn or image marker) is never output (DESIGN 1.3: relaying one
        # fails the job): an honest engine ends there, as at end-of-sequence.
        stop_ids = set(binding.eos_token_ids) | binding.control_token_ids | set(request.stop_ids or ())
        pieces = binding.vocab.pieces
        grammar = None
        if request.json_schema is not None:
            grammar = await asyncio.to_thread(_grammar, json.dumps(request.json_schema, sort_keys=True))

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        llm, lock = await asyncio.to_thread(_load_llama, binding.gguf_path, self.n_ctx, self.n_threads)

        def put(item) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def run() -> None:
            try:
                with lock:
                    if cancel.is_set():
                        put(_Stop("cancelled"))
                        return
                    seed = request.seed if request.seed is not None else random.getrandbits(31)
                    llm.set_seed(int(seed) & 0x7FFFFFFF)
                    n = 0
                    reason = "length"
                    if max_tokens <= 0:
                        put(_Stop(reason))
                        return
                    gen = llm.generate(
                        prompt,
                        top_k=0,
                        top_p=float(request.top_p),
                        min_p=0.0,
                        typical_p=1.0,
                        temp=max(0.0, float(request.temperature)),
                        repeat_penalty=1.0,
                        reset=True,
                        grammar=grammar,
                    )
                    want, top, n_vocab = request.logprobs, int(request.top_logprobs), llm.n_vocab()
                    try:
                        for tok in gen:
                            if cancel.is_set():
                                reason = "cancelled"
                                break
                            if tok in stop_ids:
                                reason = "stop"
                                break
                            # only when asked: a log-softmax over the vocabulary per token
                            put((int(tok), token_logprob(_last_logits(llm, n_vocab), int(tok), top) if want else None))
                            n += 1
                            if n >= max_tokens:
                                reason = "length"
                                break
                    finally:
                        gen.close()
                    put(_Stop(reason))
            except BaseException as exc:
                put(exc)

        thread = threading.Thread(target=run, name="llama-generate", daemon=True)
        thread.start()
        text = IncrementalText()
        produced = 0
        try:
            while True:
                item = await queue.get()
                if isinstance(item, tuple):
                    batch = [item]
                    # Coalesce whatever is already queued into one step.
                    while not queue.empty():
                        nxt = queue.get_nowait()
                        if isinstance(nxt, tuple):
                            batch.append(nxt)
                        else:
                            queue.put_nowait(nxt)  # re-queued at the end: it was last anyway
                            break
                    ids = [tok for tok, _ in batch]
                    produced += len(ids)
                    self.tokens_generated += len(ids)
                    yield TokenStep(ids=ids, text=text.push(b"".join(pieces[i] for i in ids)),
                                    logprobs=[lp for _, lp in batch] if request.logprobs else None)
                elif isinstance(item, _Stop):
                    if item.reason == "cancelled":
                        return
                    yield TokenStep(
                        ids=[],
                        text=text.flush(),
                        finish_reason=item.reason,  # type: ignore[arg-type]
                        prompt_tokens=len(prompt),
                        completion_tokens=produced,
                    )
                    return
                else:
                    raise EngineError(f"llama.cpp generation failed: {item}") from item
        finally:
            cancel.set()

    async def aclose(self) -> None:
        # Llama instances are shared per process (see _load_llama); nothing to release per engine.
        return None
