"""One dispatched job as the gateway sees it: its channel, its stream of frames, its failure kinds."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from basis.protocol import Done, Error, Job, Tokens
from basis.protocol.messages import FEATURE_JSON_SCHEMA, FEATURE_LOGPROBS


def job_features(job: Job) -> frozenset[str]:
    """The optional worker features a job needs (a worker without them never receives it)."""
    needs = {FEATURE_JSON_SCHEMA} if job.json_schema is not None else set()
    if job.logprobs:
        needs.add(FEATURE_LOGPROBS)  # protocol v3
    return frozenset(needs)


class NoWorkerAvailable(Exception):
    """No live worker serves the model with spare capacity (HTTP 503)."""

    def __init__(self, model: str, busy: bool = False) -> None:
        super().__init__(f"every worker serving {model!r} is busy" if busy
                         else f"no worker available for model {model!r}")
        self.model = model
        self.busy = busy  # workers serve the model, but none had a free slot in time


class WorkerJobError(Exception):
    """Base of the two failure kinds of a dispatched job."""

    def __init__(self, message: str, *, worker_address: str, job_id: str, tokens_seen: int) -> None:
        super().__init__(message)
        self.worker_address = worker_address
        self.job_id = job_id
        self.tokens_seen = tokens_seen


class WorkerFailedBeforeFirstToken(WorkerJobError):
    """The worker errored or vanished before sending any token id: retry on another worker."""


class WorkerFailed(WorkerJobError):
    """The worker errored or vanished after tokens flowed: the job ends as ``failed``."""


class ConnectionLost:
    """Queue sentinel: the connection carrying the job went away."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class JobCancelled:
    """Queue sentinel: the gateway cancelled the job (``hub.cancel``); the stream just ends."""


@dataclass
class JobChannel:
    job_id: str
    model: str
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    tokens_seen: int = 0
    ended: bool = False  # done/error/lost received



class JobStream:
    """Messages of one dispatched job: ``Tokens`` frames, then one ``Done``."""

    def __init__(self, channel: JobChannel, worker_address: str) -> None:
        self._ch = channel
        self.worker_address = worker_address
        self.job_id = channel.job_id
        self.done: Done | None = None
        self.cancelled = False

    @property
    def tokens_seen(self) -> int:
        return self._ch.tokens_seen

    def __aiter__(self) -> JobStream:
        return self

    def _fail(self, message: str) -> WorkerJobError:
        cls = WorkerFailed if self._ch.tokens_seen else WorkerFailedBeforeFirstToken
        return cls(
            message,
            worker_address=self.worker_address,
            job_id=self.job_id,
            tokens_seen=self._ch.tokens_seen,
        )

    async def __anext__(self) -> Tokens | Done:
        if self.done is not None or self.cancelled:
            raise StopAsyncIteration
        item = await self._ch.queue.get()
        if isinstance(item, JobCancelled):
            self.cancelled = True
            raise StopAsyncIteration
        if isinstance(item, Tokens):
            if item.ids:
                self._ch.tokens_seen += len(item.ids)
            return item
        if isinstance(item, Done):
            self.done = item
            return item
        if isinstance(item, Error):
            raise self._fail(f"worker error: {item.message}")
        if isinstance(item, ConnectionLost):
            raise self._fail(f"worker lost: {item.reason}")
        raise self._fail(f"unexpected item {item!r}")  # pragma: no cover

