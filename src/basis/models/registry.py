"""Catalog -> bindings. Loading is lazy: nothing is read from disk until a binding is used."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from basis.models.binding import ModelBinding

DEFAULT_BACKING_NAME = "gemma-3-270m (base, Q4_K_M GGUF)"

# Development catalog: all three seed models bind the same Gemma 3 270M GGUF. The numbers are
# placeholders; the real pricing table (owned by the lead) supplies its own catalog.
DEV_CATALOG: list[dict[str, Any]] = [
    {
        "id": "basis-default",
        "context_window": 32768,
        "max_output_tokens": 1024,
        "multiplier_bps": 10_000,
        "backing": {"engine": "llama-cpp", "gguf": "gemma3-270m", "name": DEFAULT_BACKING_NAME},
    },
    {
        "id": "basis-small",
        "context_window": 32768,
        "max_output_tokens": 1024,
        "multiplier_bps": 5_000,
        "backing": {"engine": "llama-cpp", "gguf": "gemma3-270m", "name": DEFAULT_BACKING_NAME},
    },
    {
        "id": "basis-large",
        "context_window": 32768,
        "max_output_tokens": 1024,
        "multiplier_bps": 30_000,
        "backing": {"engine": "llama-cpp", "gguf": "gemma3-270m", "name": DEFAULT_BACKING_NAME},
    },
]


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
    gguf = _get(backing, "gguf", "gemma3-270m")
    name = _get(backing, "name") or (DEFAULT_BACKING_NAME if gguf == "gemma3-270m" else str(gguf))
    return ModelBinding(
        model_id=str(model_id),
        gguf=str(gguf),
        engine=str(engine),
        backing_name=str(name),
        context_window=int(_get(entry, "context_window", 32768)),
        max_output_tokens=int(_get(entry, "max_output_tokens", 1024)),
        multiplier_bps=int(_get(entry, "multiplier_bps", 10_000)),
    )


def load_bindings(catalog: Any = None) -> dict[str, ModelBinding]:
    """Advertised id -> ModelBinding for every catalog entry (the dev catalog when None).

    Accepts a list of entries, ``{"models": [...]}``, or ``{id: entry}``; entries may be dicts
    or objects with the same attribute names (id, context_window, max_output_tokens,
    multiplier_bps, backing={"engine": ..., "gguf": path | "gemma3-270m", "name"?: ...}).
    Bindings over the same GGUF share one loaded vocabulary.
    """
    out: dict[str, ModelBinding] = {}
    for entry in _entries(DEV_CATALOG if catalog is None else catalog):
        b = binding_from_entry(entry)
        if b.model_id in out:
            raise ValueError(f"duplicate model id in catalog: {b.model_id}")
        out[b.model_id] = b
    return out
