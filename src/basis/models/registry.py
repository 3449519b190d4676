"""Catalog -> bindings. Loading is lazy: only each backing file's header (its training context) is
read when the catalog loads; the vocabulary loads when a binding is first used."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

from basis.models.binding import ModelBinding
from basis.models.gguf import gguf_context_length, resolve_gguf

# Models that registry packages ship (basis.models.gguf.PACKAGED_GGUFS), by the name /v1/models shows.
PACKAGED_NAMES = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct (Q4_1 GGUF)",
    "gemma3-270m": "gemma-3-270m (base, Q4_K_M GGUF)",
}
DEFAULT_GGUF = "smollm2-135m-instruct"  # an instruction-tuned model: the development default answers
DEFAULT_BACKING_NAME = PACKAGED_NAMES[DEFAULT_GGUF]


def _packaged_catalog() -> list[dict[str, Any]]:
    """The catalog of the packaged pricing table: the one the gateway publishes, so a worker or a
    test that loads the default bindings serves exactly what the gateway advertises."""
    data = json.loads(resources.files("basis.domain").joinpath("pricing_table.json").read_text())
    return data["models"]


DEV_CATALOG: list[dict[str, Any]] = _packaged_catalog()


class CatalogError(ValueError):
    """A catalog entry the backing model cannot honour (e.g. a context window it was not trained for)."""


def _entries(catalog: Any) -> Iterable[Mapping[str, Any]]:
    if isinstance(catalog, Mapping):
        if "models" in catalog:
            return catalog["models"]
        # {"basis-default": {...}, ...}
        return [{"id": k, **v} for k, v in catalog.items()]
    return catalog


def _get(entry: Any, key: str, default: Any = None) -> Any:
    if isinstance(entry, Mapping):
        return entry.get(key, default)
    return getattr(entry, key, default)


def binding_from_entry(entry: Any) -> ModelBinding:
    model_id = _get(entry, "id") or _get(entry, "model_id")
    if not model_id:
        raise ValueError(f"catalog entry without an id: {entry!r}")
    backing = _get(entry, "backing") or {}
    engine = _get(backing, "engine", "llama-cpp")
    gguf = _get(backing, "gguf") or DEFAULT_GGUF
    name = _get(backing, "name") or PACKAGED_NAMES.get(gguf, str(gguf))
    return ModelBinding(
        model_id=str(model_id),
        gguf=str(gguf),
        engine=str(engine),
        backing_name=str(name),
        context_window=int(_get(entry, "context_window", 32768)),
        max_output_tokens=int(_get(entry, "max_output_tokens", 1024)),
        multiplier_bps=int(_get(entry, "multiplier_bps", 10_000)),
    )


def check_context_window(binding: ModelBinding) -> int | None:
    """Refuse an advertised context window larger than the backing model's training context
    (``<arch>.context_length`` in the GGUF, llama.cpp's n_ctx_train); returns that context.

    A backing file that cannot be found yet is not checked here (bindings load lazily; such a
    binding fails at first use anyway)."""
    if binding.max_output_tokens >= binding.context_window:
        raise CatalogError(f"model {binding.model_id!r}: max_output_tokens ({binding.max_output_tokens}) must be "
                           f"below its context window ({binding.context_window})")
    try:
        path = resolve_gguf(binding.gguf)
    except RuntimeError:  # a packaged model whose package is not installed
        return None
    if not os.path.isfile(path):
        return None
    trained = gguf_context_length(path)
    if trained is not None and binding.context_window > trained:
        raise CatalogError(f"model {binding.model_id!r} advertises a context window of {binding.context_window} "
                           f"tokens, but its backing model {binding.backing_name!r} was trained for {trained}")
    return trained


def load_bindings(catalog: Any = None) -> dict[str, ModelBinding]:
    """Advertised id -> ModelBinding for every catalog entry (the packaged catalog when None).

    Accepts a list of entries, ``{"models": [...]}``, or ``{id: entry}``; entries may be dicts
    or objects with the same attribute names (id, context_window, max_output_tokens,
    multiplier_bps, backing={"engine": ..., "gguf": path | packaged name, "name"?: ...}).
    Each context window is checked against its backing model's (``check_context_window``).
    Bindings over the same GGUF share one loaded vocabulary.
    """
    out: dict[str, ModelBinding] = {}
    for entry in _entries(DEV_CATALOG if catalog is None else catalog):
        b = binding_from_entry(entry)
        if b.model_id in out:
            raise ValueError(f"duplicate model id in catalog: {b.model_id}")
        check_context_window(b)
        out[b.model_id] = b
    return out
