"""One chat completion = one job: count, reserve, route, relay, meter, receipt.

The job runs in its own task, apart from the HTTP response, so a client that goes away
cannot interrupt the bookkeeping: the runner notices, stops the worker, and ends the job as
``cancelled``, charging the tokens accepted until then (DESIGN 1.3).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from basis.engines.base import EngineError, GenerateRequest, supports_logprobs
from basis.gateway.chat.deadlines import DeadlineMissed, within_deadlines
from basis.gateway.chat.job_end import check_input, record_job_end
from basis.gateway.chat.logprobs import BadLogprobs, TokenLogprobs, checked
from basis.gateway.chat.planning import (  # re-exported: completions plan with these too
    INLINE_TOKENIZE_CHARS,
    Plan,
    plan_request,
    request_hash,
    supported_model,
)
from basis.gateway.chat.stops import StopScanner
from basis.gateway.chat.structured import engine_can_serve
from basis.gateway.errors import APIError
from basis.gateway.workers import NoWorkerAvailable, WorkerFailedBeforeFirstToken, WorkerJobError
from basis.ledger.errors import (
    IdempotencyConflict,
    IdempotentReplay,
    InsufficientCredit,
    KeyCapReached,
    KeyRevoked,
    LedgerUnavailable,
)
from basis.ledger.keys import KeyEntry
from basis.models import InvalidOutputToken, TextMismatch, UTF8Matcher
from basis.observability import metrics
from basis.observability.logging import job_context
from basis.protocol import Job as JobMessage
from basis.protocol import Tokens

log = logging.getLogger("basis.gateway.chat")
_tasks: set[asyncio.Task[Any]] = set()  # keep runner tasks alive until they finish


class JobFailed(Exception):
    """The serving side broke the job after it began (worker died, ids/text disagree)."""


class OutputBreaksSchema(Exception):
    """The output the serving side finished breaks the job's schema (structured output, tool call)."""


class _NotAccepted(Exception):
    """The reservation was refused: there is no job to run or to record."""


@dataclass
class Outcome:
    outcome: str
    output_tokens: int
    finish_reason: str | None
    reason: str | None = None
    worker_usage: dict[str, int] | None = None


