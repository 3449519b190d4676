"""Legacy completions as jobs: each prompt (times ``n``) is planned, reserved and run by the chat
job runner (``JobRun``), so metering, receipts, cancellation and idempotency are chat's own.

The prompt is tokenized by the gateway without a chat template (special tokens in the text are
parsed, as OpenAI-compatible servers do; the model's BOS is added where its GGUF asks for it);
token-id prompts are taken as given, each id checked against the vocabulary.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from basis.domain.pricing import worst_case_charge
from basis.gateway.chat.logprobs import completion_logprobs
from basis.gateway.chat.service import INLINE_TOKENIZE_CHARS, JobRun, Plan, request_hash, supported_model
from basis.gateway.completions.schemas import DEFAULT_MAX_TOKENS, MAX_JOBS, CompletionRequest
from basis.gateway.errors import APIError
from basis.ledger.errors import IdempotentReplay
from basis.ledger.keys import KeyEntry
from basis.models import ModelBinding


@dataclass
class Prompt:
    ids: list[int]
    text: str  # what ``echo`` returns: the prompt as given, or its ids' text


@dataclass
class Choice:
    """One job of the request: live (``run``) or replayed from the ledger (``recorded``)."""

    index: int
    plan: Plan
    echo: str
    run: JobRun | None = None
    recorded: Any = None  # the ended Job aggregate of an idempotent repeat

    @property
    def job_id(self) -> str:
        return str(self.recorded.id if self.recorded is not None else self.plan.job_id)


async def _tokenize(binding: ModelBinding, prompt: str | list[int], param: str) -> Prompt:
    if isinstance(prompt, str):
        if len(prompt) <= INLINE_TOKENIZE_CHARS:
            ids = binding.prompt_ids(prompt)
        else:
            ids = await asyncio.to_thread(binding.prompt_ids, prompt, hold_gil=False)
        if not ids:
            raise APIError(400, "The prompt is empty once tokenized.", param=param, code="invalid_value")
        return Prompt(ids, prompt)
    n_vocab = binding.n_vocab
    bad = next((i for i in prompt if not 0 <= i < n_vocab), None)
    if bad is not None:
        raise APIError(400, f"Token id {bad} is outside this model's vocabulary (0 to {n_vocab - 1}).",
                       param=param, code="invalid_value")
    return Prompt(list(prompt), binding.detokenize(prompt).decode("utf-8", "replace"))


async def plan_completions(runtime: Any, req: CompletionRequest, body: dict[str, Any],
                           idempotency_key: str | None) -> list[Choice]:
    """Validate and tokenize; one Plan per job (prompt-major, then ``n``). Nothing is reserved yet."""
    spec, binding = supported_model(runtime, req)
    prompts = req.prompts()
    n = req.n or 1
    if len(prompts) * n > MAX_JOBS:
        raise APIError(400, f"At most {MAX_JOBS} completions in one request (prompts x n); "
                       f"this one asks for {len(prompts) * n}.", param="n", code="invalid_value")
    requested = req.max_tokens
    if requested is not None and requested > spec.max_output_tokens:
        raise APIError(400, f"max_tokens is too large: {requested}. This model supports at most "
                       f"{spec.max_output_tokens} completion tokens.", param="max_tokens", code="invalid_value")
    created = int(time.time())
    total = len(prompts) * n
    choices: list[Choice] = []
    for p_index, raw in enumerate(prompts):
        param = "prompt" if len(prompts) == 1 else f"prompt.{p_index}"
        prompt = await _tokenize(binding, raw, param)
        max_tokens = requested or min(DEFAULT_MAX_TOKENS, spec.max_output_tokens)
        room = spec.context_window - len(prompt.ids)
        if room < 1 or (requested is not None and requested > room):
            raise APIError(400, f"This model's maximum context length is {spec.context_window} tokens. However, "
                           f"you requested {len(prompt.ids) + max_tokens} tokens ({len(prompt.ids)} in the prompt, "
                           f"{max_tokens} in the completion).", param=param, code="context_length_exceeded")
        for j in range(n):
            index = len(choices)
            # One Idempotency-Key covers the request: each of its jobs records the key with its
            # index, bound to the whole body and that index.
            key = idempotency_key if total == 1 or idempotency_key is None else f"{idempotency_key}/{index}"
            digest = None
            if idempotency_key is not None:
                digest = request_hash(body if total == 1 else {"body": body, "choice": index})
            plan = Plan(
                job_id=uuid.uuid4(), model=req.model, binding=binding, prompt_ids=prompt.ids,
                max_tokens=min(max_tokens, room),
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                # n samples of one prompt with one seed would be n copies: each takes the next seed.
                seed=None if req.seed is None else req.seed + j,
                stops=req.stop, stream=bool(req.stream),
                include_usage=bool(req.stream_options and req.stream_options.include_usage),
                idempotency_key=key, request_hash=digest, created=created,
                logprobs=req.logprobs is not None, top_logprobs=req.logprobs or 0)
            choices.append(Choice(index=index, plan=plan, echo=prompt.text if req.echo else ""))
    return choices


async def _check_credit(runtime: Any, choices: list[Choice], account_id: UUID) -> None:
    """Several jobs: refuse up front when their reservations cannot all fit the account's credit,
    before any of them runs (each job still reserves for itself; this read only spares a job
    that would run while a later one is refused)."""
    terms = runtime.pricing.terms_for(choices[0].plan.model)
    need = sum(worst_case_charge(len(c.plan.prompt_ids), c.plan.max_tokens, terms) for c in choices)
    account = await asyncio.to_thread(runtime.ledger.get, account_id)
    if need > account.available:
        raise APIError(402, f"Insufficient credit: these {len(choices)} completions may cost up to {need} base "
                       f"units; the account has {account.available} available.", code="insufficient_credit",
                       retry=False)


async def start(runtime: Any, choices: list[Choice], account_id: UUID, key: KeyEntry | None = None) -> None:
    """Reserve and dispatch each job in turn. When one is refused (402, 409, 503), the jobs
    already begun are cancelled (charged only for tokens accepted meanwhile) and the refusal is
    raised: the request is all or nothing (a shortfall is found before any job runs, except
    under a race with the account's other requests)."""
    # Not with an Idempotency-Key: a repeat is answered from the ledger and reserves nothing.
    if len(choices) > 1 and all(c.plan.idempotency_key is None for c in choices):
        await _check_credit(runtime, choices, account_id)
    begun: list[JobRun] = []
    for choice in choices:
        run = JobRun(runtime, choice.plan, account_id, key)
        run.begin()
        try:
            await run.accepted()
        except IdempotentReplay as replay:
            choice.recorded = await asyncio.to_thread(runtime.ledger.get, UUID(replay.job_id))
            continue
        except BaseException:
            for other in begun:
                other.client_gone()
            raise
        choice.run = run
        begun.append(run)


def cancel(choices: list[Choice]) -> None:
    for c in choices:
        if c.run is not None:
            c.run.client_gone()


@dataclass
class Result:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    output_tokens: int
    receipt: dict[str, Any] | None
    logprobs: dict[str, Any] | None = None  # OpenAI's legacy shape, when asked (not for a replayed job)


async def result(choice: Choice) -> Result | APIError:
    """The whole completion of one job (non-streaming), or the error it ended with."""
    if choice.recorded is not None:
        job = choice.recorded
        core = job.receipt["core"]
        return Result(choice.echo + (job.output_text or ""), job.finish_reason, core["prompt_tokens"],
                      core["output_tokens"], job.receipt)
    run = choice.run
    assert run is not None
    receipt = await run.wait_receipt()
    events = []
    while not run.events.empty():
        events.append(run.events.get_nowait())
    for kind, value in events:
        if kind == "error":
            return value
    finish = next((v for k, v in events if k == "end"), None)
    logprobs = None
    if choice.plan.logprobs:  # never with echo (refused): the offsets start at the output
        logprobs, _ = completion_logprobs(choice.plan.binding, run.token_logprobs, 0)
    return Result(choice.echo + "".join(run.text_parts), finish, len(choice.plan.prompt_ids), run.output_tokens,
                  receipt, logprobs)


async def first_event(choice: Choice) -> tuple[str, Any] | None:
    """The first event of a live job (None for a replayed one): a stream begins only once every
    job has begun, so a refusal before the first token still answers with its own status."""
    return await choice.run.events.get() if choice.run is not None else None


async def events(choice: Choice, first: tuple[str, Any] | None) -> AsyncIterator[tuple[str, Any]]:
    """(kind, value) of one job as it streams: ("delta", text)... then ("end", finish) or ("error", APIError);
    with logprobs, ("logprobs", [TokenLogprobs]) before the text of those tokens."""
    if choice.echo:
        yield "delta", choice.echo
    if choice.recorded is not None:
        if choice.recorded.output_text:
            yield "delta", choice.recorded.output_text
        yield "end", choice.recorded.finish_reason
        return
    run = choice.run
    assert run is not None and first is not None
    kind, value = first
    while True:
        yield kind, value
        if kind not in ("delta", "logprobs"):
            return
        kind, value = await run.events.get()


def usage(choices: list[Choice]) -> dict[str, int]:
    """Server-counted tokens of every job of the request (each prompt counts once per job)."""
    prompt = output = 0
    for c in choices:
        if c.recorded is not None:
            prompt += c.recorded.receipt["core"]["prompt_tokens"]
            output += c.recorded.receipt["core"]["output_tokens"]
        else:
            prompt += len(c.plan.prompt_ids)
            output += c.run.output_tokens if c.run is not None else 0
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}
