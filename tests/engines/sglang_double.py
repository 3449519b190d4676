"""A protocol double of sglang 0.5.x's native HTTP API (sglang itself needs CUDA).

It speaks the recorded shapes of ``POST /generate`` with ``stream: true`` — SSE lines
``data: {"text", "output_ids", "meta_info": {"id", "finish_reason", "prompt_tokens",
"completion_tokens", ...}}`` then ``data: [DONE]``, cumulative by default or deltas with
``incremental=True`` (``--incremental-streaming-output``), errors as
``data: {"error": {"message"}}`` — plus ``POST /abort_request {"rid"}`` and ``GET /health``.
It "generates" a scripted list of ids; the real thing is exercised by the @gpu test.
"""

from __future__ import annotations

import asyncio
import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse


def build_app(script: list[int], *, eos_id: int, incremental: bool = False, pieces=None,
              error_after: int | None = None, delay: float = 0.0) -> FastAPI:
    app = FastAPI()
    app.state.requests = []
    app.state.aborted = []

    @app.get("/health")
    async def health():
        return Response(status_code=200)

    @app.post("/abort_request")
    async def abort(req: Request):
        body = await req.json()
        app.state.aborted.append(body.get("rid"))
        return Response(status_code=200)

    @app.post("/generate")
    async def generate(req: Request):
        body = await req.json()
        app.state.requests.append(body)
        if "input_ids" not in body and "text" not in body:
            return JSONResponse({"error": {"message": "text or input_ids required"}}, status_code=400)
        sp = body.get("sampling_params") or {}
        max_new = int(sp.get("max_new_tokens", 128))
        stop_ids = set(sp.get("stop_token_ids") or []) | {eos_id}
        rid = body.get("rid") or "rid-0"
        prompt_tokens = len(body.get("input_ids") or [])

        async def events():
            out: list[int] = []
            text = ""
            finish = None
            for i, tok in enumerate(script):
                if error_after is not None and i == error_after:
                    err = {"error": {"message": "CUDA out of memory"}}
                    yield b"data: " + json.dumps(err).encode() + b"\n\n"
                    yield b"data: [DONE]\n\n"
                    return
                out.append(tok)
                delta = pieces(tok) if pieces else ""
                text += delta
                if tok in stop_ids:
                    finish = {"type": "stop", "matched": tok}
                elif len(out) >= max_new:
                    finish = {"type": "length", "length": max_new}
                meta = {"id": rid, "finish_reason": finish, "prompt_tokens": prompt_tokens,
                        "completion_tokens": len(out), "cached_tokens": 0, "weight_version": "default"}
                if incremental:
                    ev = {"text": delta, "output_ids": [tok], "meta_info": meta}
                else:
                    ev = {"text": text, "output_ids": list(out), "meta_info": meta}
                yield b"data: " + json.dumps(ev).encode() + b"\n\n"
                if delay:
                    await asyncio.sleep(delay)
                if finish:
                    break
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
