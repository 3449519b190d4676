"""One live gateway per node id. A node id names whose open jobs a restarting gateway may end as
interrupted, so two live gateways with one id would end each other's jobs.

The lock dies with the process: an OS file lock under the home (SQLite, and every store: the
views live there too) and, on PostgreSQL, a session advisory lock keyed by the node id, held on a
connection of its own, so gateways on other hosts sharing the store are refused as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import time
from typing import Any

from basis.config import Settings


class NodeIdInUse(RuntimeError):
    """Another live gateway holds this node id."""


def advisory_key(node_id: str) -> int:
    """The PostgreSQL advisory lock key of a node id: a signed 64-bit integer."""
    return int.from_bytes(hashlib.sha256(b"basis-node\0" + node_id.encode()).digest()[:8], "big", signed=True)


class NodeLock:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.node_id)
        self.path = settings.home / f"node-{safe}.lock"
        self._fd: int | None = None
        self._pg: Any = None

    @classmethod
    def acquire(cls, settings: Settings) -> NodeLock:
        """Hold ``settings.node_id`` for this process; raises NodeIdInUse naming the holder."""
        lock = cls(settings)
        lock._lock_file()
        try:
            if settings.database_url:
                lock._lock_postgres(settings.database_url)
        except BaseException:
            lock.release()
            raise
        return lock

    def _refuse(self, holder: str) -> NodeIdInUse:
        return NodeIdInUse(
            f"node id {self.node_id!r} is held by another live gateway ({holder}). Stop that gateway, or give "
            f"this one its own id: set BASIS_NODE_ID (or use another BASIS_HOME, whose derived id differs)")

    def _lock_file(self) -> None:
        self.settings.ensure_home()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                holder = {}
            os.close(fd)
            desc = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
                    if holder else "a process starting up")
            raise self._refuse(f"{desc}; lock file {self.path}") from None
        except BaseException:
            os.close(fd)
            raise
        me = json.dumps({"node_id": self.node_id, "pid": os.getpid(), "host": socket.gethostname(),
                         "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, me, 0)
        self._fd = fd

    def _lock_postgres(self, url: str) -> None:
        import psycopg

        from basis.config import PG_MAX_OVERFLOW, PG_POOL_SIZE, _pool_setting
        from basis.ledger.postgres_store import _NO_SLOTS, ConnectionsRefused, refusal_message

        key = advisory_key(self.node_id)
        try:
            conn = psycopg.connect(url, autocommit=True, application_name=f"basis-node {self.node_id}"[:63])
        except psycopg.OperationalError as exc:  # out of slots: name the settings, as the ledger's pools do
            if not any(words in str(exc) for words in _NO_SLOTS):
                raise
            size = _pool_setting("BASIS_PG_POOL_SIZE", PG_POOL_SIZE, minimum=1)
            overflow = _pool_setting("BASIS_PG_MAX_OVERFLOW", PG_MAX_OVERFLOW, minimum=0)
            raise ConnectionsRefused(refusal_message(str(exc).strip().splitlines()[-1], size, size + overflow)) \
                from exc
        try:
            if conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                self._pg = conn
                return
            unsigned = key & (2**64 - 1)
            row = conn.execute(
                "SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = %s "
                "AND l.objid::bigint = %s AND l.objsubid = 1",
                (unsigned >> 32, unsigned & 0xFFFFFFFF)).fetchone()
        finally:
            if self._pg is None:
                conn.close()
        desc = (f"PostgreSQL session pid {row[0]} ({row[1]!r}, client {row[2] or 'local socket'}, since {row[3]})"
                if row else "a PostgreSQL session")
        raise self._refuse(f"{desc} holds the advisory lock {key} of this id")

    def __del__(self) -> None:  # a runtime that failed to start must not keep its id
        self.release()

    def release(self) -> None:
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.close()  # ends the session: the advisory lock goes with it
            self._pg = None
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None
