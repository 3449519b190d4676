"""Which policy this operator runs and publishes, and which bindings have a reference to score with."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from importlib import import_module
from importlib.util import find_spec
from typing import Any

from basis.engines.scoring import Scorer
from basis.models import ModelBinding
from basis.verification.policy import VerificationPolicy

ScorerFactory = Callable[[str], Scorer]  # advertised model -> the scorer of its binding
MODES = ("pool", "external", "off")  # check in the gateway / leave checks to `basis verifier run` / none
SGLANG_URL_ENV = "BASIS_VERIFIER_SGLANG_URL"  # the --sglang-url of `basis verifier run`, and the gateway's pool


def sglang_urls_from_env() -> list[str]:
    """``BASIS_VERIFIER_SGLANG_URL``'s values, split on whitespace (as the CLI's option reads it)."""
    return os.environ.get(SGLANG_URL_ENV, "").split()


def verifier_mode() -> str:
    mode = os.environ.get("BASIS_VERIFIER", "pool").strip().lower()
    if mode not in MODES:
        raise ValueError(f"BASIS_VERIFIER must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def reference_models(bindings: Mapping[str, ModelBinding]) -> list[str]:
    """Advertised models whose reference model is installed here (the GGUF resolves)."""
    out = []
    for model, binding in sorted(bindings.items()):
        try:
            path = binding.gguf_path
        except (FileNotFoundError, ValueError, OSError):
            continue
        if path and os.path.exists(path):
            out.append(model)
    return out


def can_score_locally() -> bool:
    """The default scorer (llama.cpp) is importable here."""
    try:
        return find_spec("basis.engines.llama_scoring") is not None and find_spec("llama_cpp") is not None
    except (ImportError, ValueError):
        return False


def policy_from_env(bindings: Mapping[str, ModelBinding], mode: str | None = None) -> tuple[VerificationPolicy,
                                                                                            list[str]]:
    """(policy, verified models): on wherever a reference is installed, unless switched off
    (``BASIS_VERIFIER=off``), in which case the published policy says ``enabled: false``. A pool
    without a scorer to run (no ``BASIS_VERIFIER_SCORER``, no ``BASIS_VERIFIER_SGLANG_URL`` and no
    llama.cpp scorer here) is off too: selecting jobs that nothing here can judge would only hold them."""
    mode = mode or verifier_mode()
    if mode == "pool" and not os.environ.get("BASIS_VERIFIER_SCORER") and not sglang_urls_from_env() \
            and not can_score_locally():
        mode = "off"
    # Per-binding calibration (measured honest runs per reference file).
    base = VerificationPolicy.for_bindings(bindings)
    if "BASIS_VERIFICATION_SAMPLE_BPS" in os.environ:
        bps = int(os.environ["BASIS_VERIFICATION_SAMPLE_BPS"])
        if not 0 <= bps <= 10_000:
            raise ValueError("BASIS_VERIFICATION_SAMPLE_BPS must be 0..10000")
        base = replace(base, sample_bps=bps)
    models = reference_models(bindings) if mode != "off" else []
    return replace(base, enabled=bool(models)), models


def load_factory(spec: str | None, bindings: Mapping[str, ModelBinding]) -> ScorerFactory:
    """The scorer per model: ``module:callable`` (called with the bindings, returns a factory) for
    another engine, else llama.cpp over each binding's own GGUF (imported only when first used)."""
    if spec:
        module, _, name = spec.partition(":")
        maker: Any = getattr(import_module(module), name)
        return maker(bindings)
    cache: dict[str, Scorer] = {}

    def factory(model: str) -> Scorer:
        if model not in cache:
            from basis.engines.llama_scoring import LlamaScorer

            threads = int(os.environ.get("BASIS_VERIFIER_THREADS", "0")) or None
            cache[model] = LlamaScorer({model: bindings[model]}, n_threads=threads)
        return cache[model]

    return factory
