"""Contributor worker: connects out to the gateway, authenticates, serves jobs with an engine.

Never imports basis.ledger or basis.gateway (DESIGN §2): it shares only basis.protocol,
basis.models and basis.engines with the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable

from eth_account import Account
from pydantic import ValidationError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from basis.engines.base import (
    Engine,
    EngineError,
    GenerateRequest,
    TokenStep,
    supports_json_schema,
    supports_logprobs,
)
from basis.protocol import (
    LOGPROBS_VERSION,
    RECEIPTS_VERSION,
    Cancel,
    Challenge,
    Done,
    Error,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Job,
    ModelOffer,
    ReceiptFrame,
    Reject,
    TokenLogprob,
    Tokens,
    Usage,
    VerdictFrame,
    Welcome,
    challenge_text,
    dump,
    parse_gateway_message,
    sign_challenge,
)
from basis.protocol.messages import FEATURE_JSON_SCHEMA
from basis.worker.inbox import ReceiptInbox
from basis.worker.store import ReceiptStore

log = logging.getLogger("basis.worker")

SOFTWARE = "basis-worker/0.1.0"
# Rejections that a reconnect cannot fix.
FATAL_REJECTIONS = frozenset({"binding_mismatch", "unknown_model", "unsupported_version", "no_models", "suspended"})
RESTART_WINDOW_S = 120.0  # after a connection that served, reconnect attempts stay frequent this long
RESTART_BACKOFF_MAX_S = 2.0


class GatewayLost(Exception):
    pass


_RETRYABLE = (OSError, InvalidHandshake, InvalidURI, ConnectionClosed, GatewayLost, TimeoutError)


class WorkerRejected(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"gateway rejected the worker: {code}: {message}")
        self.code = code
        self.message = message




def make_offers(bindings, models: Iterable[str], capacity: int) -> list[ModelOffer]:
    """One ModelOffer per model, with the binding hash computed from the local tokenizer."""
    return [
        ModelOffer(model=m, binding_hash=bindings[m].binding_hash, capacity=int(capacity)) for m in models
    ]


class Worker:
    def __init__(
        self,
        *,
        gateway_url: str,
        private_key: str,
        engine: Engine,
        offers: list[ModelOffer],
        software: str = SOFTWARE,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        open_timeout: float = 10.0,
        store: ReceiptStore | None = None,
    ) -> None:
        self.gateway_url = gateway_url
        self._key = private_key
        self.address = Account.from_key(private_key).address
        self.engine = engine
        self.offers = list(offers)
        self.software = software
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.open_timeout = open_timeout
        self._sems = {o.model: asyncio.Semaphore(o.capacity) for o in self.offers}
        self._jobs: dict[str, asyncio.Task] = {}
        self._stop = asyncio.Event()
        self.connected = asyncio.Event()
        self.welcome: Welcome | None = None
        self.sessions = 0
        self.jobs_done = 0
        # Protocol v2 (receipts to the worker) needs somewhere durable to keep them; without a store, v1.
        self.inbox = ReceiptInbox(store) if store is not None else None

    @property
    def features(self) -> list[str]:
        """The optional job features the engine honours (advertised in hello)."""
        return [FEATURE_JSON_SCHEMA] if supports_json_schema(self.engine) else []

    @property
    def protocol_version(self) -> int:
        """The highest version this worker speaks: v2 needs a receipt store, v3 (logprobs) an
        engine that reports them as well."""
        if self.inbox is None:
            return 1
        return LOGPROBS_VERSION if supports_logprobs(self.engine) else RECEIPTS_VERSION

    @property
    def active_jobs(self) -> int:
        return len(self._jobs)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Connect, serve, and reconnect with exponential backoff (with jitter) until stop()."""
        delay = self.backoff_initial
        last_served = float("-inf")
        while not self._stop.is_set():
            served = False
            sessions = self.sessions
            try:
                served = await self.run_once()
            except WorkerRejected as exc:
                if exc.code in FATAL_REJECTIONS:
                    raise
                log.warning("%s", exc)
            except _RETRYABLE as exc:
                log.warning("gateway connection failed: %s", exc)
            if self._stop.is_set():
                break
            if served or self.sessions > sessions:  # welcomed, then lost (a dead gateway raises)
                delay = self.backoff_initial
                last_served = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=delay * (0.5 + random.random()))
            # A gateway that was serving a moment ago is most likely restarting: knock often, so
            # the worker is back within a couple of seconds of it (a refused connect costs nothing).
            recent = time.monotonic() - last_served < RESTART_WINDOW_S
            delay = min(RESTART_BACKOFF_MAX_S if recent else self.backoff_max, delay * 2)

    async def run_once(self) -> bool:
        """One connection: authenticate and serve until it ends. True if it got welcomed."""
        async with connect(
            self.gateway_url, open_timeout=self.open_timeout, max_size=2**24, proxy=None,
            compression=None,  # small JSON frames: deflate costs more CPU than it saves
        ) as ws:
            send_lock = asyncio.Lock()

            async def send(msg) -> None:
                async with send_lock:
                    await ws.send(dump(msg))

            first = parse_gateway_message(await asyncio.wait_for(ws.recv(), timeout=self.open_timeout))
            if not isinstance(first, Challenge):
                raise GatewayLost(f"expected a challenge, got {first.type}")
            version = min(self.protocol_version, first.protocol_version)
            text = challenge_text(
                gateway_address=first.gateway_address,
                chain_id=first.chain_id,
                nonce=first.nonce,
                expires_at=first.expires_at,
                protocol_version=version,
            )
            signature = await asyncio.to_thread(sign_challenge, self._key, text)
            await send(
                Hello(
                    protocol_version=version,
                    worker_address=self.address,
                    signature=signature,
                    models=self.offers,
                    software=self.software,
                    features=self.features,
                )
            )
            reply = parse_gateway_message(await asyncio.wait_for(ws.recv(), timeout=self.open_timeout))
            if isinstance(reply, Reject):
                raise WorkerRejected(reply.code, reply.message)
            if not isinstance(reply, Welcome):
                raise GatewayLost(f"expected welcome, got {reply.type}")
            self.welcome = reply
            self.sessions += 1
            self.connected.set()
            interval = max(0.05, float(reply.heartbeat_interval))
            log.info("connected to %s as %s", self.gateway_url, self.address)

            async def heartbeats() -> None:
                while True:
                    await asyncio.sleep(interval)
                    await send(Heartbeat(active_jobs=self.active_jobs))

            hb = asyncio.create_task(heartbeats())
            stop_wait = asyncio.create_task(self._stop.wait())
            recv: asyncio.Future | None = None
            try:
                while True:
                    recv = asyncio.ensure_future(ws.recv())
                    done, _ = await asyncio.wait(
                        {recv, stop_wait, hb}, timeout=3 * interval, return_when=asyncio.FIRST_COMPLETED
                    )
                    if recv not in done:
                        recv.cancel()
                        with contextlib.suppress(BaseException):
                            await recv
                        if stop_wait in done:
                            return True
                        if hb in done:
                            hb.result()  # re-raise the send error
                        raise GatewayLost("gateway silent for 3 heartbeat intervals")
                    try:
                        msg = parse_gateway_message(recv.result())
                    except ValidationError as exc:
                        log.warning("malformed frame from the gateway; ignored")
                        if self.inbox is not None:
                            self.inbox.malformed(recv.result(), exc)
                        continue
                    if isinstance(msg, Job):
                        if msg.job_id not in self._jobs:
                            task = asyncio.create_task(self._run_job(msg, send))
                            self._jobs[msg.job_id] = task
                            task.add_done_callback(lambda _t, jid=msg.job_id: self._jobs.pop(jid, None))
                    elif isinstance(msg, Cancel):
                        task = self._jobs.get(msg.job_id)
                        if task is not None:
                            task.cancel()
                    elif isinstance(msg, ReceiptFrame | VerdictFrame) and self.inbox is not None:
                        self.inbox.submit(msg, send)
                    elif isinstance(msg, HeartbeatAck):
                        pass
            finally:
                self.connected.clear()
                hb.cancel()
                stop_wait.cancel()
                jobs = list(self._jobs.values())
                for t in jobs:
                    t.cancel()
                pending = [hb, stop_wait, *jobs]
                if recv is not None:
                    recv.cancel()
                    pending.append(recv)
                await asyncio.gather(*pending, return_exceptions=True)

    async def _run_job(self, job: Job, send) -> None:
        sem = self._sems.get(job.model)
        if sem is None:
            await send(Error(job_id=job.job_id, message=f"model {job.model!r} not served here"))
            return
        if job.json_schema is not None and not supports_json_schema(self.engine):
            # Never serve a constrained job unconstrained: refuse it (the gateway routes such jobs
            # only to workers that advertise the feature, so this is a gateway's mistake).
            await send(Error(job_id=job.job_id, message="this worker's engine cannot decode under a JSON schema"))
            return
        if job.logprobs and not supports_logprobs(self.engine):  # likewise: never a job without its logprobs
            await send(Error(job_id=job.job_id, message="this worker's engine does not report logprobs"))
            return
        async with sem:
            req = GenerateRequest(
                prompt_ids=list(job.prompt_ids),
                max_tokens=job.max_tokens,
                temperature=job.temperature,
                top_p=job.top_p,
                seed=job.seed,
                stop_ids=job.stop_ids,
                model=job.model,
                request_id=job.job_id,
                json_schema=job.json_schema,
                logprobs=job.logprobs,
                top_logprobs=job.top_logprobs if job.logprobs else 0,
            )
            count = 0
            gen = self.engine.generate(req)
            steps: asyncio.Queue = asyncio.Queue()

            async def produce() -> None:
                try:
                    async for step in gen:
                        steps.put_nowait(step)
                        if step.final:
                            return
                    steps.put_nowait(None)
                except BaseException as exc:  # handed to the sender, which knows what to say
                    steps.put_nowait(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise

            producer = asyncio.create_task(produce())
            try:
                while True:
                    # One frame carries every token the engine has ready: a fast engine
                    # (batching GPU servers, the instant engine) is not throttled by one frame
                    # per token, and a slow one still streams each token as it comes.
                    ready = [await steps.get()]
                    while not steps.empty() and isinstance(ready[-1], TokenStep) and not ready[-1].final:
                        ready.append(steps.get_nowait())
                    tail = ready[-1]
                    body = [st for st in ready if isinstance(st, TokenStep) and not st.final]
                    ids = [i for st in body for i in st.ids]
                    text = "".join(st.text for st in body)
                    if ids or text:
                        count += len(ids)
                        logprobs = None
                        if job.logprobs:
                            logprobs = [TokenLogprob(logprob=lp.logprob, top=list(lp.top))
                                        for st in body for lp in (st.logprobs or ())]
                        await send(Tokens(job_id=job.job_id, ids=ids, text=text, logprobs=logprobs))
                    if isinstance(tail, BaseException):
                        raise tail
                    if tail is None:
                        await send(Error(job_id=job.job_id, message="engine ended without finishing"))
                        return
                    if tail.final:
                        await send(
                            Done(
                                job_id=job.job_id,
                                finish_reason=tail.finish_reason,
                                usage=Usage(prompt_tokens=len(job.prompt_ids), completion_tokens=count),
                                text=tail.text,
                            )
                        )
                        self.jobs_done += 1
                        return
            except EngineError as exc:
                log.warning("job %s failed: %s", job.job_id, exc)
                with contextlib.suppress(Exception):
                    await send(Error(job_id=job.job_id, message=str(exc)))
            except ConnectionClosed:
                pass
            finally:
                producer.cancel()
                with contextlib.suppress(BaseException):
                    await producer
                with contextlib.suppress(BaseException):
                    await gen.aclose()
