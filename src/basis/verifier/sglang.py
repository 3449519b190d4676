"""The verifier's built-in GPU scorer: ``basis verifier run --sglang-url [MODEL=]URL``.

Each advertised model named (or every one, when they all share one backing file) is scored by
``SGLangScorer`` on that server, with the binding's vocabulary size as ``n_vocab``: the temperature
test bounds its hotter alternatives from sglang's top-k with it, and without it they get factor 0
(basis.engines.sglang_scoring). sglang's ``/get_model_info`` reports no vocabulary size (model_path,
tokenizer_path, is_generation, preferred_sampling_params, weight_version), so it is read from the
binding's GGUF header, which the verifier needs anyway: the worker's ids are ids of that
vocabulary. Models not named keep the default scorer (llama.cpp over their GGUF).

Before any job is claimed (``SGLangScorers.check``: ``basis verifier run`` on its loop, the gateway's
pool at start-up) each server must pass the version gate and show that it serves each of its
models' binding: the same tokenizer and a ``model_path`` that names the binding's model, or the
one the operator pinned (basis.verifier.sglang_identity).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import httpx

from basis.engines.scoring import ScoringError
from basis.engines.sglang_scoring import DEFAULT_TOP_K, SGLangScorer
from basis.models import ModelBinding
from basis.models.gguf_header import gguf_vocab_size
from basis.verifier.policy import SGLANG_URL_ENV as URL_ENV
from basis.verifier.policy import ScorerFactory, load_factory, sglang_urls_from_env
from basis.verifier.sglang_identity import (
    PINNED,
    ModelIdentity,
    ModelIdentityError,
    check_identity,
    fetch_model_info,
)

log = logging.getLogger("basis.verifier")
API_KEY_ENV = "BASIS_SGLANG_API_KEY"
TOP_K_ENV = "BASIS_VERIFIER_SGLANG_TOP_K"
MODEL_PATH_ENV = "BASIS_VERIFIER_SGLANG_MODEL_PATH"  # --sglang-model-path MODEL=PATH ...
MAX_TOP_K = 1024  # --sglang-top-k / BASIS_VERIFIER_SGLANG_TOP_K at most
# The start-up check: a server that does not take the connection within CONNECT_TIMEOUT is down (a
# gateway must not hang on it); one that takes it answers each request within CHECK_TIMEOUT (the
# largest is one short prefill), and the whole check within CHECK_DEADLINE.
CONNECT_TIMEOUT = 5.0
CHECK_TIMEOUT = 30.0
CHECK_DEADLINE = 60.0


class SGLangOptionError(ValueError):
    """A ``--sglang-url`` the verifier cannot use (the message names why)."""


def parse_sglang_urls(values: Sequence[str], bindings: Mapping[str, ModelBinding],
                      source: str = "--sglang-url") -> dict[str, str]:
    """``[MODEL=]URL`` options -> {advertised model: base URL}. A bare URL serves every advertised
    model, which is only meaningful when they all share one backing file (one sglang server
    serves one model); else each must be named. ``source`` names the option or variable in errors."""
    out: dict[str, str] = {}
    for value in values:
        model, sep, url = value.partition("=") if "=" in value.split("://", 1)[0] else ("", "", value)
        url = _base_url(url.strip(), value, source)
        if sep:
            model = model.strip()
            if model not in bindings:
                raise SGLangOptionError(f"{source} {value}: {model!r} is not an advertised model "
                                        f"(advertised: {', '.join(sorted(bindings))})")
            targets = [model]
        else:
            backings = {b.gguf for b in bindings.values()}
            if len(backings) > 1:
                raise SGLangOptionError(
                    f"{source} {value}: the advertised models are backed by {len(backings)} different models "
                    f"({', '.join(sorted(backings))}); say which model this server serves: MODEL=URL")
            targets = list(bindings)
        for target in targets:
            if target in out and out[target] != url:
                raise SGLangOptionError(f"{source}: {target!r} is given two servers ({out[target]}, {url})")
            out[target] = url
    return out


def _base_url(url: str, value: str, source: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SGLangOptionError(f"{source} {value}: not an http(s) URL of an sglang server "
                                "(e.g. http://127.0.0.1:30000)")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise SGLangOptionError(f"{source} {value}: {exc}") from exc
    return url.rstrip("/")


def binding_vocab_size(model: str, binding: ModelBinding) -> int:
    """The binding's vocabulary size, from its GGUF header (no llama.cpp needed)."""
    try:
        path = binding.gguf_path
    except (RuntimeError, OSError, ValueError) as exc:  # a packaged model whose package is missing
        raise SGLangOptionError(f"model {model!r}: its binding's GGUF is not installed here ({exc}); the "
                                "verifier needs the binding's vocabulary to score with sglang") from exc
    if not path or not os.path.isfile(path):
        raise SGLangOptionError(f"model {model!r}: its binding's GGUF {path!r} is not here; the verifier needs "
                                "the binding's vocabulary to score with sglang")
    try:
        n_vocab = gguf_vocab_size(path)
    except (OSError, ValueError) as exc:
        raise SGLangOptionError(f"model {model!r}: cannot read {path}: {exc}") from exc
    if not n_vocab:
        raise SGLangOptionError(f"model {model!r}: {path} holds no tokenizer vocabulary")
    return n_vocab