class JobRun:
    """Events for the response: ("delta", text) ... then ("end", finish_reason) or ("error", APIError).
    A job with logprobs also sends ("logprobs", [TokenLogprobs]) before the text of those tokens."""

    def __init__(self, runtime: Any, plan: Plan, account_id: uuid.UUID, key: KeyEntry | None = None) -> None:
        self.runtime = runtime
        self.plan = plan
        self.account_id = account_id
        self.key = key  # the API key it came with (None: a caller outside HTTP)
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.output_tokens = 0
        self.output_ids: list[int] = []  # as relayed; the first output_tokens of them were accepted
        self.task: asyncio.Task[None] | None = None
        self.text_parts: list[str] = []
        self.token_logprobs: list[TokenLogprobs] = []  # of the counted tokens, when the plan asks
        self.served_by = "gateway"
        self.finished = False

    @property
    def completion_id(self) -> str:
        return f"chatcmpl-{self.plan.job_id}"

    def begin(self) -> None:
        """Reserve and dispatch at once: the reservation commits while the job travels to its
        worker (one WebSocket round trip), instead of before it. Nothing is relayed and no
        assignment is recorded until the reservation is durable; a refused one cancels the
        dispatch. ``accepted()`` tells the response whether the job exists."""
        p, runtime = self.plan, self.runtime
        # Route first, so the first assignment commits with the acceptance (one transaction).
        self._gateway_can_serve = (runtime.engine is not None and p.model in runtime.engine_models
                                   and engine_can_serve(runtime.engine, p.constraint)
                                   and (not p.logprobs or supports_logprobs(runtime.engine)))
        assignment: tuple[str, str | None] | None = None
        try:
            self._first_worker = runtime.hub.pick(p.model, requires=p.requires)
            assignment = ("contributor", self._first_worker.address)
        except NoWorkerAvailable:
            self._first_worker = None
            if self._gateway_can_serve:
                assignment = ("gateway", None)
        self._assigned_gateway = assignment == ("gateway", None)
        self._serving = assignment  # the job's last recorded assignment: its end names it
        loop = asyncio.get_running_loop()
        self._accepted: asyncio.Future[int] = loop.create_future()
        runtime.job_writer.submit_async("accept_job", {
            "job_id": p.job_id, "account_id": self.account_id, "model": p.model, "prompt_tokens": len(p.prompt_ids),
            "max_output_tokens": p.max_tokens, "idempotency_key": p.idempotency_key,
            "request_hash": p.request_hash, "stream": p.stream, "created": p.created, "assignment": assignment,
            "key_id": self.key.key_id if self.key is not None else None},
            self._accepted)
        with job_context(self.plan.job_id):  # the task copies this context: its log lines name the job
            self.task = loop.create_task(self._run(), name=f"job-{self.plan.job_id}")
        _tasks.add(self.task)
        self.task.add_done_callback(_tasks.discard)
        if self.key is not None and self.key.tokens_per_minute is not None:
            self.task.add_done_callback(self._count_key_tokens)

    def _count_key_tokens(self, _task: Any) -> None:
        """The key's tokens per minute count a job's prompt and output once it ends (if accepted)."""
        if self._accepted.done() and not self._accepted.cancelled() and self._accepted.exception() is None:
            self.runtime.key_limiter.spend_tokens(self.key, len(self.plan.prompt_ids) + self.output_tokens)

    async def accepted(self) -> None:
        """Wait for the reservation. Raises the APIError to answer with (402, 409), or
        IdempotentReplay for the router to answer from the recorded job."""
        try:
            await asyncio.shield(self._accepted)
        except InsufficientCredit as exc:
            raise APIError(402, f"Insufficient credit: {exc}.", code="insufficient_credit", retry=False) from None
        except KeyCapReached as exc:
            raise APIError(402, f"This API key's spend cap is reached: {exc}.", code="key_spend_cap_reached",
                           retry=False) from None
        except KeyRevoked:
            raise APIError(401, "This API key was revoked.", code="invalid_api_key", retry=False) from None
        except IdempotencyConflict as exc:
            raise APIError(409, f"Idempotency-Key conflict: {exc}.", code="idempotency_conflict",
                           param="Idempotency-Key", retry=False) from None
        except LedgerUnavailable:
            raise APIError(503, "The ledger was briefly unavailable; nothing was charged. Retry the request.",
                           code="ledger_unavailable", type_="server_error", retry=True) from None

    async def _reserved(self) -> None:
        """In the job task: go on only once the reservation is durable."""
        try:
            await asyncio.shield(self._accepted)
        except Exception:
            raise _NotAccepted from None

    def client_gone(self) -> None:
        if self.task is not None and not self.task.done() and not self.finished:
            self.task.cancel()

    # -- the job ---------------------------------------------------------------------------
    async def _assign(self, served_by: str, worker: str | None) -> None:
        """Record a new attempt, durably, before anything it serves is relayed: the receipt pays
        the last recorded attempt, and the job's end must name it (the ledger refuses otherwise)."""
        self.served_by = served_by
        # The writer runs a job's commands in order: once sent, the assignment precedes the end
        # even if this task is cancelled while it commits.
        previous, self._serving = self._serving, (served_by, worker)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.runtime.job_writer.submit_async("assign_job", {"job_id": self.plan.job_id, "served_by": served_by,
                                                            "worker": worker}, waiter)
        try:
            await asyncio.shield(waiter)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._serving = previous  # refused: the last recorded attempt is still the previous one
            raise

    async def _source(self) -> AsyncIterator[tuple[list[int], str, str | None, dict[str, int] | None, Any]]:
        """(ids, text, finish_reason, usage, logprobs) from a contributor, else the gateway's own engine.
        A worker that fails before its first token is replaced: still one job."""
        p, hub = self.plan, self.runtime.hub
        tried: set[str] = set()
        busy = False
        while True:
            msg = JobMessage(job_id=str(p.job_id), model=p.model, prompt_ids=p.prompt_ids, max_tokens=p.max_tokens,
                             temperature=p.temperature, top_p=p.top_p, seed=p.seed, stop=p.stops,
                             json_schema=p.json_schema, logprobs=p.logprobs, top_logprobs=p.top_logprobs)
            via, self._first_worker = self._first_worker, None
            try:
                # Busy workers are waited for only when the gateway has no engine of its own to fall back on.
                async with hub.dispatch(msg, exclude=tried, via=via, wait=not self._gateway_can_serve) as stream:
                    sent_at = asyncio.get_running_loop().time()  # the deadlines run from here
                    await self._reserved()
                    if via is None or stream.worker_address != via.address:  # a retry: a new assignment
                        await self._assign("contributor", stream.worker_address)
                    self.served_by = "contributor"
                    limits = self.runtime.options.deadlines.for_job(len(p.prompt_ids), p.max_tokens)
                    try:
                        async with contextlib.aclosing(within_deadlines(stream, limits, started=sent_at)) as frames:
                            async for frame in frames:
                                if isinstance(frame, Tokens):
                                    yield frame.ids, frame.text, None, None, frame.logprobs
                                else:
                                    yield [], frame.text, frame.finish_reason, frame.usage.model_dump(), None
                    except DeadlineMissed as exc:  # leaving the dispatch sends the worker `cancel`
                        self._deadline_missed(stream.worker_address, exc)
                        raise
                    return
            except NoWorkerAvailable as exc:
                await self._reserved()
                busy = exc.busy
                break
            except WorkerFailedBeforeFirstToken as exc:
                log.warning("worker %s failed before its first token; retrying elsewhere", exc.worker_address)
                tried.add(exc.worker_address)
        engine = self.runtime.engine
        if not self._gateway_can_serve:
            if p.logprobs and not busy:
                raise APIError(503, f"No worker serving '{p.model}' reports logprobs (worker protocol 3) right now; "
                               "try again later, or ask without logprobs.", code="no_worker_available", retry=False)
            if p.constraint is not None and not busy:
                raise APIError(503, f"No worker serving '{p.model}' supports structured output or tool calls "
                               "(constrained decoding) right now; try again later.", code="no_worker_available",
                               retry=False)
            if busy:
                raise APIError(503, f"Every worker serving '{p.model}' is busy; retry shortly.",
                               code="workers_busy", retry=True)
            raise APIError(503, f"No worker is serving '{p.model}' right now; try again later.",
                           code="no_worker_available", retry=False)
        if not self._assigned_gateway:
            await self._assign("gateway", None)
        self.served_by = "gateway"
        req = GenerateRequest(prompt_ids=p.prompt_ids, max_tokens=p.max_tokens, temperature=p.temperature,
                              top_p=p.top_p, seed=p.seed, model=p.model, request_id=str(p.job_id),
                              json_schema=p.json_schema, logprobs=p.logprobs, top_logprobs=p.top_logprobs)
        gen = engine.generate(req)
        try:
            async for step in gen:
                usage = None
                if step.final:
                    usage = {"prompt_tokens": step.prompt_tokens or 0,
                             "completion_tokens": step.completion_tokens or 0}
                yield step.ids, step.text, step.finish_reason, usage, step.logprobs
        finally:
            await gen.aclose()

    def _deadline_missed(self, worker: str, exc: DeadlineMissed) -> None:
        """On the worker's record: a per-address count (hub.workers()), Prometheus, the log."""
        misses = self.runtime.hub.record_deadline_miss(worker)
        metrics.DEADLINE_MISSES.labels(worker.lower(), self.plan.model, exc.kind).inc()
        log.warning("worker %s missed a job deadline: %s", worker, exc,
                    extra={"worker": worker, "deadline": exc.kind, "worker_deadline_misses": misses})
        exc.worker = worker

    async def _run(self) -> None:
        p = self.plan
        matcher, decoder = UTF8Matcher(), codecs.getincrementaldecoder("utf-8")(errors="replace")
        stopper = StopScanner(p.stops)
        counted = 0
        started = time.perf_counter()
        refused = False  # the reservation was refused: no job exists to record
        result = Outcome("failed", 0, None)
        error: APIError | None = None
        source = self._source()
        try:
            async for ids, text, finish_reason, usage, reported in source:
                if finish_reason is not None:
                    matcher.finish(text)
                    tail, _ = stopper.push(decoder.decode(b"", final=True))
                    self._emit(tail + stopper.flush())
                    result = Outcome("completed", matcher.accepted, finish_reason, worker_usage=usage)
                    if p.constraint is not None and finish_reason == "stop":  # "length": cut short by the client
                        problem = p.constraint.problem("".join(self.text_parts))
                        if problem:
                            raise OutputBreaksSchema(problem)
                    break
                if counted + len(ids) > p.max_tokens:
                    raise JobFailed("the worker relayed more tokens than the job allows")
                # out-of-vocabulary, end-of-sequence and other control ids (padding) fail the job
                pieces = p.binding.output_pieces(ids)
                matcher.feed(pieces, text)
                logprobs = checked(p.binding, ids, reported, p.top_logprobs) if p.logprobs and ids else None
                self.output_ids.extend(ids)
                if counted == 0 and ids:
                    metrics.TTFT.labels(p.model).observe(time.perf_counter() - started)
                hit, before, out = False, counted, []
                for piece in pieces:
                    counted += 1
                    emit, hit = stopper.push(decoder.decode(piece))
                    out.append(emit)
                    if hit:
                        break
                if logprobs:  # the counted tokens' logprobs, before their text
                    self.token_logprobs.extend(logprobs[: counted - before])
                    self.events.put_nowait(("logprobs", logprobs[: counted - before]))
                self._emit("".join(out))
                self.output_tokens = matcher.accepted
                if hit:  # the token completing a stop sequence counts; its text is not emitted
                    result = Outcome("completed", counted, "stop")
                    break
            else:
                result = Outcome("failed", matcher.accepted, None, reason="the stream ended without a finish")
        except _NotAccepted:
            refused = True
        except asyncio.CancelledError:
            result = Outcome("cancelled", matcher.accepted, None, reason="the client went away")
        except APIError as exc:
            result, error = Outcome("failed", 0, None, reason=exc.message), exc
        except DeadlineMissed as exc:  # the worker was told to cancel; what it sent so far is charged
            result = Outcome("failed", matcher.accepted, None, reason=f"deadline missed by {exc.worker}: {exc}")
            error = APIError(504, f"The serving worker timed out: {exc}.", code="worker_timeout",
                             type_="server_error")
        except (TextMismatch, InvalidOutputToken, JobFailed, WorkerJobError, EngineError, BadLogprobs) as exc:
            result = Outcome("failed", matcher.accepted, None, reason=str(exc))
            error = APIError(502, f"The serving worker failed mid-stream: {exc}", code="worker_failed",
                             type_="server_error")
        except OutputBreaksSchema as exc:  # the serving side broke the schema: failed, no reward (worker-protocol.md)
            result = Outcome("failed", matcher.accepted, None, reason=str(exc))
            error = APIError(502, f"The serving worker's output does not match the requested schema: {exc}.",
                             code="invalid_structured_output", type_="server_error")
        except Exception as exc:  # never lose the job's ending
            log.exception("job %s broke", p.job_id)
            result = Outcome("failed", matcher.accepted, None, reason=f"gateway error: {exc}")
            error = APIError(500, "The server had an error while processing your request.", code="internal_error",
                             type_="server_error")
        finally:
            await _close_quietly(source)
            if not refused:
                self._finish(result)
            self.finished = True
        if refused:
            return
        try:  # durable before the client hears how it ended
            await asyncio.shield(self._recorded)  # a cancelled task must not cancel the record
        except Exception:
            log.exception("recording the end of job %s failed", p.job_id)
        if error is not None:
            self.events.put_nowait(("error", error))
        elif result.outcome == "completed":
            self.events.put_nowait(("end", result.finish_reason))

    def _emit(self, text: str) -> None:
        if text:
            self.text_parts.append(text)
            self.events.put_nowait(("delta", text))

    def _finish(self, result: Outcome) -> None:
        p = self.plan
        self.output_tokens = result.output_tokens
        # Idempotent repeats replay the recorded output: keep it only when a key was given.
        text = "".join(self.text_parts) if p.idempotency_key is not None else None
        served_by, worker = self._serving or (None, None)  # None: no attempt was recorded
        end = {"job_id": p.job_id, "outcome": result.outcome, "output_tokens": result.output_tokens,
               "finish_reason": result.finish_reason, "reason": result.reason, "worker_usage": result.worker_usage,
               "output_text": text, "served_by": served_by, "worker": worker,
               "check": self._check_input(result)}
        # Retried until it lands (job_end.py); a task of its own, so a cancelled job cannot stop it.
        self._recorded: asyncio.Task[dict[str, Any] | None] = asyncio.get_running_loop().create_task(
            record_job_end(self.runtime.job_writer, end), name=f"end-{p.job_id}")
        _tasks.add(self._recorded)
        self._recorded.add_done_callback(_tasks.discard)
        log.info("job ended", extra={"model": p.model, "outcome": result.outcome, "served_by": self.served_by,
                                     "prompt_tokens": len(p.prompt_ids), "output_tokens": result.output_tokens,
                                     "finish_reason": result.finish_reason, "reason": result.reason})
        metrics.JOBS.labels(p.model, result.outcome, self.served_by).inc()
        metrics.TOKENS.labels(p.model, "prompt").inc(len(p.prompt_ids))
        metrics.TOKENS.labels(p.model, "output").inc(result.output_tokens)

    def _check_input(self, result: Outcome) -> dict[str, Any] | None:
        verification = getattr(self.runtime, "verification", None)
        if self.served_by != "contributor" or not (verification and verification.enabled):
            return None
        return check_input(self.plan, self.output_ids, self.token_logprobs, result.output_tokens)

    async def wait_receipt(self) -> dict[str, Any] | None:
        assert self.task is not None
        await asyncio.shield(self.task)
        return self._recorded.result()


async def _close_quietly(gen: Any) -> None:
    try:
        await gen.aclose()
    except Exception:
        log.debug("closing the token source failed", exc_info=True)


__all__ = ["INLINE_TOKENIZE_CHARS", "APIError", "IdempotentReplay", "JobRun", "Plan", "plan_request", "request_hash",
           "supported_model"]
