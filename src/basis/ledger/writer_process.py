"""The gateway's ledger writer in a process of its own, so its CPU (aggregates, SQLite, receipt
signing: ~400 µs a job) leaves the event loop's GIL.

Job commands cross a pipe by name (``JOB_COMMANDS``, with keyword arguments), a pickled list per
loop iteration; the writer process builds each one with its own ``Ledger`` and runs a whole read
as one group commit, then answers with one pickled list of ``(seq, ok, value)``. Frames are
length-prefixed. The event store itself arbitrates between this writer and any other (the
gateway's own thread for settlement, the CLI): file lock, then optimistic concurrency.

If the process dies, whatever it had not answered is recovered on a new one: an acceptance is
abandoned (failed, nothing charged, if it was saved at all) and its caller told ``LedgerUnavailable``;
a job's end is sent again with ``resume`` (the saved receipt comes back if the first one landed);
assignments and worker registrations are sent again. They go first, in their original order, and
only then whatever the gateway submitted while the next process was starting: a job's end never
overtakes its own assignment. No committed event is ever in doubt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import pickle
import select
import struct
import time
from collections.abc import Callable
from typing import Any

from basis.ledger.errors import LedgerError, LedgerUnavailable
from basis.ledger.service import JOB_COMMANDS

log = logging.getLogger(__name__)
_LEN = struct.Struct("<I")
READ_CHUNK = 1 << 20


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


def _unframe(buf: bytearray) -> list[Any]:
    """Take every complete frame off the front of ``buf``."""
    out, pos = [], 0
    while len(buf) - pos >= 4:
        (n,) = _LEN.unpack_from(buf, pos)
        if len(buf) - pos - 4 < n:
            break
        out.append(pickle.loads(memoryview(buf)[pos + 4:pos + 4 + n]))
        pos += 4 + n
    del buf[:pos]
    return out


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling, else a plain one that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _serve(spawn_args: dict[str, Any], commands: Any, replies: Any, log_level: int, parent_pid: int) -> None:
    """The writer process: read commands, commit each read as one batch, answer."""
    from basis.lifeline import die_with_parent, leave_interrupts_to_parent

    # A writer must never outlive its gateway: nobody is left to answer.
    die_with_parent(parent_pid, name="basis-writer")
    leave_interrupts_to_parent()

    from basis.ledger.committer import QueuedCommand
    from basis.ledger.service import Ledger
    from basis.observability.logging import configure_logging

    configure_logging(log_level)  # JSON lines on stderr, like the gateway's own

    ledger = Ledger(**spawn_args, writer_thread=False)
    rfd, wfd = commands.fileno(), replies.fileno()
    buf = bytearray()
    try:
        while True:
            data = os.read(rfd, READ_CHUNK)
            if not data:  # the gateway is gone
                return
            buf += data
            batch = [cmd for frame in _unframe(buf) for cmd in frame]
            if not batch:
                continue
            seqs, items, results = [], [], []
            for seq, name, kwargs in batch:
                try:
                    fn = ledger.command(name, kwargs)
                except Exception as exc:
                    results.append((seq, False, _portable(exc)))
                    continue
                seqs.append(seq)
                items.append(QueuedCommand(fn, future=False))
            ledger.committed.clear()  # set again by a commit that stored events
            if os.getppid() != parent_pid:  # the gateway is gone (the kill signal is on its way): commit nothing
                os._exit(0)
            if items:
                ledger.writer.commit_batch(items)
            for seq, item in zip(seqs, items, strict=True):
                ok, value = item.outcome or (False, RuntimeError("the command was not run"))
                results.append((seq, ok, value if ok else _portable(value)))
            _write_all(wfd, _frame((results, ledger.committed.is_set())))
    finally:
        ledger.close()


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("a ledger command sent without waiting failed: %s", fut.exception())


class _JobWriter:
    """What the gateway calls, whichever writer runs the commands. Loop-bound: ``start``
    attaches it to the running loop; every other call is made on that loop."""

    _loop: asyncio.AbstractEventLoop | None = None

    @property
    def closed(self) -> bool:
        """Stopping: no command submitted from now on will run."""
        raise NotImplementedError

    def submit_async(self, name: str, kwargs: dict[str, Any], waiter: asyncio.Future[Any]) -> None:
        raise NotImplementedError

    def submit(self, name: str, kwargs: dict[str, Any]) -> asyncio.Future[Any]:
        """Queue a job command without waiting for it; a failure is logged."""
        assert self._loop is not None, "start() first"
        fut = self._loop.create_future()
        fut.add_done_callback(_log_failure)
        self.submit_async(name, kwargs, fut)
        return fut


class LedgerWriterProcess(_JobWriter):
    """The gateway side: submit job commands from the event loop, await their results."""

    def __init__(self, spawn_args: dict[str, Any]) -> None:
        self._ctx = mp.get_context("spawn")
        self._spawn_args = spawn_args
        self._proc: Any = None
        self._send: Any = None
        self._recv: Any = None
        self._seq = 0
        self._pending: dict[int, tuple[str, dict[str, Any], asyncio.Future[Any]]] = {}
        self._outbox: list[tuple[int, str, dict[str, Any]]] = []
        self._out = bytearray()
        self._flush_scheduled = False
        self._in = bytearray()
        self._listeners: list[Callable[[], None]] = []
        self._started_at = 0.0
        self._closed = False
        self._in_doubt: set[int] = set()  # sent to a process that died before answering them
        self._restart_timer: asyncio.TimerHandle | None = None
        self.restarts = 0
        self.recovered = 0  # commands a lost process had not answered, recovered on its successor

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn()

    def _spawn(self) -> None:
        commands_r, commands_w = self._ctx.Pipe(duplex=False)
        replies_r, replies_w = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(target=_serve, name="basis-ledger-writer", daemon=True,
                                 args=(self._spawn_args, commands_r, replies_w,
                                       logging.getLogger().getEffectiveLevel(), os.getpid()))
        proc.start()
        commands_r.close()
        replies_w.close()
        os.set_blocking(commands_w.fileno(), False)
        os.set_blocking(replies_r.fileno(), False)
        self._proc, self._send, self._recv = proc, commands_w, replies_r
        self._started_at = time.monotonic()
        assert self._loop is not None
        self._loop.add_reader(replies_r.fileno(), self._on_readable)

    def close(self) -> None:
        """Stop taking commands; the process finishes what it read, then exits on end of input."""
        if self._closed or self._proc is None:
            self._closed = True
            return
        self._closed = True
        if self._restart_timer is not None:  # between two processes: start the next now, to answer the queue
            self._restart_timer.cancel()
            self._restart()
        self._flush()
        deadline = time.monotonic() + 30
        while self._proc is not None and self._pending and time.monotonic() < deadline:  # answer what is in flight
            if self._out:
                self._flush()
            self._read_replies(block=True)
        if self._proc is None:  # it died meanwhile: already cleaned up
            return
        assert self._loop is not None
        self._loop.remove_reader(self._recv.fileno())
        with contextlib.suppress(OSError):
            self._loop.remove_writer(self._send.fileno())
        self._send.close()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._recv.close()
        self._fail_pending(LedgerUnavailable("the gateway is stopping"))

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Called on the loop after each answer that stored events (keep it quick)."""
        self._listeners.append(listener)

    # -- commands ------------------------------------------------------------------------------
    def submit_async(self, name: str, kwargs: dict[str, Any], waiter: asyncio.Future[Any]) -> None:
        if self._closed:  # the gateway is stopping: the caller hears it through its future
            if not waiter.done():
                waiter.set_exception(LedgerUnavailable("the gateway is stopping"))
            return
        if name not in JOB_COMMANDS:
            raise ValueError(f"{name!r} is not a ledger job command")
        self._seq += 1
        self._pending[self._seq] = (name, kwargs, waiter)
        self._outbox.append((self._seq, name, kwargs))
        if not self._flush_scheduled:  # one frame, one write per loop iteration
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._send is None:  # between two processes: the outbox waits, in order, for the next one
            return
        if self._outbox:
            self._out += _frame(self._outbox)
            self._outbox = []
        if not self._out:
            return
        try:
            fd = self._send.fileno()
            n = os.write(fd, self._out)
        except BlockingIOError:
            n = 0
        except (BrokenPipeError, OSError):
            # The process died: the reader side notices and sends every unanswered command again,
            # in order, from ``_pending`` (nothing here is the only copy).
            return
        del self._out[:n]
        assert self._loop is not None
        if self._out:
            self._loop.add_writer(fd, self._flush)
        else:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_writer(fd)

    # -- answers -------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        self._read_replies(block=False)

    def _read_replies(self, block: bool) -> None:
        fd = self._recv.fileno()
        if block:
            select.select([fd], [], [], 1.0)
        eof = False
        while True:
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                break
            if not data:
                eof = True  # the process is gone: take its complete answers first
                break
            self._in += data
            if len(data) < READ_CHUNK:
                break
        try:
            frames = _unframe(self._in)
        except Exception:  # cannot happen short of a bug: start afresh rather than wedge callers
            log.exception("an unreadable answer from the ledger writer; replacing it")
            self._proc.kill()
            return
        dirty = False
        for results, stored in frames:
            dirty = dirty or stored
            for seq, ok, value in results:
                entry = self._pending.pop(seq, None)
                if entry is None:
                    continue
                fut = entry[2]
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        if dirty:
            for listener in self._listeners:
                listener()
        if eof:
            self._lost()

    def _lost(self) -> None:
        """The process died: start another and send it, in their original order, every command
        not answered: those the lost one may have read first, then any submitted meanwhile."""
        assert self._loop is not None
        self._loop.remove_reader(self._recv.fileno())
        with contextlib.suppress(OSError, ValueError):
            self._loop.remove_writer(self._send.fileno())
        self._send.close()
        self._recv.close()
        self._send = self._recv = None
        self._proc.join(1)
        self._out.clear()
        self._in.clear()  # a reply it was cut off writing: its commands are sent again
        self._outbox = []  # rebuilt from _pending, which holds every unanswered command
        self._in_doubt = set(self._pending)
        log.error("the ledger writer process exited (%s); starting another, %d command(s) to recover",
                  self._proc.exitcode, len(self._in_doubt))
        if self._closed:
            self._proc = None
            self._fail_pending(LedgerUnavailable("the ledger writer exited"))
            return
        self.restarts += 1
        self.recovered += len(self._in_doubt)
        quick = time.monotonic() - self._started_at < 1.0  # dying at start-up: do not spin
        self._restart_timer = self._loop.call_later(1.0 if quick else 0.0, self._restart)

    def _restart(self) -> None:
        self._restart_timer = None
        self._spawn()
        assert self._loop is not None
        for seq in sorted(self._in_doubt & self._pending.keys()):
            name, kwargs, fut = self._pending[seq]
            if name == "accept_job":
                # Saved or not, the job must not stay open: abandon it in the acceptance's place
                # (before anything submitted after it), and tell the caller.
                if not fut.done():
                    fut.set_exception(LedgerUnavailable("the ledger writer restarted; nothing was charged"))
                fut = self._loop.create_future()
                fut.add_done_callback(_log_failure)
                name, kwargs = "abandon_job", {"job_id": kwargs["job_id"],
                                               "reason": "the ledger writer restarted while accepting it"}
            elif name == "finish_job":
                kwargs = {**kwargs, "resume": True}  # the saved receipt comes back if it landed
            self._pending[seq] = (name, kwargs, fut)
        self._in_doubt = set()
        # Every unanswered command, in submission order; answers to futures already done are dropped.
        self._outbox = [(seq, name, kwargs) for seq, (name, kwargs, _fut) in sorted(self._pending.items())]
        self._flush()

    def _fail_pending(self, exc: LedgerError) -> None:
        for _name, _kwargs, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()


class LedgerWriterThread(_JobWriter):
    """The same interface over the ledger's own writer thread (one process, one GIL): for
    embedding, tests that want one process, and as the baseline the benchmarks compare with."""

    def __init__(self, ledger: Any) -> None:
        self._ledger = ledger

    @property
    def closed(self) -> bool:
        return self._ledger.writer.closed

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def close(self) -> None:
        pass  # the ledger's writer is closed with the ledger

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        self._ledger.writer.add_commit_listener(listener)

    def submit_async(self, name: str, kwargs: dict[str, Any], waiter: asyncio.Future[Any]) -> None:
        self._ledger.writer.submit_async(self._ledger.command(name, kwargs), self._loop, waiter)
