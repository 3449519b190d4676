"""Registry and routing: which workers are live, which one takes a job, dispatch and cancel."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Collection

from basis.gateway.workers.connection import WorkerConnection, WorkerInfo
from basis.gateway.workers.jobs import (
    JobCancelled,
    JobChannel,
    JobStream,
    NoWorkerAvailable,
    WorkerFailedBeforeFirstToken,
    job_features,
)
from basis.protocol import Cancel, Job, dump


class WorkerRouting:
    """Part of ``WorkerHub``: the registry of live connections and job dispatch."""

    _conns: dict[str, WorkerConnection]
    _job_conn: dict[str, WorkerConnection]
    _slot_waiters: collections.deque[asyncio.Future[None]]
    _deadline_misses: collections.Counter[str]
    suspended: set[str]
    slot_wait: float

    def workers(self) -> list[WorkerInfo]:
        return [
            WorkerInfo(
                address=c.address,
                models=dict(c.capacity),
                active_jobs=c.active_total,
                capacity=c.capacity_total,
                last_seen=c.last_seen,
                software=c.software,
                deadline_misses=self._deadline_misses[c.address.lower()],
            )
            for c in self._conns.values()
        ]

    def record_deadline_miss(self, address: str) -> int:
        """A job of ``address`` ended on a deadline (the job runner enforces them); its new count."""
        self._deadline_misses[address.lower()] += 1
        return self._deadline_misses[address.lower()]

    def deadline_misses(self, address: str) -> int:
        return self._deadline_misses[address.lower()]

    def live_models(self) -> dict[str, dict[str, int]]:
        """model -> {"workers", "capacity", "active"} over live workers (``status: live``)."""
        out: dict[str, dict[str, int]] = {}
        for c in self._conns.values():
            for model, cap in c.capacity.items():
                s = out.setdefault(model, {"workers": 0, "capacity": 0, "active": 0})
                s["workers"] += 1
                s["capacity"] += cap
                s["active"] += c.active.get(model, 0)
        return out

    def pick(self, model: str, exclude: Collection[str] = (), requires: frozenset[str] = frozenset()
             ) -> WorkerConnection:
        """The worker ``dispatch`` would choose now (raises NoWorkerAvailable): lets the caller
        record the assignment with the job's acceptance, then ``dispatch(..., via=it)``."""
        return self._pick(model, exclude, requires)

    def _pick(self, model: str, exclude: Collection[str], requires: frozenset[str] = frozenset()
              ) -> WorkerConnection:
        """``requires``: job features the worker must have advertised (never sent to one without)."""
        excluded = {a.lower() for a in exclude}
        best: WorkerConnection | None = None
        best_key: tuple[float, int, float] | None = None
        for key, c in self._conns.items():
            if not c.alive or key in excluded or c.spare(model) <= 0 or key in self.suspended:
                continue
            if not requires <= c.features:  # never a job needing a feature the worker did not advertise
                continue
            cap = c.capacity_total or 1
            k = (c.active_total / cap, c.active_total, c.connected_at)
            if best_key is None or k < best_key:
                best, best_key = c, k
        if best is None:
            raise NoWorkerAvailable(model)
        return best

    # -- dispatch --------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def dispatch(self, job: Job, *, exclude: Collection[str] = (), via: WorkerConnection | None = None,
                       wait: bool = True) -> AsyncIterator[JobStream]:
        """Send ``job`` to the least-loaded live worker serving ``job.model`` (or to ``via``, an
        earlier ``pick``); stream its frames.

        Raises NoWorkerAvailable on entry (after waiting up to ``slot_wait`` for a busy model's
        slot, when ``wait``). Iterating raises WorkerFailedBeforeFirstToken or WorkerFailed.
        Leaving early sends ``cancel``.
        """
        if job.job_id in self._job_conn:
            raise ValueError(f"job {job.job_id} is already dispatched")
        if via is not None and via.alive:
            conn = via
        else:
            requires = job_features(job)
            conn = (await self._pick_or_wait(job.model, exclude, requires) if wait
                    else self._pick(job.model, exclude, requires))
        ch = JobChannel(job_id=job.job_id, model=job.model)
        conn.jobs[job.job_id] = ch
        conn.active[job.model] = conn.active.get(job.model, 0) + 1
        self._job_conn[job.job_id] = conn
        stream = JobStream(ch, conn.address)
        try:
            try:
                await conn.send(dump(job))
            except Exception as exc:
                ch.ended = True
                raise WorkerFailedBeforeFirstToken(
                    f"could not send the job: {exc}",
                    worker_address=conn.address,
                    job_id=job.job_id,
                    tokens_seen=0,
                ) from exc
            yield stream
        finally:
            if not ch.ended and stream.done is None and conn.alive:
                with contextlib.suppress(Exception):
                    await conn.send(dump(Cancel(job_id=job.job_id)))
            self._release(conn, ch)

    async def _pick_or_wait(self, model: str, exclude: Collection[str], requires: frozenset[str] = frozenset()
                            ) -> WorkerConnection:
        """``_pick``; when live workers serve ``model`` but all are busy, wait up to
        ``slot_wait`` seconds for one of them to free a slot."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.slot_wait
        while True:
            try:
                return self._pick(model, exclude, requires)
            except NoWorkerAvailable:
                excluded = {a.lower() for a in exclude}
                serving = any(c.alive and key not in excluded and c.capacity.get(model, 0) > 0
                              and requires <= c.features for key, c in self._conns.items())
                left = deadline - loop.time()
                if not serving:
                    raise
                if left <= 0:
                    raise NoWorkerAvailable(model, busy=True) from None
            waiter: asyncio.Future[None] = loop.create_future()
            self._slot_waiters.append(waiter)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), left)
            except TimeoutError:
                pass
            finally:
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._slot_waiters.remove(waiter)

    def _wake_slot_waiters(self) -> None:
        """A slot freed or a worker joined: every waiter re-picks, in arrival order."""
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _release(self, conn: WorkerConnection, ch: JobChannel) -> None:
        if conn.jobs.pop(ch.job_id, None) is not None:
            n = conn.active.get(ch.model, 0) - 1
            conn.active[ch.model] = max(0, n)
            self._wake_slot_waiters()
        if self._job_conn.get(ch.job_id) is conn:
            del self._job_conn[ch.job_id]

    async def cancel(self, job_id: str) -> bool:
        """Tell the worker to stop ``job_id`` (the dispatch context also does this on exit)."""
        conn = self._job_conn.get(job_id)
        if conn is None or not conn.alive:
            return False
        ch = conn.jobs.get(job_id)
        if ch is not None:
            ch.ended = True
            ch.queue.put_nowait(JobCancelled())
        with contextlib.suppress(Exception):
            await conn.send(dump(Cancel(job_id=job_id)))
        return True

