"""Live projection in a process of its own, so the views' CPU stays off the gateway's GIL.

The gateway wakes it after each group commit through a pipe, never a shared lock: a
projector killed at any moment must not be able to wedge the ledger writer. It also polls. It
reads the event store and writes only the views file, with tracking, so a crash or restart of
either process loses nothing: the next run resumes from the tracked position.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import select
import threading
import time
from pathlib import Path
from typing import Any

from basis.units import Seconds

log = logging.getLogger(__name__)


def _project(env: dict[str, str], views_path: str, wakes: Any, interval: Seconds, gather: Seconds,
             log_level: int, parent_pid: int) -> None:
    from basis.lifeline import die_with_parent, leave_interrupts_to_parent

    # Views of a gateway that is gone: another gateway's projector takes over.
    die_with_parent(parent_pid, name="basis-projector")
    leave_interrupts_to_parent()

    from basis.ledger.projections.projector import Projector
    from basis.ledger.store import LedgerStore
    from basis.observability.logging import configure_logging

    configure_logging(log_level)  # JSON lines on stderr, like the gateway's own

    store = LedgerStore(env)
    projector = Projector(store, Path(views_path))
    fd = wakes.fileno()  # raw bytes, one per wake-up: no framing a partial write could break
    try:
        while True:
            if select.select([fd], [], [], interval)[0]:
                time.sleep(gather)  # let one page take many commits
                signals = os.read(fd, 65536)
                if not signals or b"q" in signals:  # the gateway is gone, or asks us to stop
                    return
            try:
                projector.catch_up()
            except Exception:  # keep going; the next poll retries from the tracked position
                log.exception("projection failed; will retry")
                time.sleep(1.0)
    finally:
        projector.db.close()
        store.close()


class ProjectorProcess:
    def __init__(self, env: dict[str, str], views_path: Path, interval: Seconds = 0.5,
                 gather: Seconds = 0.05) -> None:
        self._ctx = mp.get_context("spawn")
        self._args = (dict(env), str(views_path))
        self._interval, self._gather = interval, gather
        self._proc: Any = None
        self._send: Any = None
        self._watchdog: threading.Thread | None = None
        self._stopping = threading.Event()

    def _spawn(self) -> None:
        receive, send = self._ctx.Pipe(duplex=False)
        os.set_blocking(send.fileno(), False)  # a full pipe already holds a wake-up
        proc = self._ctx.Process(target=_project, name="basis-projector", daemon=True,
                                 args=(*self._args, receive, self._interval, self._gather,
                                       logging.getLogger().getEffectiveLevel(), os.getpid()))
        proc.start()
        receive.close()
        old, self._send, self._proc = self._send, send, proc
        if old is not None:
            old.close()

    def start(self) -> None:
        self._spawn()

        # A projector that died is started again; it resumes where it was. One started here dies
        # with this thread (parent-death signal), so stop() joins the projector before the thread.
        def watch() -> None:
            while not self._stopping.wait(1.0):
                if not self._proc.is_alive() and not self._stopping.is_set():
                    log.warning("the projector process exited (%s); restarting it", self._proc.exitcode)
                    self._spawn()

        self._watchdog = threading.Thread(target=watch, name="basis-projector-watchdog", daemon=True)
        self._watchdog.start()

    def _signal(self, byte: bytes) -> None:
        with contextlib.suppress(OSError, ValueError):  # full (a wake-up is pending), or dead: fine
            os.write(self._send.fileno(), byte)

    def wake(self) -> None:
        """Called on the ledger writer after each commit: never blocks."""
        self._signal(b"w")

    def stop(self) -> None:
        self._stopping.set()
        if self._proc is not None:
            self._signal(b"q")
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(5)
        if self._watchdog is not None:
            self._watchdog.join(5)
        if self._proc is not None:
            if self._proc.is_alive():  # started by the watchdog just before it saw the stop
                self._signal(b"q")
                self._proc.join(10)
            self._send.close()
