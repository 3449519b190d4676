"""A protocol double of sglang's native HTTP API, release by release (sglang itself needs CUDA).

It reproduces, from sglang's own source (wheels 0.4.6.post5 to 0.5.23), what a client sees:

* ``POST /generate`` with ``stream: true``: SSE ``data: {"text", "output_ids", "meta_info"}`` then
  ``data: [DONE]``. Per version (``Behaviour.for_version``): no ``output_ids`` before 0.5.1; up to 5
  trailing prompt ids in the first chunk on 0.5.1-0.5.4; id deltas of which only the last queued
  chunk is sent on 0.5.2-0.5.5 and with ``--stream-output`` on 0.5.6-0.5.9 (``burst`` tokens are
  "queued" together before the reader wakes); cumulative chunks by default from 0.5.6; merged
  deltas with ``--incremental-streaming-output`` from 0.5.10. ``sampling_seed`` is a TypeError
  that cuts the stream after a 200 on <= 0.5.2. 0.5.23 answers 400 ``{"error": "unknown field
  ..."}`` to unknown sampling keys. Error frames ``data: {"error": {"message"}}``; abort finish
  reasons ``{"type": "abort", "message", "status_code"}``.
* ``POST /generate`` with ``stream`` and ``return_logprob`` (``reference`` given): every chunk's
  ``meta_info`` also holds ``output_token_logprobs`` ([logprob, id, null] for *every* id so far, end
  of sequence included, in cumulative and incremental streaming alike: sglang's tokenizer manager
  slices only ``output_ids`` and ``text``) and, with ``top_logprobs_num`` k > 0,
  ``output_top_logprobs`` (per id so far, k [logprob, id, null], most likely first).
* ``POST /generate`` without ``stream`` and ``return_logprob``: the scoring answer
  (``meta_info.input_token_logprobs`` / ``input_top_logprobs``) from a scripted reference model.
* ``return_text_in_logprobs``: each ``[logprob, id, text]`` carries the tokenizer's decode of that
  id alone (``token_texts``; sglang's ``batch_decode([[id] ...])``).
* ``GET /health`` (503 for the first ``starting`` polls), ``GET /get_server_info`` (and
  ``/server_info`` from 0.5.10), optionally only ``GET /version``; ``GET /model_info`` and
  ``/get_model_info`` (``model_path`` ...); ``POST /abort_request``.
* ``--api-key``: every path but ``/health`` needs ``Authorization: Bearer KEY`` (401
  ``{"error": "Unauthorized"}``), ``/abort_request`` included.

It "generates" a scripted list of ids; the real thing is exercised by the @gpu test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

KNOWN_SAMPLING_KEYS = {
    "max_new_tokens", "stop", "stop_token_ids", "stop_regex", "temperature", "top_p", "top_k", "min_p",
    "frequency_penalty", "presence_penalty", "repetition_penalty", "min_new_tokens", "n", "json_schema", "regex",
    "ebnf", "structural_tag", "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim",
    "stream_interval", "logit_bias", "sampling_seed", "custom_params", "beam_width", "watermark", "choice",
}


class _NoTokenizer(Exception):
    pass


def _v(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.split(".post")[0].split(".")]
    return tuple([*parts, 0, 0][:3])  # type: ignore[return-value]


@dataclass
class Behaviour:
    version: str = "0.5.10"
    incremental: bool = False  # --incremental-streaming-output (0.5.10+) / --stream-output (before)
    deterministic: bool = False  # --enable-deterministic-inference
    api_key: str | None = None
    preferred_sampling_params: dict = field(default_factory=dict)
    info: str = "get_server_info"  # or "version_only" (a front end exposing /version alone) or "none"
    reported_version: str | None = None  # a build that reports another version than it behaves as
    model_path: str = "double/model"  # its --model-path (reported by /server_info and /model_info)

    @classmethod
    def for_version(cls, version: str, **kw) -> Behaviour:
        return cls(version=version, **kw)

    @property
    def v(self) -> tuple[int, int, int]:
        return _v(self.version)

    @property
    def has_output_ids(self) -> bool:
        return self.v >= (0, 5, 1)

    @property
    def leaks_prompt_ids(self) -> bool:
        return (0, 5, 1) <= self.v <= (0, 5, 4)

    @property
    def delta_ids(self) -> bool:
        """Streamed ids are deltas (whatever the text is)."""
        if (0, 5, 1) <= self.v <= (0, 5, 5):
            return True
        return self.incremental

    @property
    def keeps_last_chunk_only(self) -> bool:
        """Queued chunks are not merged: only the last one is sent (ids lost when they are deltas)."""
        return self.v < (0, 5, 10)

    @property
    def delta_text(self) -> bool:
        return self.incremental and self.v >= (0, 5, 10)

    @property
    def seed_type_error(self) -> bool:
        return self.v <= (0, 5, 2)

    @property
    def strict_keys(self) -> bool:
        return self.v >= (0, 5, 23)

    def server_info(self) -> dict:
        info = {"version": self.reported_version or self.version, "model_path": self.model_path,
                "enable_deterministic_inference": self.deterministic, "api_key": self.api_key,
                "skip_tokenizer_init": False,
                "preferred_sampling_params": json.dumps(self.preferred_sampling_params)
                if self.preferred_sampling_params and self.v < (0, 5, 10) else (self.preferred_sampling_params or None)}
        if _v(self.reported_version or self.version) >= (0, 5, 10):
            info["incremental_streaming_output"] = self.incremental
        else:
            info["stream_output"] = self.incremental
        return info


def reference_logprobs(vocab: int) -> Callable[[list[int]], list[float]]:
    """A deterministic toy reference model: log-softmax over ``vocab`` ids, a function of the prefix."""

    def logprobs(prefix: list[int]) -> list[float]:
        seed = (sum((i + 1) * (t + 3) for i, t in enumerate(prefix[-4:])) + len(prefix)) % 9973
        logits = [3.0 * math.sin(seed * 0.37 + 1.7 * v) + 0.05 * ((v * 7 + seed) % 11) for v in range(vocab)]
        m = max(logits)
        z = m + math.log(sum(math.exp(x - m) for x in logits))
        return [x - z for x in logits]

    return logprobs


def build_app(script: list[int], *, eos_id: int, behaviour: Behaviour | None = None, pieces=None,
              error_after: int | None = None, abort_after: int | None = None, delay: float = 0.0,
              burst: int = 1, starting: int = 0, reference: Callable[[list[int]], list[float]] | None = None,
              vocab_size: int | None = None, incremental: bool | None = None, abort_status: int = 200,
              token_texts: Callable[[int], str] | None = None) -> FastAPI:
    """``burst``: tokens generated before the reader wakes (queued chunks). ``starting``: how many
    /health and /generate calls answer 503 first. ``reference``/``vocab_size``: the scoring model.
    ``token_texts``: its tokenizer's text of one id (``return_text_in_logprobs``; None: a server
    started with ``--skip-tokenizer-init``, which fails such a request)."""
    b = behaviour or Behaviour()
    if incremental is not None:
        b.incremental = incremental
    app = FastAPI()
    app.state.requests = []
    app.state.aborted = []
    app.state.info_calls = []
    app.state.starting = starting

    def authorized(req: Request) -> bool:
        return b.api_key is None or req.headers.get("authorization") == f"Bearer {b.api_key}"

    unauthorized = JSONResponse({"error": "Unauthorized"}, status_code=401)

    @app.get("/health")
    async def health():
        if app.state.starting > 0:
            app.state.starting -= 1
            return Response(status_code=503)
        return Response(status_code=200)

    async def info(req: Request, path: str):
        app.state.info_calls.append(path)
        if not authorized(req):
            return unauthorized
        if b.info != "get_server_info" or (path == "/server_info" and _v(b.server_info()["version"]) < (0, 5, 10)):
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return b.server_info()

    @app.get("/server_info")
    async def server_info(req: Request):
        return await info(req, "/server_info")

    @app.get("/get_server_info")
    async def get_server_info(req: Request):
        return await info(req, "/get_server_info")

    @app.get("/version")
    async def version(req: Request):
        app.state.info_calls.append("/version")
        if not authorized(req):
            return unauthorized
        if b.info != "version_only":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return {"version": b.reported_version or b.version}

    async def model_info(req: Request):
        if not authorized(req):
            return unauthorized
        return {"model_path": b.model_path, "tokenizer_path": b.model_path, "is_generation": True,
                "preferred_sampling_params": json.dumps(b.preferred_sampling_params)
                if b.preferred_sampling_params else None, "weight_version": "default"}

    @app.get("/model_info")
    async def model_info_route(req: Request):
        return await model_info(req)

    @app.get("/get_model_info")
    async def get_model_info(req: Request):
        return await model_info(req)

    @app.post("/abort_request")
    async def abort(req: Request):
        if not authorized(req):
            return unauthorized
        body = await req.json()
        app.state.aborted.append(body.get("rid"))
        return Response(status_code=abort_status)

    @app.post("/generate")
    async def generate(req: Request):
        if not authorized(req):
            return unauthorized
        if app.state.starting > 0:
            app.state.starting -= 1
            return JSONResponse({"error": {"message": "server is starting"}}, status_code=503)
        body = await req.json()
        app.state.requests.append(body)
        if "input_ids" not in body and "text" not in body:
            return JSONResponse({"error": {"message": "text or input_ids required"}}, status_code=400)
        sp = dict(b.preferred_sampling_params) | (body.get("sampling_params") or {})
        if b.strict_keys:
            unknown = sorted(set(body.get("sampling_params") or {}) - KNOWN_SAMPLING_KEYS)
            if unknown:
                return JSONResponse({"error": f"unknown field `{unknown[0]}`"}, status_code=400)
        if not body.get("stream"):
            return score(body, sp)
        max_new = int(sp.get("max_new_tokens", 128))
        stop_ids = set(sp.get("stop_token_ids") or []) | {eos_id}
        rid = body.get("rid") or "rid-0"
        prompt = list(body.get("input_ids") or [])
        seed_error = b.seed_type_error and "sampling_seed" in sp
        with_logprobs = bool(body.get("return_logprob")) and reference is not None
        top_k = int(body.get("top_logprobs_num") or 0)
        token_lps: list[list] = []  # sglang's state: grows with every id, sent whole in every chunk
        top_lps: list[list] = []

        def logprob_meta(out: list[int]) -> dict:
            while len(token_lps) < len(out):
                pos = len(token_lps)
                lps = reference(prompt + out[:pos])
                token_lps.append([lps[out[pos]], out[pos], None])
                order = sorted(range(len(lps)), key=lambda v: -lps[v])[:top_k]
                top_lps.append([[lps[v], v, None] for v in order])
            meta = {"input_token_logprobs": [], "output_token_logprobs": list(token_lps),
                    "output_token_logprobs_length": len(token_lps)}
            if top_k > 0:
                meta |= {"input_top_logprobs": [], "output_top_logprobs": list(top_lps)}
            return meta

        def chunk(out: list[int], sent: int, text: str, text_sent: int, finish, first: bool) -> dict:
            meta = {"id": rid, "finish_reason": finish, "prompt_tokens": len(prompt),
                    "completion_tokens": len(out), "cached_tokens": 0}
            if with_logprobs:
                meta |= logprob_meta(out)
            ev: dict = {"text": text[text_sent:] if b.delta_text else text, "meta_info": meta}
            if b.has_output_ids:
                ids = out[sent:] if b.delta_ids else list(out)
                if first and b.leaks_prompt_ids:
                    ids = prompt[-5:] + ids
                ev["output_ids"] = ids
            return ev

        async def events():
            if seed_error:  # TypeError inside the tokenizer manager after the 200: the stream just stops
                return
            out: list[int] = []
            text = ""
            sent = text_sent = 0
            queued: list[dict] = []
            first = True
            for i, tok in enumerate(script):
                if error_after is not None and i == error_after:
                    yield b"data: " + json.dumps({"error": {"message": "CUDA out of memory"}}).encode() + b"\n\n"
                    yield b"data: [DONE]\n\n"
                    return
                finish = None
                if abort_after is not None and i == abort_after:
                    finish = {"type": "abort", "message": "Abort before prefill", "status_code": 400}
                else:
                    out.append(tok)
                    text += pieces(tok) if pieces else ""
                    if tok in stop_ids:
                        finish = {"type": "stop", "matched": tok}
                    elif len(out) >= max_new:
                        finish = {"type": "length", "length": max_new}
                queued.append(chunk(out, sent, text, text_sent, finish, first))
                first = False
                sent, text_sent = len(out), len(text)
                if len(queued) >= burst or finish:
                    if b.keeps_last_chunk_only or not b.delta_ids:
                        ev = queued[-1]
                    else:  # 0.5.10+ incremental: queued deltas merged
                        ev = dict(queued[-1])
                        ev["output_ids"] = [t for q in queued for t in q["output_ids"]]
                        ev["text"] = "".join(q["text"] for q in queued)
                    queued = []
                    yield b"data: " + json.dumps(ev).encode() + b"\n\n"
                    if delay:
                        await asyncio.sleep(delay)
                if finish:
                    break
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def score(body: dict, sp: dict):
        """Non-streaming prefill with logprobs, in sglang 0.5.23's shape."""
        ids = [int(i) for i in body["input_ids"]]
        if not body.get("return_logprob") or int(sp.get("max_new_tokens", 128)) != 0 or reference is None:
            return JSONResponse({"error": {"message": "the double only answers scoring prefills"}}, status_code=400)
        start = int(body.get("logprob_start_len", 0))
        k = int(body.get("top_logprobs_num") or 0)
        vs = vocab_size or len(reference([0]))

        def clip(t: int) -> int:  # sglang: ids >= vocab_size - 1 come back as 0
            return t if t < vs - 1 else 0

        def text(t: int) -> str | None:  # return_text_in_logprobs: the tokenizer's decode of t alone
            if not body.get("return_text_in_logprobs"):
                return None
            if token_texts is None:  # --skip-tokenizer-init: sglang has no tokenizer to decode with
                raise _NoTokenizer
            return token_texts(t)

        try:
            tokens = [[None, clip(ids[start]), text(clip(ids[start]))]]
            tops: list = [None]
            for pos in range(start + 1, len(ids)):
                lps = reference(ids[:pos])
                tokens.append([float(lps[ids[pos]]), clip(ids[pos]), text(clip(ids[pos]))])
                # most likely first, ties by id (a stable sort): numpy, so a real-sized vocabulary is quick
                order = np.argsort(-np.asarray(lps, dtype=float), kind="stable")[:k] if k else []
                tops.append([[float(lps[v]), int(v), text(int(v))] for v in order])
        except _NoTokenizer:  # sglang's `assert self.tokenizer is not None`
            return JSONResponse({"error": {"message": "AssertionError"}}, status_code=500)
        meta = {"id": body.get("rid") or "score-0", "finish_reason": {"type": "length", "length": 0},
                "prompt_tokens": len(ids), "completion_tokens": 0, "input_token_logprobs": tokens,
                "input_top_logprobs": tops, "output_token_logprobs": [], "output_top_logprobs": []}
        return {"text": "", "output_ids": [], "meta_info": meta}

    return app


@contextlib.asynccontextmanager
async def serve(app):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()