def parse_model_paths(values: Sequence[str], urls: Mapping[str, str],
                      source: str = "--sglang-model-path") -> dict[str, str]:
    """``MODEL=PATH`` options -> {advertised model: the sglang ``model_path`` the operator vouches
    serves it} (basis.verifier.sglang_identity: accepted instead of a name match)."""
    out: dict[str, str] = {}
    for value in values:
        model, sep, path = value.partition("=")
        model, path = model.strip(), path.strip()
        if not sep or not path:
            raise SGLangOptionError(f"{source} {value}: give MODEL=PATH (the model_path the server reports)")
        if model not in urls:
            raise SGLangOptionError(f"{source} {value}: {model!r} is not scored with sglang here (models given a "
                                    f"server: {', '.join(sorted(urls)) or 'none'})")
        if model in out and out[model] != path:
            raise SGLangOptionError(f"{source}: {model!r} is pinned twice ({out[model]}, {path})")
        out[model] = path
    return out


class SGLangScorers:
    """One ``SGLangScorer`` per (server, vocabulary), and the factory over them; the models not
    served by sglang go to ``fallback``. ``model_paths``: the operator's pins (parse_model_paths)."""

    def __init__(self, urls: Mapping[str, str], bindings: Mapping[str, ModelBinding], fallback: ScorerFactory,
                 *, api_key: str | None = None, top_k: int = DEFAULT_TOP_K,
                 model_paths: Mapping[str, str] | None = None) -> None:
        self.by_model: dict[str, SGLangScorer] = {}
        self.identities: dict[str, ModelIdentity] = {}
        shared: dict[tuple[str, int], SGLangScorer] = {}
        for model, url in sorted(urls.items()):
            n_vocab = binding_vocab_size(model, bindings[model])
            key = (url, n_vocab)
            if key not in shared:
                shared[key] = SGLangScorer(url, api_key=api_key, top_k=top_k, n_vocab=n_vocab)
            self.by_model[model] = shared[key]
            try:
                self.identities[model] = ModelIdentity.of(model, bindings[model], bindings[model].gguf_path,
                                                          (model_paths or {}).get(model))
            except ModelIdentityError as exc:
                raise SGLangOptionError(str(exc)) from exc
        self.api_key = api_key
        self.fallback = fallback

    def __call__(self, model: str):
        scorer = self.by_model.get(model)
        return scorer if scorer is not None else self.fallback(model)

    def servers(self) -> list[SGLangScorer]:
        """Each distinct scorer once (models served by one server share it)."""
        return list({id(s): s for s in self.by_model.values()}.values())

    async def check(self, *, connect_timeout: float = CONNECT_TIMEOUT, deadline: float = CHECK_DEADLINE) -> list[str]:
        """Before any job is claimed: each server answers, passes the scorer's version gate and
        serves each of its models' binding (basis.verifier.sglang_identity), within ``deadline``
        seconds a server. Raises SGLangOptionError naming the server otherwise; returns one note per
        model (how it was shown). Its own HTTP client, closed here: the gateway checks on another
        event loop than it scores."""
        notes = []
        timeout = httpx.Timeout(min(CHECK_TIMEOUT, deadline), connect=min(connect_timeout, deadline))
        async with httpx.AsyncClient(timeout=timeout) as client:
            for scorer in self.servers():
                try:
                    async with asyncio.timeout(deadline):
                        await scorer.check_server(client, timeout)
                        info = await fetch_model_info(client, scorer.base_url, self.api_key, timeout)
                        for model in sorted(m for m, s in self.by_model.items() if s is scorer):
                            notes.append(await check_identity(client, scorer.base_url, self.api_key,
                                                              self.identities[model], info, timeout))
                except TimeoutError as exc:
                    raise SGLangOptionError(f"sglang at {scorer.base_url} did not finish the start-up check "
                                            f"within {deadline:g} s") from exc
                except (ScoringError, ModelIdentityError) as exc:
                    raise SGLangOptionError(f"sglang at {scorer.base_url}: {exc}") from exc
        return notes

    def check_blocking(self, *, connect_timeout: float = CONNECT_TIMEOUT,
                       deadline: float = CHECK_DEADLINE) -> list[str]:
        """``check`` from synchronous code (the gateway's start-up), on a loop of its own in a
        thread of its own (the caller may be inside a running loop); logs each note (a model
        accepted by the operator's pin, not by its name, as a warning)."""
        result: list = []

        def run() -> None:
            try:
                result.append(asyncio.run(self.check(connect_timeout=connect_timeout, deadline=deadline)))
            except BaseException as exc:
                result.append(exc)

        thread = threading.Thread(target=run, name="sglang-check", daemon=True)
        thread.start()
        thread.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        for note in result[0]:
            (log.warning if PINNED in note else log.info)("verifier sglang: %s", note)
        return result[0]

    async def aclose(self) -> None:
        for scorer in self.servers():
            await scorer.aclose()

    def describe(self, models: Sequence[str]) -> str:
        """Which scorer checks which model (``models``: those with a reference installed here)."""
        return ", ".join(f"{m} via sglang at {s.base_url} (n_vocab {s.n_vocab})" for m, s in self.by_model.items()) + \
            "".join(f", {m} via llama.cpp" for m in models if m not in self.by_model)


