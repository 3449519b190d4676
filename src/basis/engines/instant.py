"""Benchmark-only engine: a fixed canned completion, emitted instantly.

It uses the binding's tokenizer so that ids and text agree exactly (the gateway's checks run as
for a real engine), which isolates the gateway's own cost per token. Never use it to serve users.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Mapping

from basis.engines.base import EngineError, GenerateRequest, TokenStep
from basis.models.binding import ModelBinding
from basis.models.utf8 import IncrementalText

CANNED_TEXT = (
    "Basis is an OpenAI-compatible inference network. This is a canned benchmark completion: "
    "every token is produced instantly so that only the gateway's cost is measured. "
    "Les caractères accentués, 日本語 and emoji 🙂 keep the UTF-8 path honest. "
)


class InstantEngine:
    def __init__(
        self,
        bindings: ModelBinding | Mapping[str, ModelBinding],
        *,
        text: str = CANNED_TEXT,
        tokens_per_step: int = 1,
    ) -> None:
        if isinstance(bindings, ModelBinding):
            bindings = {bindings.model_id: bindings}
        self._bindings = dict(bindings)
        self._text = text
        self._ids: dict[str, list[int]] = {}
        self.tokens_per_step = max(1, tokens_per_step)

    @property
    def models(self) -> Collection[str]:
        return tuple(self._bindings)

    def _canned(self, model: str) -> tuple[ModelBinding, list[int]]:
        if model not in self._bindings:
            if not model and len(self._bindings) == 1:
                model = next(iter(self._bindings))
            else:
                raise EngineError(f"model {model!r} is not served by this engine")
        b = self._bindings[model]
        if model not in self._ids:
            eos = b.eos_token_ids
            self._ids[model] = [i for i in b.tokenize(self._text) if i not in eos]
        return b, self._ids[model]

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenStep]:
        if request.json_schema is not None:
            raise EngineError("the instant engine cannot decode under a JSON schema")
        binding, canned = self._canned(request.model)
        n = max(0, int(request.max_tokens))
        # Repeat the canned sequence to fill max_tokens: "length", like a base model.
        ids = (canned * (n // max(1, len(canned)) + 1))[:n]
        dec = IncrementalText()
        k = self.tokens_per_step
        for start in range(0, len(ids), k):
            chunk = ids[start : start + k]
            yield TokenStep(ids=chunk, text=dec.push(binding.detokenize(chunk)))
            if start % 64 == 0:
                await asyncio.sleep(0)
        yield TokenStep(
            ids=[],
            text=dec.flush(),
            finish_reason="length",
            prompt_tokens=len(request.prompt_ids),
            completion_tokens=len(ids),
        )

    async def aclose(self) -> None:
        return None
