"""GPU engine: adapter to an sglang 0.5.x HTTP server (native ``/generate`` API).

Request: ``POST /generate`` with ``input_ids`` (the gateway's prompt ids, so no re-tokenising),
``sampling_params`` {max_new_tokens, temperature, top_p, stop_token_ids?, sampling_seed?},
``stream: true`` and ``rid``. The server answers Server-Sent Events ``data: {...}`` with
``text``, ``output_ids`` and ``meta_info`` {id, finish_reason, prompt_tokens,
completion_tokens, ...}, then ``data: [DONE]``. ``text`` and ``output_ids`` are cumulative,
unless the server runs with ``--incremental-streaming-output`` (then each event holds the
delta); both are handled (auto-detected from ``meta_info.completion_tokens``). A failure
arrives as ``data: {"error": {"message": ...}}``. ``finish_reason`` is ``null`` until the end,
then ``{"type": "stop" | "length" | "abort", ...}``. A request is aborted with
``POST /abort_request {"rid": ...}``.

Token ids come from sglang; the text sent on is rebuilt from those ids with the binding's
per-id bytes and the incremental UTF-8 rule (``token_pieces``), so the id/text check of
DESIGN 1.3 holds by construction whatever sglang's detokenizer does with special tokens or
spaces. Without a binding, sglang's own text is used.

Only the HTTP client lives here: sglang itself (CUDA, torch, triton) is never imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence

import httpx

from basis.engines.base import EngineError, GenerateRequest, TokenStep
from basis.models.utf8 import IncrementalText

PiecesFn = Callable[[Sequence[int]], list[bytes]]


class SGLangEngine:
    def __init__(
        self,
        base_url: str,
        models: Iterable[str],
        *,
        eos_ids: Iterable[int] = (),
        token_pieces: PiecesFn | None = None,
        incremental: bool | None = None,
        timeout: float = 600.0,
        process: subprocess.Popen | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._models = tuple(models)
        self.eos_ids = frozenset(eos_ids)
        self.token_pieces = token_pieces
        self.incremental = incremental
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0))
        self._process = process

    @classmethod
    def for_binding(cls, base_url: str, binding, **kw) -> SGLangEngine:
        """Serve one ModelBinding: its eos ids are filtered and its bytes rebuild the text."""
        return cls(
            base_url,
            [binding.model_id],
            eos_ids=binding.eos_token_ids,
            token_pieces=binding.token_pieces,
            **kw,
        )

    @property
    def models(self) -> Collection[str]:
        return self._models

    # -- generation ----------------------------------------------------------------------
    def _payload(self, request: GenerateRequest, rid: str) -> dict:
        sp: dict = {
            "max_new_tokens": int(request.max_tokens),
            "temperature": float(request.temperature),
            "top_p": float(request.top_p),
        }
        if request.stop_ids:
            sp["stop_token_ids"] = list(request.stop_ids)
        if request.seed is not None:
            sp["sampling_seed"] = int(request.seed)
        return {"input_ids": list(request.prompt_ids), "sampling_params": sp, "stream": True, "rid": rid}

    async def abort(self, rid: str) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self._client.post(f"{self.base_url}/abort_request", json={"rid": rid}, timeout=5.0)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenStep]:
        rid = request.request_id or uuid.uuid4().hex
        skip = set(self.eos_ids) | set(request.stop_ids or ())
        dec = IncrementalText()
        seen_ids = 0  # output ids consumed so far (cumulative mode)
        seen_text = 0  # characters of sglang's text consumed so far (cumulative mode)
        produced = 0
        finished = False
        mode = self.incremental  # None: detect from the second event
        try:
            async with self._client.stream(
                "POST", f"{self.base_url}/generate", json=self._payload(request, rid)
            ) as resp:
                if resp.status_code != 200:
                    body = (await resp.aread()).decode("utf-8", "replace")[:500]
                    raise EngineError(f"sglang /generate answered {resp.status_code}: {body}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        event = json.loads(data)
                    except json.JSONDecodeError as exc:
                        raise EngineError(f"sglang sent malformed event: {data[:200]!r}") from exc
                    if "error" in event:
                        err = event["error"]
                        msg = err.get("message") if isinstance(err, dict) else str(err)
                        raise EngineError(f"sglang error: {msg}")
                    meta = event.get("meta_info") or {}
                    out_ids = list(event.get("output_ids") or [])
                    completion = meta.get("completion_tokens")
                    incremental = mode
                    if incremental is None:
                        incremental = False  # first event: both readings agree
                        if seen_ids > 0 and completion is not None:
                            mode = incremental = len(out_ids) != completion
                    if incremental:
                        new_ids = out_ids
                        seen_ids += len(out_ids)
                    else:
                        new_ids = out_ids[seen_ids:]
                        seen_ids = len(out_ids)
                    kept = [int(i) for i in new_ids if int(i) not in skip]
                    if self.token_pieces is not None:
                        text = dec.push(b"".join(self.token_pieces(kept))) if kept else ""
                    else:
                        raw = event.get("text") or ""
                        if incremental:
                            text = raw
                        else:
                            text, seen_text = raw[seen_text:], max(seen_text, len(raw))
                    if kept or text:
                        produced += len(kept)
                        yield TokenStep(ids=kept, text=text)
                    fr = meta.get("finish_reason")
                    if fr:
                        kind = fr.get("type") if isinstance(fr, dict) else str(fr)
                        if kind == "abort":
                            msg = fr.get("message", "") if isinstance(fr, dict) else ""
                            raise EngineError(f"sglang aborted the request: {msg}")
                        finished = True
                        yield TokenStep(
                            ids=[],
                            text=dec.flush() if self.token_pieces is not None else "",
                            finish_reason="length" if kind == "length" else "stop",
                            prompt_tokens=meta.get("prompt_tokens"),
                            completion_tokens=completion,
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
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                await asyncio.to_thread(self._process.wait, 30)
            except subprocess.TimeoutExpired:
                self._process.kill()


def sglang_available() -> tuple[bool, str]:
    """(True, "") when sglang can be imported and a CUDA GPU is visible, else (False, reason)."""
    import importlib.util

    if importlib.util.find_spec("sglang") is None:
        return False, "sglang not installed"
    try:
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        if r.returncode != 0 or "GPU" not in r.stdout:
            return False, "no GPU"
    except (OSError, subprocess.TimeoutExpired):
        return False, "no GPU (nvidia-smi not found)"
    return True, ""


async def launch_server(
    model_path: str,
    *,
    port: int = 30000,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    startup_timeout: float = 900.0,
    python: str | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start ``python -m sglang.launch_server`` and wait until ``GET /health`` answers 200.

    Returns (process, base_url). Only works where sglang is installed (CUDA hosts).
    """
    ok, reason = sglang_available()
    if not ok:
        raise EngineError(f"cannot launch sglang: {reason}")
    cmd = [
        python or sys.executable,
        "-m",
        "sglang.launch_server",
        "--model-path",
        model_path,
        "--host",
        host,
        "--port",
        str(port),
        *extra_args,
    ]
    proc = subprocess.Popen(cmd, env=dict(os.environ))
    url = f"http://{host}:{port}"
    deadline = asyncio.get_running_loop().time() + startup_timeout
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            if proc.poll() is not None:
                raise EngineError(f"sglang exited with code {proc.returncode} during startup")
            try:
                r = await client.get(f"{url}/health")
                if r.status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                proc.terminate()
                raise EngineError(f"sglang did not become healthy within {startup_timeout:.0f}s")
            await asyncio.sleep(2.0)