def check_top_k(top_k: int, source: str = "--sglang-top-k") -> int:
    """``top_k`` when it is 1..MAX_TOP_K; else SGLangOptionError naming ``source``."""
    if not 1 <= top_k <= MAX_TOP_K:
        raise SGLangOptionError(f"{source} must be a whole number 1..{MAX_TOP_K}, not {top_k!r}")
    return top_k


def build_sglang_scorers(values: Sequence[str], bindings: Mapping[str, ModelBinding], *, api_key: str | None = None,
                         top_k: int | None = None, source: str = "--sglang-url",
                         top_k_source: str = "--sglang-top-k", model_paths: Sequence[str] = (),
                         model_path_source: str = "--sglang-model-path") -> SGLangScorers:
    """The verifier's scorers for ``[MODEL=]URL`` values: sglang for the models named, llama.cpp
    (the default factory) for the rest. Raises SGLangOptionError on a value it cannot use."""
    top_k = DEFAULT_TOP_K if top_k is None else check_top_k(top_k, top_k_source)
    urls = parse_sglang_urls(values, bindings, source)
    return SGLangScorers(urls, bindings, load_factory(None, bindings), api_key=api_key, top_k=top_k,
                         model_paths=parse_model_paths(model_paths, urls, model_path_source))


def sglang_scorers_from_env(bindings: Mapping[str, ModelBinding]) -> SGLangScorers | None:
    """The gateway pool's sglang scorers from the same variables as ``basis verifier run``; None
    when ``BASIS_VERIFIER_SGLANG_URL`` is unset."""
    values = sglang_urls_from_env()
    if not values:
        return None
    raw_top_k = os.environ.get(TOP_K_ENV, "").strip()
    if raw_top_k and not raw_top_k.isdigit():
        raise SGLangOptionError(f"{TOP_K_ENV} must be a whole number 1..{MAX_TOP_K}, not {raw_top_k!r}")
    return build_sglang_scorers(values, bindings, api_key=os.environ.get(API_KEY_ENV) or None,
                                top_k=int(raw_top_k) if raw_top_k else None, source=URL_ENV, top_k_source=TOP_K_ENV,
                                model_paths=os.environ.get(MODEL_PATH_ENV, "").split(),
                                model_path_source=MODEL_PATH_ENV)
