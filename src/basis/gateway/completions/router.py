"""POST /v1/completions: OpenAI's ``text_completion`` shapes, streamed (SSE) or not."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from basis.gateway.auth import bearer_account
from basis.gateway.chat.logprobs import completion_logprobs
from basis.gateway.chat.router import SSE_HEADERS, idempotency_key
from basis.gateway.completions import service
from basis.gateway.completions.schemas import CompletionRequest
from basis.gateway.errors import APIError

router = APIRouter(tags=["completions"])
log = logging.getLogger("basis.gateway.completions")
PROMPT_SHAPES = "a string, an array of strings, an array of token ids, or an array of token id arrays"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


async def _parse(request: Request) -> tuple[CompletionRequest, dict[str, Any]]:
    limit = request.app.state.runtime.options.max_body_bytes
    declared = request.headers.get("content-length")
    too_large = APIError(400, f"The request body is larger than {limit} bytes.", code="request_too_large")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    raw = await request.body()
    if len(raw) > limit:
        raise too_large
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, "We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        return CompletionRequest.model_validate(body), body
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] == "prompt":  # a union's errors name its branches: say what is accepted
            reason = err.get("msg", "") if err.get("type") == "value_error" else f"expected {PROMPT_SHAPES}"
            raise APIError(400, f"Invalid value for 'prompt': {reason}", param="prompt", code="invalid_value") from None
        param = ".".join(loc) or None
        raise APIError(400, f"Invalid value for '{param}': {err.get('msg')}", param=param,
                       code="invalid_value") from None


def _receipt_ref(job_id: str, receipt: dict[str, Any] | None) -> dict[str, Any] | None:
    return {"hash": receipt["hash"], "url": f"/v1/receipts/{job_id}"} if receipt is not None else None


def _chunk(cid: str, created: int, model: str, index: int, text: str, finish_reason: str | None,
           logprobs: dict[str, Any] | None = None) -> str:
    return "data: " + _dumps({
        "id": cid, "object": "text_completion", "created": created, "model": model, "system_fingerprint": None,
        "choices": [{"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}],
    }) + "\n\n"


@router.post("/v1/completions")
async def completions(request: Request, account_id: UUID = Depends(bearer_account)) -> Response:
    runtime = request.app.state.runtime
    req, body = await _parse(request)
    key = idempotency_key(request)
    choices = await service.plan_completions(runtime, req, body, key)
    await service.start(runtime, choices, account_id, getattr(request.state, "api_key", None))
    first = choices[0]
    cid, created, model = f"cmpl-{first.job_id}", first.plan.created, req.model
    headers = {"basis-job-id": ",".join(c.job_id for c in choices)}
    if all(c.recorded is not None for c in choices):
        headers["basis-idempotent-replay"] = "true"
        created = first.recorded.created
    if req.stream:
        firsts = await asyncio.gather(*(service.first_event(c) for c in choices))
        failed = next((ev[1] for ev in firsts if ev is not None and ev[0] == "error"), None)
        if failed is not None:
            service.cancel(choices)
            return failed.response()
        stream = _sse(cid, created, model, choices, firsts, bool(req.stream_options and
                                                                 req.stream_options.include_usage))
        return StreamingResponse(stream, media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
    results = await asyncio.gather(*(service.result(c) for c in choices))
    failed = next((r for r in results if isinstance(r, APIError)), None)
    if failed is not None:
        return failed.response()
    out: dict[str, Any] = {
        "id": cid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"text": r.text, "index": c.index, "logprobs": r.logprobs, "finish_reason": r.finish_reason,
                     "receipt": _receipt_ref(c.job_id, r.receipt)} for c, r in zip(choices, results, strict=True)],
        "usage": service.usage(choices), "system_fingerprint": None,
    }
    if len(choices) == 1 and results[0].receipt is not None:  # as on chat: the one job's receipt
        out["receipt"] = _receipt_ref(first.job_id, results[0].receipt)
        headers["basis-receipt-hash"] = results[0].receipt["hash"]
    return JSONResponse(out, headers=headers)


async def _sse(cid: str, created: int, model: str, choices: list[service.Choice],
               firsts: list[tuple[str, Any] | None], include_usage: bool) -> AsyncIterator[str]:
    """Every job's events merged as they come, each chunk naming its choice index; one
    ``[DONE]`` after the last job ended (a usage chunk before it when asked)."""
    queue: asyncio.Queue[tuple[int, str, Any]] = asyncio.Queue()

    async def pump(choice: service.Choice, first: tuple[str, Any] | None) -> None:
        try:
            async for kind, value in service.events(choice, first):
                queue.put_nowait((choice.index, kind, value))
        except Exception:  # never leave the stream waiting on a job that can no longer report
            log.exception("relaying completion job %s failed", choice.job_id)
            queue.put_nowait((choice.index, "error", APIError(
                500, "The server had an error while processing your request.", code="internal_error",
                type_="server_error")))

    pumps = [asyncio.create_task(pump(c, f)) for c, f in zip(choices, firsts, strict=True)]
    open_jobs = len(choices)
    # per choice: logprobs of tokens whose text is not sent yet, and the text offset reached
    pending: dict[int, list[Any]] = {c.index: [] for c in choices}
    offset: dict[int, int] = {c.index: 0 for c in choices}

    def logprobs(index: int) -> dict[str, Any] | None:
        if not pending[index]:
            return None
        out, offset[index] = completion_logprobs(choices[0].plan.binding, pending[index], offset[index])
        pending[index].clear()
        return out

    try:
        while open_jobs:
            index, kind, value = await queue.get()
            if kind == "logprobs":
                pending[index].extend(value)
            elif kind == "delta":
                yield _chunk(cid, created, model, index, value, None, logprobs(index))
            elif kind == "end":
                if pending[index]:  # tokens whose text never showed (a stop sequence's)
                    yield _chunk(cid, created, model, index, "", None, logprobs(index))
                yield _chunk(cid, created, model, index, "", value)
                open_jobs -= 1
            else:  # a failure after streaming began (DESIGN 1.4): the other jobs are stopped
                yield "data: " + _dumps(value.body()) + "\n\n"
                return
        if include_usage:
            yield "data: " + _dumps({"id": cid, "object": "text_completion", "created": created, "model": model,
                                     "system_fingerprint": None, "choices": [],
                                     "usage": service.usage(choices)}) + "\n\n"
        yield "data: [DONE]\n\n"
    finally:
        for t in pumps:
            t.cancel()
        service.cancel(choices)  # the response is over, or the client went away
