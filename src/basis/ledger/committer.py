"""Group commit: many commands, one transaction.

Commands are plain functions ``fn(uow) -> result`` run on one writer thread. Every command
in a batch reads and changes aggregates through the unit of work; their pending events are
saved together in a single ``Application.save`` (SQLite: ~55k events/s batched against ~5k/s
one by one). Optimistic concurrency keeps it correct across processes: a version conflict
fails the whole batch, so the writer forgets what it cached and runs the batch again, then
command by command, so no command's conflict fails a neighbour.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from basis.ledger.errors import LedgerBusy
from basis.ledger.store import LedgerStore
from basis.ledger.writer_turn import WriterTurn

log = logging.getLogger(__name__)
A = TypeVar("A", bound=Aggregate)
Command = Callable[["UnitOfWork"], Any]

MAX_BATCH = 2000
MAX_ATTEMPTS = 50
STALE_SCAN = 5000  # log rows read per query when looking for other writers' changes
CONTENDED_S = 30.0  # after a conflict, batches take the write turn this long before trying optimism again


class UnitOfWork:
    def __init__(self, committer: GroupCommitter) -> None:
        self._committer = committer
        self.touched: dict[UUID, Aggregate] = {}
        self.forget: set[UUID] = set()
        self.events: list[Any] = []  # in the order the commands produced them
        self._seen: dict[UUID, int] = {}  # pending events per aggregate when this command first saw it

    def begin(self) -> None:
        self._seen = {}

    def _see(self, agg: Aggregate, fresh: bool = False) -> None:
        if agg.id not in self._seen:
            self._seen[agg.id] = -1 if fresh else len(agg.pending_events)

    def collect(self) -> None:
        """Take the current command's new events, so the log keeps command order across aggregates."""
        for agg_id in self._seen:
            agg = self.touched[agg_id]
            if agg.pending_events:
                self.events.extend(agg.collect_events())

    def changed(self) -> bool:
        """Did the current command change any aggregate?"""
        return any(len(self.touched[i].pending_events) != n for i, n in self._seen.items())

    def find(self, cls: type[A], aggregate_id: UUID) -> A | None:
        agg = self.touched.get(aggregate_id)
        if agg is None:
            agg = self._committer._cached(aggregate_id)
        if agg is None:
            try:
                agg = self._committer.store.repository.get(aggregate_id)
            except AggregateNotFoundError:
                return None
        if not isinstance(agg, cls):
            raise TypeError(f"{aggregate_id} is a {type(agg).__name__}, not a {cls.__name__}")
        self.touched[aggregate_id] = agg
        self._see(agg)
        return agg

    def add(self, agg: A) -> A:
        self.touched[agg.id] = agg
        self._see(agg, fresh=True)
        return agg

    def release(self, agg: Aggregate) -> None:
        """Do not keep this aggregate cached after the commit (e.g. a finished job)."""
        self.forget.add(agg.id)


class QueuedCommand:
    """One queued command. A thread caller waits on ``future``; an async caller passes its
    loop's future as ``waiter`` and gets no thread-safe Future at all (one less lock per command)."""

    __slots__ = ("fn", "future", "outcome", "waiter")

    def __init__(self, fn: Command, waiter: tuple[Any, Any] | None = None, future: bool = True) -> None:
        self.fn = fn
        self.waiter = waiter  # (event loop, asyncio future) of an async caller
        self.future: Future[Any] | None = Future() if waiter is None and future else None
        self.outcome: tuple[bool, Any] | None = None  # (ok, result or exception), once settled

    def done(self) -> bool:
        return self.outcome is not None

    def settle(self, ok: bool, value: Any) -> None:
        """Record the command's one answer. A second answer would be a bug that fails the caller's
        neighbours (``InvalidStateError``): refuse it loudly, keep the first."""
        if self.outcome is not None:
            log.error("a ledger command was answered twice; keeping its first answer", stack_info=True)
            return
        self.outcome = (ok, value)
        if self.future is not None:
            if ok:
                self.future.set_result(value)
            else:
                self.future.set_exception(value)


def _transfer(pairs: list[tuple[Any, QueuedCommand]]) -> None:
    """On the caller's event loop: settle its asyncio futures from the writer's results."""
    for afut, item in pairs:
        if afut.cancelled():
            continue
        ok, value = item.outcome
        if ok:
            afut.set_result(value)
        else:
            afut.set_exception(value)


