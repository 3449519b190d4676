"""POST /v1/chat/completions (DESIGN 1.4)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from basis.gateway.auth import bearer_account
from basis.gateway.chat.logprobs import TokenLogprobs, chat_content
from basis.gateway.chat.schemas import ChatCompletionRequest, lone_surrogate_path
from basis.gateway.chat.service import JobRun, plan_request
from basis.gateway.chat.structured import as_tool_call, is_tool_call, tool_finish
from basis.gateway.errors import APIError
from basis.ledger.errors import IdempotentReplay

router = APIRouter(tags=["chat"])
MAX_IDEMPOTENCY_KEY = 255


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


async def _parse(request: Request) -> tuple[ChatCompletionRequest, dict[str, Any]]:
    limit = request.app.state.runtime.options.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(400, f"The request body is larger than {limit} bytes.", code="request_too_large")
    raw = await request.body()
    if len(raw) > limit:
        raise APIError(400, f"The request body is larger than {limit} bytes.", code="request_too_large")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, "We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    where = lone_surrogate_path(body)
    if where is not None:
        raise APIError(400, f"Invalid value for '{where}': the string holds a lone UTF-16 surrogate, which is not "
                       "valid Unicode.", param=where, code="invalid_value")
    try:
        return ChatCompletionRequest.model_validate(body), body
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err.get("loc", ())) or None
        raise APIError(400, f"Invalid value for '{param}': {err.get('msg')}", param=param,
                       code="invalid_value") from None


def _usage(prompt_tokens: int, output_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": output_tokens,
            "total_tokens": prompt_tokens + output_tokens}


def _logprobs(plan: Any, tokens: list[TokenLogprobs] | None) -> dict[str, Any] | None:
    """A choice's ``logprobs`` (OpenAI's shape); None when the request did not ask, or for a
    replayed job (its logprobs are not recorded)."""
    if plan is None or not plan.logprobs or tokens is None:
        return None
    return {"content": chat_content(plan.binding, tokens), "refusal": None}


def _completion(cid: str, created: int, model: str, text: str, finish_reason: str | None,
                usage: dict[str, int], receipt: dict[str, Any] | None, plan: Any = None,
                logprobs: list[TokenLogprobs] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if is_tool_call(plan):  # a forced tool call: the output is the call (OpenAI's shape)
        calls = plan.constraint.tool_calls(text, cid.removeprefix("chatcmpl-"))
        message = {**message, "content": None, "tool_calls": [{k: v for k, v in c.items() if k != "index"}
                                                              for c in calls]}
        finish_reason = tool_finish(finish_reason)
    body: dict[str, Any] = {
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": _logprobs(plan, logprobs),
                     "finish_reason": finish_reason}],
        "usage": usage, "system_fingerprint": None,
    }
    if receipt is not None:
        job_id = cid.removeprefix("chatcmpl-")
        body["receipt"] = {"hash": receipt["hash"], "url": f"/v1/receipts/{job_id}"}
    return body


def _chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None = None,
           logprobs: dict[str, Any] | None = None) -> str:
    return "data: " + _dumps({
        "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
    }) + "\n\n"


def _usage_chunk(cid: str, created: int, model: str, usage: dict[str, int]) -> str:
    return "data: " + _dumps({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                              "system_fingerprint": None, "choices": [], "usage": usage}) + "\n\n"


DISCONNECT_POLL_S = 0.5


async def _until_done_or_gone(request: Request, run: JobRun) -> None:
    """A non-streamed job runs to its end, unless its caller goes away first (an SDK timeout):
    then it is cancelled at once, charging what was accepted (DESIGN 1.3), so a caller's
    timeout-and-retry does not hold a reservation per attempt."""
    assert run.task is not None
    while not run.task.done():
        await asyncio.wait({run.task}, timeout=DISCONNECT_POLL_S)
        if not run.task.done() and await request.is_disconnected():
            run.client_gone()
            return


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def idempotency_key(request: Request) -> str | None:
    """The request's Idempotency-Key header (DESIGN 1.4), checked for length."""
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY):
        raise APIError(400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters.",
                       param="Idempotency-Key", code="invalid_value")
    return key


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, account_id: UUID = Depends(bearer_account)) -> Response:
    runtime = request.app.state.runtime
    req, body = await _parse(request)
    key = idempotency_key(request)
    plan = await plan_request(runtime, req, body, key)
    run = JobRun(runtime, plan, account_id, getattr(request.state, "api_key", None))
    run.begin()
    try:
        await run.accepted()
    except IdempotentReplay as replay:
        return _replay(runtime, replay.job_id, plan)
    headers = {"basis-job-id": str(plan.job_id)}
    if plan.stream:
        first = await run.events.get()
        if first[0] == "error":
            return first[1].response(headers)
        return StreamingResponse(_live_stream(run, first), media_type="text/event-stream",
                                 headers={**SSE_HEADERS, **headers})
    await _until_done_or_gone(request, run)
    receipt = await run.wait_receipt()
    events = []
    while not run.events.empty():
        events.append(run.events.get_nowait())
    for kind, value in events:
        if kind == "error":
            return value.response(headers)  # the job exists: its id lets the caller look it up
    finish = next((v for k, v in events if k == "end"), None)
    usage = _usage(len(plan.prompt_ids), run.output_tokens)
    out = _completion(run.completion_id, plan.created, plan.model, "".join(run.text_parts), finish, usage, receipt,
                      plan, run.token_logprobs)
    if receipt is not None:
        headers["basis-receipt-hash"] = receipt["hash"]
    return JSONResponse(out, headers=headers)


