"""Child processes that die with their parent, and the /proc facts to recognise a process again.

A gateway's writer and projector processes, and under `basis up` the anvil and the worker, must
not outlive the process that started them: a writer that lives on after its gateway is SIGKILLed
keeps committing job endings for clients that were already cut off. On Linux the child asks the
kernel for a signal when its parent exits (``prctl(PR_SET_PDEATHSIG)``), then checks that the
parent is still the one it expects: a parent that died before the signal was armed would
otherwise go unnoticed. Elsewhere a thread in the child polls the parent's pid.

The kernel sends the signal when the *thread* that started the child exits, so start children
from a thread that lives as long as they do (the event loop's or the main thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # loaded before any fork: a pre-exec hook must not load libraries


def _load_libc_signal() -> Callable[..., object] | None:
    try:
        fn = ctypes.CDLL(None).signal
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_void_p], ctypes.c_void_p
    return fn


_LIBC_SIGNAL = _load_libc_signal()  # libc's, not Python's: a pre-exec hook may run off the main thread


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL, name: str | None = None) -> None:
    """In the child: receive ``sig`` when ``parent_pid`` exits; exit at once if it already has.
    ``name`` (at most 15 bytes) becomes the process's name in ps and top, where it has one."""
    if _PRCTL is not None:
        if name:
            _PRCTL(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
        _PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    elif threading.current_thread() is threading.main_thread():  # no prctl: watch the parent instead
        def watch() -> None:
            while os.getppid() == parent_pid:
                threading.Event().wait(0.2)
            os.kill(os.getpid(), sig)

        threading.Thread(target=watch, name="basis-parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


def leave_interrupts_to_parent() -> None:
    """In a helper process: ignore SIGINT. A terminal's Ctrl-C reaches the whole foreground process
    group; the parent decides when its helpers stop (a closed pipe, or the parent-death signal), so a
    commit is never cut halfway and no KeyboardInterrupt traceback is printed for an orderly stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def pre_exec_die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``subprocess.Popen(preexec_fn=...)`` that arms ``die_with_parent`` for the calling process.
    ``sig`` is also put back to its default action: a process started as a shell's background job
    (`basis up &`) has SIGINT ignored, its children inherit that through exec, and an anvil ignoring
    SIGINT would neither stop when asked nor die with its parent."""
    parent = os.getpid()

    def arm() -> None:
        if _LIBC_SIGNAL is not None:
            _LIBC_SIGNAL(int(sig), None)  # SIG_DFL
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return arm


# -- recognising a process again (pid reuse) ---------------------------------------------------
def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None if it exited."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # fields after "pid (comm)": state is field 3
    return None if fields[0] == "Z" else int(fields[19])  # a zombie has exited


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def identity(pid: int) -> dict[str, object] | None:
    """What tells this process from a later one with the same pid."""
    began = start_time(pid)
    return None if began is None else {"pid": pid, "start_time": began, "cmdline": cmdline(pid)}


def same_process(recorded: dict[str, object]) -> bool:
    """The process ``identity`` recorded is still running (not another one that reused its pid)."""
    pid = recorded.get("pid")
    if not isinstance(pid, int):
        return False
    now = identity(pid)
    return now is not None and now["start_time"] == recorded.get("start_time") and \
        now["cmdline"] == recorded.get("cmdline")


def port_holder(port: int) -> int | None:
    """The pid of a process with a TCP socket listening on ``port`` (any address), if one is visible."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        return int(entry.name)
    return None


def describe(pid: int) -> str:
    args = cmdline(pid)
    return f"pid {pid} ({' '.join(args)[:160] or 'command line not readable'})"
