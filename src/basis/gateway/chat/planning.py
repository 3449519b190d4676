"""Planning a chat job before anything is reserved: the model, the prompt as the binding's token
ids (DESIGN 1.3), the output limit within the context, the request's identity under an
Idempotency-Key. ``service.JobRun`` runs what this plans."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import rfc8785

from basis.gateway.chat.schemas import ChatCompletionRequest
from basis.gateway.chat.structured import (
    Constraint,
    constraint_for,
    needs_history_rendering,
    render_history,
)
from basis.gateway.errors import APIError
from basis.models import ChatTemplateError, ModelBinding
from basis.protocol.messages import FEATURE_JSON_SCHEMA, FEATURE_LOGPROBS


@dataclass
class Plan:
    job_id: uuid.UUID
    model: str
    binding: ModelBinding
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stops: list[str] | None
    stream: bool
    include_usage: bool
    idempotency_key: str | None
    request_hash: str | None
    created: int = field(default_factory=lambda: int(time.time()))
    constraint: Constraint | None = None  # structured output / tool call (chat/structured.py)
    logprobs: bool = False  # report each output token's logprob (chat/logprobs.py; protocol v3 workers)
    top_logprobs: int = 0

    @property
    def json_schema(self) -> dict[str, Any] | None:
        return self.constraint.schema if self.constraint is not None else None

    @property
    def requires(self) -> frozenset[str]:
        """The worker features the job needs (a worker without them is never sent it)."""
        needs = {FEATURE_JSON_SCHEMA} if self.constraint is not None else set()
        if self.logprobs:
            needs.add(FEATURE_LOGPROBS)
        return frozenset(needs)


def request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(rfc8785.dumps(body)).hexdigest()


# A rendered prompt up to this size tokenizes on the loop (~70 us) faster than a thread hop;
# a longer one (a 16 kB prompt: ~6 ms in llama.cpp, without the GIL) goes to a thread.
INLINE_TOKENIZE_CHARS = 4096


async def _prompt_ids(binding: ModelBinding, messages: Any) -> list[int]:
    rendered = binding.render_chat(messages)
    if len(rendered) <= INLINE_TOKENIZE_CHARS:
        return binding.prompt_ids(rendered)
    return await asyncio.to_thread(binding.prompt_ids, rendered, hold_gil=False)


def supported_model(runtime: Any, req: Any) -> tuple[Any, ModelBinding]:
    """The request's model (pricing spec, binding), after refusing what the endpoint does not support."""
    unsupported = req.unsupported()
    if unsupported:
        raise APIError(400, unsupported[1], param=unsupported[0], code="unsupported_parameter")
    spec = runtime.pricing.models.get(req.model)
    binding = runtime.bindings.get(req.model)
    if spec is None or binding is None:
        raise APIError(404, f"The model '{req.model}' does not exist.", param="model", code="model_not_found",
                       retry=False)
    return spec, binding


async def plan_request(runtime: Any, req: ChatCompletionRequest, body: dict[str, Any],
                       idempotency_key: str | None) -> Plan:
    spec, binding = supported_model(runtime, req)
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "Invalid value for 'top_logprobs': it requires 'logprobs' to be true.",
                       param="top_logprobs", code="invalid_value")
    constraint = constraint_for(req.model_extra or {}, req.model, req.stop)
    messages: Any = req.messages
    if needs_history_rendering(req.messages) or (constraint and constraint.instructions()):
        messages = render_history(req.messages, constraint.instructions() if constraint else None)
    try:
        prompt_ids = await _prompt_ids(binding, messages)
    except ChatTemplateError as exc:
        raise APIError(400, str(exc), param="messages", code="invalid_messages") from None
    requested = req.max_completion_tokens or req.max_tokens
    if requested is not None and requested > spec.max_output_tokens:
        raise APIError(400, f"max_tokens is too large: {requested}. This model supports at most "
                       f"{spec.max_output_tokens} completion tokens.", param="max_tokens", code="invalid_value")
    max_tokens = requested or spec.max_output_tokens
    room = spec.context_window - len(prompt_ids)
    if room < 1 or (requested is not None and requested > room):
        raise APIError(400, f"This model's maximum context length is {spec.context_window} tokens. However, you "
                       f"requested {len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the messages, "
                       f"{max_tokens} in the completion).", param="messages", code="context_length_exceeded")
    max_tokens = min(max_tokens, room)  # without a limit in the request: up to the model's, within context
    return Plan(
        constraint=constraint,
        job_id=uuid.uuid4(), model=req.model, binding=binding, prompt_ids=prompt_ids, max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed, stops=req.stop, stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        idempotency_key=idempotency_key,
        request_hash=_idempotency_hash(body, req) if idempotency_key is not None else None,
        logprobs=bool(req.logprobs), top_logprobs=int(req.top_logprobs or 0) if req.logprobs else 0,
    )


JSON_SAFE_INTEGER = 2**53 - 1  # RFC 8785 (I-JSON) holds integers up to this magnitude exactly


def _idempotency_hash(body: dict[str, Any], req: ChatCompletionRequest) -> str:
    """The request's identity under an Idempotency-Key: a hash of its RFC 8785 canonical form,
    which refuses integers beyond 2^53-1 and NaN/Infinity: a 400 naming why, not a 500."""
    try:
        return request_hash(body)
    except rfc8785.CanonicalizationError as exc:
        if req.seed is not None and abs(req.seed) > JSON_SAFE_INTEGER:
            raise APIError(400, f"With an Idempotency-Key, seed must be within ±(2^53-1) (got {req.seed}): the "
                           "request is identified by its RFC 8785 canonical JSON, which holds no larger integer. "
                           "Use a smaller seed, or send no Idempotency-Key.", param="seed",
                           code="invalid_value") from None
        raise APIError(400, f"With an Idempotency-Key the request body must be expressible as RFC 8785 canonical "
                       f"JSON: {exc}.", code="invalid_value") from None