async def _sse(cid: str, created: int, model: str, events: AsyncGenerator[tuple[str, Any], None],
               usage: Callable[[], dict[str, int]] | None, plan: Any = None) -> AsyncIterator[str]:
    """The chunks of one streamed completion from its events; ``usage`` (called at the end) when
    the request asked for it. Each chunk carries the logprobs of the tokens whose text it holds
    (text a stop sequence may still claim is held back with its tokens' logprobs)."""
    pending: list[TokenLogprobs] = []

    def logprobs() -> dict[str, Any] | None:
        out = _logprobs(plan, pending) if pending else None
        pending.clear()
        return out

    try:
        yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
        async for kind, value in events:
            if kind == "logprobs":
                pending.extend(value)
            elif kind == "delta":
                yield _chunk(cid, created, model, {"content": value}, logprobs=logprobs())
            elif kind == "tool_calls":
                yield _chunk(cid, created, model, {"tool_calls": value}, logprobs=logprobs())
            elif kind == "end":
                if pending:  # tokens whose text never showed (a stop sequence's)
                    yield _chunk(cid, created, model, {"content": ""}, logprobs=logprobs())
                yield _chunk(cid, created, model, {}, value)
                if usage is not None:
                    yield _usage_chunk(cid, created, model, usage())
                yield "data: [DONE]\n\n"
                return
            else:  # a failure after streaming began (DESIGN 1.4)
                yield "data: " + _dumps(value.body()) + "\n\n"
                return
    finally:
        await events.aclose()  # now, not at garbage collection: a live job learns the client left


async def _live_events(run: JobRun, first: tuple[str, Any]) -> AsyncGenerator[tuple[str, Any], None]:
    try:
        event = first
        while True:
            yield event
            event = await run.events.get()
    finally:
        run.client_gone()  # the response is over, or the client went away


def _live_stream(run: JobRun, first: tuple[str, Any]) -> AsyncIterator[str]:
    p = run.plan
    usage = (lambda: _usage(len(p.prompt_ids), run.output_tokens)) if p.include_usage else None
    events = _live_events(run, first)
    if is_tool_call(p):
        events = as_tool_call(p, events, lambda: "".join(run.text_parts), str(p.job_id))
    return _sse(run.completion_id, p.created, p.model, events, usage, p)


def _replay(runtime: Any, job_id: str, plan: Any) -> Response:
    """An idempotent repeat: the same completion, from the recorded job (never a second charge)."""
    job = runtime.ledger.get(UUID(job_id))
    core = job.receipt["core"]
    cid, created, model = f"chatcmpl-{job_id}", job.created, job.model
    text = job.output_text or ""
    usage = _usage(core["prompt_tokens"], core["output_tokens"])
    headers = {"basis-job-id": job_id, "basis-receipt-hash": job.receipt["hash"], "basis-idempotent-replay": "true"}
    if not plan.stream:
        return JSONResponse(_completion(cid, created, model, text, job.finish_reason, usage, job.receipt, plan),
                            headers=headers)

    async def recorded() -> AsyncGenerator[tuple[str, Any], None]:
        if text:
            yield "delta", text
        yield "end", job.finish_reason

    events = recorded()
    if is_tool_call(plan):
        events = as_tool_call(plan, events, lambda: text, job_id)
    stream = _sse(cid, created, model, events, (lambda: usage) if plan.include_usage else None)
    return StreamingResponse(stream, media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
