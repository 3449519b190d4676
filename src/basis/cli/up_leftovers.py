"""What `basis up` started, kept under its home (``up.pids.json``), so the next `basis up` recognises
its own leftovers, and a port held by anything else is named with the process that holds it.

Its children die with it (parent-death signal), so leftovers are rare: a `basis up` of an older
version, or one whose children could not arm the signal. Each is recognised by pid *and* start
time and command line, never by pid alone (pids are reused), and stopped as `basis up` stops it:
anvil with SIGINT (it writes its state), the worker with SIGTERM.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import typer

from basis import lifeline

PIDS_FILE = "up.pids.json"
_STOP_SIGNAL = {"anvil": signal.SIGINT, "worker": signal.SIGTERM}


def record(home: Path, **processes: int) -> None:
    """Write the identities of ``role=pid`` (this `basis up` included, as ``up``)."""
    entries = {"up": lifeline.identity(os.getpid())}
    entries.update({role: lifeline.identity(pid) for role, pid in processes.items()})
    path = home / PIDS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: v for k, v in entries.items() if v is not None}, indent=2) + "\n")
    tmp.replace(path)


def forget(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (home / PIDS_FILE).unlink()


def stop_leftovers(home: Path) -> list[str]:
    """Refuse if the `basis up` that wrote the file still runs; stop its children that outlived it.
    Returns what was stopped, in words."""
    path = home / PIDS_FILE
    try:
        entries: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    running = entries.get("up")
    if isinstance(running, dict) and running.get("pid") != os.getpid() and lifeline.same_process(running):
        typer.echo(f"error: `basis up` is already running on {home} ({lifeline.describe(running['pid'])}); "
                   "stop it (Ctrl-C or SIGTERM) first.", err=True)
        raise typer.Exit(2)
    stopped = []
    for role, entry in entries.items():
        if role == "up" or not isinstance(entry, dict) or not lifeline.same_process(entry):
            continue
        pid = entry["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, _STOP_SIGNAL.get(role, signal.SIGTERM))
        deadline = time.monotonic() + 10
        while lifeline.same_process(entry) and time.monotonic() < deadline:
            time.sleep(0.05)
        if lifeline.same_process(entry):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stopped.append(f"{role} (pid {pid})")
    forget(home)
    return stopped


def check_port(host: str, port: int, option: str) -> None:
    """Fail clearly if ``host:port`` is taken, naming the process that holds it and the option to change."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    holder = lifeline.port_holder(port)
    who = lifeline.describe(holder) if holder is not None else "a process this user cannot see"
    raise typer.BadParameter(f"{host}:{port} is already in use by {who}; stop it, or pick another port "
                             f"with {option}", param_hint=option)
