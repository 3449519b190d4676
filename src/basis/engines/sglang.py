"""GPU engine: adapter to an sglang HTTP server (native ``/generate`` API), sglang 0.5.6 or later.

Before its first job the adapter asks the server what it is (``sglang_server.fetch_server_info``)
and refuses any version or mode whose stream it cannot read correctly (``check_supported``).

Request: ``POST /generate`` with ``input_ids`` (the gateway's prompt ids, so no re-tokenising),
``sampling_params`` with *every* sampling key explicit (so a server's
``--preferred-sampling-params`` cannot change a job), ``stream: true`` and ``rid``. The answer
is Server-Sent Events ``data: {...}`` (``text``, ``output_ids``, ``meta_info``), then
``data: [DONE]``; ``sglang_stream.StreamReader`` reads them. A request is aborted with
``POST /abort_request {"rid": ...}``, with the server's API key.

Token ids come from sglang; the text sent on is rebuilt from those ids with the binding's
per-id bytes and the incremental UTF-8 rule (``token_pieces``), so the id/text check of
DESIGN 1.3 holds by construction whatever sglang's detokenizer does with special tokens or
spaces. Without a binding, sglang's own text is used.

Only the HTTP client lives here: sglang itself (CUDA, torch, triton) is never imported.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence

import httpx

from basis.engines.base import EngineError, GenerateRequest, TokenLogprob, TokenStep
from basis.engines.sglang_server import (
    MIN_INCREMENTAL_VERSION,
    MIN_VERSION,
    ServerInfo,
    auth_headers,
    check_supported,
    fetch_server_info,
    launch_server,
    sglang_available,
    stop_process,
    wait_healthy,
)
from basis.engines.sglang_stream import StreamReader, parse_event
from basis.models.utf8 import IncrementalText

__all__ = ["MIN_VERSION", "SGLangEngine", "launch_server", "sampling_params", "sglang_available"]

log = logging.getLogger("basis.engines.sglang")

PiecesFn = Callable[[Sequence[int]], list[bytes]]


def sampling_params(request: GenerateRequest, stop_ids: Iterable[int], *, seed_applied: bool) -> dict:
    """Every key that changes which ids are sampled, set to the job's value or to neutral.

    Only keys every supported version (0.5.6 to 0.5.23) accepts: 0.5.23 answers 400 to unknown
    ones. ``stop_token_ids`` holds the job's stop ids *and* the binding's end-of-sequence ids:
    sglang otherwise stops on the eos ids of its own config files, which need not be the binding's.
    """
    sp: dict = {
        "max_new_tokens": int(request.max_tokens),
        "temperature": float(request.temperature),
        "top_p": float(request.top_p),
        "top_k": -1,
        "min_p": 0.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "repetition_penalty": 1.0,
        "min_new_tokens": 0,
        "n": 1,
        "ignore_eos": False,
        "stop": None,
        "stop_regex": None,
        # sglang takes the schema as JSON text and constrains decoding to it (xgrammar).
        "json_schema": json.dumps(request.json_schema) if request.json_schema is not None else None,
        "regex": None,
        "ebnf": None,
        "structural_tag": None,
        "stop_token_ids": sorted({int(i) for i in stop_ids}),
    }
    if request.seed is not None and seed_applied:
        sp["sampling_seed"] = int(request.seed)
    return sp


class SGLangEngine:
    """``original_logprobs``: the server runs with ``SGLANG_RETURN_ORIGINAL_LOGPROB=1`` (``--launch``
    sets it), so its logprobs are the model's own, before temperature, as protocol v3 reports them;
    sglang's default is after temperature, so without it the engine reports none (the worker then
    speaks v2 and never gets a logprobs job)."""

    supports_json_schema = True

    def __init__(
        self,
        base_url: str,
        models: Iterable[str],
        *,
        eos_ids: Iterable[int] = (),
        token_pieces: PiecesFn | None = None,
        api_key: str | None = None,
        timeout: float = 600.0,
        startup_timeout: float = 120.0,
        process: subprocess.Popen | None = None,
        original_logprobs: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.original_logprobs = original_logprobs
        self._models = tuple(models)
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.token_pieces = token_pieces
        self.api_key = api_key
        self.startup_timeout = startup_timeout
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0), headers=auth_headers(api_key))
        self._process = process
        self._start_lock = asyncio.Lock()
        self.server: ServerInfo | None = None
        # The worker's own audit trail of what the server could not honour.
        self.seeds_not_applied = 0
        self.aborts_failed = 0

    @classmethod
    def for_binding(cls, base_url: str, binding, **kw) -> SGLangEngine:
        """Serve one ModelBinding: its eos ids are sent as stop ids and filtered, its bytes rebuild the text.
        Its other control ids (padding, turn or image markers) stop generation too: relaying one fails
        the job (DESIGN 1.3), so an honest engine ends there, as the llama.cpp engine does."""
        stops = set(binding.eos_token_ids) | set(binding.control_token_ids)
        return cls(base_url, [binding.model_id], eos_ids=stops, token_pieces=binding.token_pieces, **kw)

    @property
    def models(self) -> Collection[str]:
        return self._models

    @property
    def supports_logprobs(self) -> bool:
        return self.original_logprobs

    @property
    def seed_applied(self) -> bool:
        return bool(self.server and self.server.deterministic)

    async def start(self) -> ServerInfo:
        """Wait for the server's health, read its version and mode, refuse what cannot be read
        correctly (EngineError naming the minimum). Idempotent; ``generate`` calls it first."""
        if self.server is not None:
            return self.server
        async with self._start_lock:
            if self.server is None:
                await wait_healthy(self._client, self.base_url, self.startup_timeout, process=self._process)
                info = await fetch_server_info(self._client, self.base_url, self.api_key)
                check_supported(info)
                mode = {True: "incremental", False: "cumulative", None: "detected per stream"}[info.incremental]
                log.info("sglang %s at %s (from %s): %s streaming, deterministic inference %s", info.version,
                         self.base_url, info.source, mode, "on" if info.deterministic else "off")
                if not info.deterministic:
                    log.warning("sglang at %s runs without --enable-deterministic-inference: job seeds are not "
                                "sent (sglang would ignore them); each seeded job is logged as such", self.base_url)
                self.server = info
            return self.server

    # -- generation ----------------------------------------------------------------------
    def _payload(self, request: GenerateRequest, rid: str) -> dict:
        stop = set(self.eos_ids) | set(request.stop_ids or ())
        sp = sampling_params(request, stop, seed_applied=self.seed_applied)
        payload = {"input_ids": list(request.prompt_ids), "sampling_params": sp, "stream": True, "rid": rid}
        if request.logprobs:  # output positions only; ids, not text (the binding renders them)
            payload |= {"return_logprob": True, "logprob_start_len": -1,
                        "top_logprobs_num": int(request.top_logprobs), "return_text_in_logprobs": False}
        return payload

    async def abort(self, rid: str) -> bool:
        """Ask the server to stop ``rid``. A failure is logged (the job ends anyway): True if it took."""
        try:
            resp = await self._client.post(f"{self.base_url}/abort_request", json={"rid": rid}, timeout=5.0)
        except httpx.HTTPError as exc:
            self.aborts_failed += 1
            log.warning("sglang abort of %s failed: %s", rid, exc)
            return False
        if resp.status_code != 200:
            self.aborts_failed += 1
            log.warning("sglang abort of %s answered %s: %s", rid, resp.status_code, resp.text[:200])
            return False
        return True

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenStep]:
        info = await self.start()
        rid = request.request_id or uuid.uuid4().hex
        if request.seed is not None and not info.deterministic:
            self.seeds_not_applied += 1
            log.info("job %s: seed %s not applied (sglang %s without --enable-deterministic-inference)",
                     rid, request.seed, info.version)
        if request.logprobs and not self.original_logprobs:
            raise EngineError("this sglang server's logprobs are after temperature (run it with "
                              "SGLANG_RETURN_ORIGINAL_LOGPROB=1): no logprobs job here")
        skip = set(self.eos_ids) | set(request.stop_ids or ())
        dec = IncrementalText()
        reader = StreamReader(info.incremental,
                              deltas_safe=info.version_tuple[:3] >= MIN_INCREMENTAL_VERSION)
        finished = False
        try:
            async with self._client.stream("POST", f"{self.base_url}/generate",
                                           json=self._payload(request, rid)) as resp:
                if resp.status_code != 200:
                    body = (await resp.aread()).decode("utf-8", "replace")[:500]
                    what = " (still starting)" if resp.status_code == 503 else ""
                    raise EngineError(f"sglang /generate answered {resp.status_code}{what}: {body}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    event = parse_event(line[5:].strip())
                    if event is None:
                        break
                    chunk = reader.read(event)
                    kept = [i for i in chunk.new_ids if i not in skip]
                    logprobs: list[TokenLogprob] | None = None
                    if request.logprobs:
                        every = reader.logprobs(event, chunk.new_ids, int(request.top_logprobs))
                        logprobs = [lp for i, lp in zip(chunk.new_ids, every, strict=True) if i not in skip]
                    if self.token_pieces is not None:
                        text = dec.push(b"".join(self.token_pieces(kept))) if kept else ""
                    else:
                        text = chunk.text or ""
                    if kept or text:
                        yield TokenStep(ids=kept, text=text, logprobs=logprobs)
                    if chunk.finish_kind:
                        finished = True
                        yield TokenStep(
                            ids=[],
                            text=dec.flush() if self.token_pieces is not None else "",
                            finish_reason=chunk.finish_kind,
                            prompt_tokens=chunk.prompt_tokens,
                            completion_tokens=chunk.completion_tokens,
                        )
                        return
            if not finished:
                raise EngineError("sglang stream ended without a finish_reason")
        except httpx.HTTPError as exc:
            raise EngineError(f"sglang request failed: {exc}") from exc
        finally:
            if not finished:
                # Closed early (cancel) or failed: make the server stop working on it.
                await asyncio.shield(self.abort(rid))

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._process is not None:
            await asyncio.to_thread(stop_process, self._process)