class GroupCommitter:
    """``threaded``: a writer thread takes queued commands; without it, whoever owns the committer
    drives it with ``commit_batch`` (the writer process does)."""

    def __init__(self, store: LedgerStore, cache_size: int = 100_000,
                 on_commit: Callable[[], None] | None = None, threaded: bool = True) -> None:
        self.store = store
        self._cache: OrderedDict[UUID, Aggregate] = OrderedDict()
        self._cache_size = cache_size
        self._queue: queue.SimpleQueue[QueuedCommand | None] = queue.SimpleQueue()
        self._on_commit: list[Callable[[], None]] = [on_commit] if on_commit is not None else []
        self.batches = 0
        self.commands = 0
        self.conflicts = 0  # saves refused by optimistic concurrency (another writer won an aggregate)
        # Saves tried without the write turn (optimistic, or the turn unavailable). Every conflict is
        # one of these or is caused by one: only one turn is held at a time, and its holder reads
        # after the previous holder's commit, so only a save made without the turn can overtake it.
        self.unturned_saves = 0
        self._turn_held = False
        # Everything up to this notification id is reflected in the cache (see _drop_stale).
        self._seen = store.recorder.max_notification_id() or 0
        self._closed = False
        self.turn = WriterTurn(store.env)  # one writer's batch at a time across processes (PostgreSQL)
        self._contended_until = 0.0  # monotonic time until which batches take the turn
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="basis-ledger-writer", daemon=True)
            self._thread.start()

    # -- public ---------------------------------------------------------------------------
    def submit(self, fn: Command) -> Future[Any]:
        """Queue a command; its result (or exception) arrives on the returned Future."""
        item = QueuedCommand(fn)
        self._put(item)
        assert item.future is not None
        return item.future

    def submit_async(self, fn: Command, loop: Any, waiter: Any) -> None:
        """Queue a command whose result settles ``waiter``, an asyncio future of ``loop``: one
        wake-up per loop per batch, instead of one thread-safe call per command."""
        self._put(QueuedCommand(fn, (loop, waiter)))

    def _put(self, item: QueuedCommand) -> None:
        if self._closed:
            raise RuntimeError("the ledger writer is closed")
        self._queue.put(item)

    @property
    def closed(self) -> bool:
        return self._closed

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Called on the writer thread after each commit that stored events (keep it quick)."""
        self._on_commit.append(listener)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join(timeout=30)
            self.turn.close()

    def commit_batch(self, items: list[QueuedCommand]) -> None:
        """Run the commands and save their events in one transaction; every item ends settled."""
        try:
            self._commit(items)
        except BaseException as exc:  # never leave a caller waiting
            log.exception("ledger writer failed a batch")
            for item in items:
                if not item.done():
                    item.settle(False, exc)

    # -- writer thread ---------------------------------------------------------------------
    @staticmethod
    def _wake_async_callers(items: list[QueuedCommand]) -> None:
        by_loop: dict[Any, list[tuple[Any, QueuedCommand]]] = {}
        for item in items:
            if item.waiter is not None and item.outcome is not None:
                loop, afut = item.waiter
                by_loop.setdefault(loop, []).append((afut, item))
        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_transfer, pairs)

    def _cached(self, aggregate_id: UUID) -> Aggregate | None:
        agg = self._cache.get(aggregate_id)
        if agg is not None:
            self._cache.move_to_end(aggregate_id)
        return agg

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            stop = False
            while len(items) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                items.append(nxt)
            self.commit_batch(items)
            self._wake_async_callers(items)
            if stop:
                return

    def _drop_stale(self, watch_turn: bool = False) -> bool:
        """Forget cached aggregates that another writer (process or thread) changed since the
        last batch. Optimistic concurrency catches a stale aggregate that a command changes, but
        not one it only reads (a settlement batch reading an account's deposit spend): without
        this, a second writer on the same store could read an old version. Costs one MAX query
        per batch; the log's new rows are read only when another writer added some. With
        ``watch_turn`` the same query says whether the write turn is free (the return value)."""
        probe = getattr(self.store.recorder, "max_notification_id_and_turn", None) if watch_turn else None
        top, free = probe(self.turn.key) if probe is not None else (self.store.recorder.max_notification_id(), True)
        if top != self._seen:  # else nobody wrote since: the common case, one cheap query
            self._catch_up_all()
        return free

    def _catch_up_all(self) -> None:
        while True:
            seen, changes = self.store.changes_since(self._seen, STALE_SCAN)
            self._seen = seen
            stale = {}
            for agg_id, version in changes:
                agg = self._cache.get(agg_id)
                if agg is not None and agg.version < version:
                    stale[agg_id] = version
            for agg_id, version in stale.items():
                self._catch_up(agg_id, version)
            if len(changes) < STALE_SCAN:
                return
            if len(self._cache) < len(changes):  # far behind: starting afresh is cheaper
                top = self.store.recorder.max_notification_id() or 0
                self._cache.clear()
                self._seen = top
                return

    def _catch_up(self, agg_id: UUID, version: int) -> None:
        """Bring a cached aggregate that another writer changed up to ``version`` by applying only
        the events it missed. Dropping it instead would replay its whole history on its next read:
        for one account served by several gateways, on every batch, at a cost that grows with it."""
        agg = self._cache[agg_id]
        try:
            for event in self.store.events.get(agg_id, gt=agg.version, lte=version):
                agg = event.mutate(agg)
        except Exception:  # anything unexpected: forget it, the next read replays it from the store
            log.warning("could not catch up cached aggregate %s; dropping it", agg_id, exc_info=True)
            agg = None
        if agg is None or agg.version != version:
            del self._cache[agg_id]
        else:
            self._cache[agg_id] = agg

    def _saw_own_insert(self, recordings: list[Any]) -> None:
        """If our batch followed straight on what we had seen (nothing of another writer's in
        between), we have seen everything up to its last event. Our SQLite recorder says which
        ids it took; eventsourcing's PostgreSQL recorder returns them with the recordings."""
        ids = getattr(self.store.recorder, "last_inserted", None)
        if ids is None and recordings and recordings[0].notification is not None:
            ids = (recordings[0].notification.id, recordings[-1].notification.id)
        if ids is not None and ids[0] == self._seen + 1:
            self._seen = ids[1]

    def _commit(self, items: list[QueuedCommand]) -> None:
        """Optimistic while no other writer contends; after a conflict, take turns for a while (see
        writer_turn): the writer that waited decides on current versions and saves without conflict,
        while writers on different accounts never wait for each other."""
        if not self.turn.postgres:
            self._commit_turn(items)
            return
        if time.monotonic() >= self._contended_until:
            # Another writer holding (or awaiting) the turn means contention too: a writer that
            # only ever wins would otherwise never take turns, and the turn's holder, refused by
            # each of its saves, would lose every retry (a gateway restarting next to a busy one
            # could not end its interrupted jobs on a hot account).
            if self._drop_stale(watch_turn=True) and self._try_batch([i for i in items if not i.done()]):
                return
            self._contended_until = time.monotonic() + CONTENDED_S
        with self.turn.held() as got:
            self._turn_held = got
            try:
                self._commit_turn(items)
            finally:
                self._turn_held = False

    def _commit_turn(self, items: list[QueuedCommand]) -> None:
        self._drop_stale()
        # Every retry runs only the commands still unanswered: one that raised after changing an
        # aggregate was answered (and taken out of the batch) before the conflict.
        for _attempt in range(2):
            if self._try_batch([i for i in items if not i.done()]):
                return
        for item in items:  # split: each command alone, so one conflict fails only itself
            if item.done():
                continue
            for attempt in range(MAX_ATTEMPTS):
                if self._try_batch([item]):
                    break
                # Another process won the same aggregate: back off with jitter, then re-read.
                time.sleep(random.uniform(0, 0.002) * min(attempt + 1, 10))
            else:
                item.settle(False, LedgerBusy("too many concurrent writers on one aggregate"))

    def _try_batch(self, items: list[QueuedCommand]) -> bool:
        """Run and save the batch. False after a version conflict (caches dropped, nothing set)."""
        uow = UnitOfWork(self)
        results: list[tuple[QueuedCommand, bool, Any]] = []
        for item in items:
            uow.begin()
            try:
                result = item.fn(uow)
            except Exception as exc:
                if uow.changed():
                    # It changed aggregates before failing: answer it, drop this batch's state
                    # (its half-made changes with it), and run the others again without it.
                    item.settle(False, exc)
                    self._evict(uow.touched)
                    rest = [i for i in items if not i.done()]
                    return self._try_batch(rest) if rest else True
                results.append((item, False, exc))
            else:
                uow.collect()
                results.append((item, True, result))
        dirty = bool(uow.events)
        if dirty:
            if not self._turn_held:
                self.unturned_saves += 1
            try:
                self._saw_own_insert(self.store.events.put(uow.events))
            except IntegrityError:
                self.conflicts += 1
                self._evict(uow.touched)
                return False
            except Exception as exc:
                self._evict(uow.touched)
                for item, _ok, _res in results:
                    item.settle(False, exc)
                return True
        self.batches += 1
        self.commands += len(items)
        for agg_id, agg in uow.touched.items():
            if agg_id in uow.forget:
                self._cache.pop(agg_id, None)
            else:
                self._cache[agg_id] = agg
                self._cache.move_to_end(agg_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        if dirty:
            for listener in self._on_commit:
                listener()
        for item, ok, res in results:
            item.settle(ok, res)
        return True

    def _evict(self, touched: dict[UUID, Aggregate]) -> None:
        for agg_id in touched:
            self._cache.pop(agg_id, None)
