"""Facts read from a GGUF file's key-value header alone (no llama.cpp, no weights): milliseconds,
where loading the vocabulary with llama.cpp costs a second (and needs llama-cpp-python, which a
GPU verifier box may not have)."""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


class ArrayLength(int):
    """An array value, reported by its element count (the elements themselves are skipped)."""


def _scan(path: str, pick: Callable[[str, Any, dict[str, Any]], Any], arrays: frozenset[str] = frozenset()) -> Any:
    """Walk the header's keys in order; ``pick(key, value, seen)`` returns the answer (not None) to
    stop early. Arrays are given as their ``ArrayLength`` before their elements are read, except
    those named in ``arrays``: read whole (a list) into ``seen`` and given to ``pick`` as such."""
    with open(path, "rb") as fh:
        def read(fmt: str) -> Any:
            size = struct.calcsize(fmt)
            data = fh.read(size)
            if len(data) != size:
                raise ValueError(f"{path}: truncated GGUF header")
            return struct.unpack(fmt, data)[0]

        def string() -> str:
            return fh.read(read("<Q")).decode("utf-8", "replace")

        def skip_array(item: int, count: int) -> None:
            if item in _GGUF_SCALARS:  # skip without decoding
                fh.seek(struct.calcsize(_GGUF_SCALARS[item]) * count, os.SEEK_CUR)
                return
            for _ in range(count):
                scalar(item)

        def scalar(kind: int) -> Any:
            if kind in _GGUF_SCALARS:
                return read(_GGUF_SCALARS[kind])
            if kind == _GGUF_STRING:
                return string()
            if kind == _GGUF_ARRAY:
                skip_array(read("<I"), read("<Q"))
                return None
            raise ValueError(f"{path}: unknown GGUF value type {kind}")

        if fh.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version = read("<I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        read("<Q")  # tensor count
        seen: dict[str, Any] = {}
        for _ in range(read("<Q")):
            key, kind = string(), read("<I")
            if kind == _GGUF_ARRAY and key in arrays:
                item, count = read("<I"), read("<Q")
                if item in _GGUF_SCALARS:  # one read for the whole array
                    fmt = "<" + _GGUF_SCALARS[item][1:] * count
                    values: list[Any] = list(struct.unpack(fmt, fh.read(struct.calcsize(fmt))))
                else:
                    values = [scalar(item) for _ in range(count)]
                seen[key] = values
                found = pick(key, values, seen)
                if found is not None:
                    return found
                continue
            if kind == _GGUF_ARRAY:
                item, count = read("<I"), read("<Q")
                found = pick(key, ArrayLength(count), seen)
                if found is not None:
                    return found
                skip_array(item, count)
                continue
            val = scalar(kind)
            seen[key] = val
            found = pick(key, val, seen)
            if found is not None:
                return found
    return None


@functools.cache
def gguf_context_length(path: str) -> int | None:
    """``<architecture>.context_length`` (the context the model was trained for, llama.cpp's
    n_ctx_train); None when the file does not say. It precedes the large tokenizer arrays."""

    def pick(key: str, val: Any, seen: dict[str, Any]) -> int | None:
        arch = seen.get("general.architecture")
        return int(val) if arch and key == f"{arch}.context_length" else None

    return _scan(path, pick)


@functools.cache
def gguf_vocab_size(path: str) -> int | None:
    """The vocabulary size: the length of ``tokenizer.ggml.tokens`` (llama.cpp's ``n_vocab``, which
    is also the width of the model's logits: llama.cpp loads the output tensor at that width). None
    when the file has no tokenizer."""
    return _scan(path, lambda key, val, seen: int(val) if key == "tokenizer.ggml.tokens" else None)


@dataclass(frozen=True)
class GGUFTokenizer:
    """The vocabulary as the file stores it: ``tokenizer.ggml.model`` ("gpt2": byte-level BPE,
    "llama": SentencePiece, ...), each id's token string, and its type (llama.cpp's: 1 normal,
    2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte; empty when the file has none)."""

    model: str
    tokens: list[str]
    types: list[int]


def gguf_tokenizer(path: str) -> GGUFTokenizer | None:
    """The file's vocabulary (no llama.cpp: a verifier box may not have it); None without one.
    Reads every token string (Gemma 3's 262,144 in well under a second): not cached."""

    keys = frozenset({"tokenizer.ggml.tokens", "tokenizer.ggml.token_type"})
    header: dict[str, Any] = {}

    def pick(key: str, val: Any, seen: dict[str, Any]) -> bool | None:
        if key in keys or key == "tokenizer.ggml.model":
            header[key] = val
        return True if keys <= header.keys() else None

    _scan(path, pick, keys)
    tokens = header.get("tokenizer.ggml.tokens")
    if tokens is None:
        return None
    return GGUFTokenizer(model=str(header.get("tokenizer.ggml.model", "")), tokens=tokens,
                         types=list(header.get("tokenizer.ggml.token_type") or []))


@functools.cache
def gguf_model_name(path: str) -> str | None:
    """``general.name``: the model's name as the converter recorded it; None when the file has none.
    The general keys precede the tokenizer's."""

    def pick(key: str, val: Any, seen: dict[str, Any]) -> str | None:
        if key == "general.name":
            return val if isinstance(val, str) else ""
        return "" if key.startswith("tokenizer.") else None  # past the general keys: stop ("" = none)

    return _scan(path, pick) or None
