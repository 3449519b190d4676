"""Frames owed to workers (protocol v2, DESIGN 1.7): signed receipts and verdicts of their jobs.

``WorkerHub.notify(address, frame)`` queues a ``receipt`` or ``verdict`` frame for a worker. It is
sent at once when that worker is connected with version 2, and again on every later v2
connection until the worker acknowledges it (``receipt_ack``): a worker that was away, or lost a
frame with its connection, still gets it. The outbox is memory only and bounded per worker (a
gateway restart forgets it; the ledger keeps every receipt, served by the receipts API). A
version-1 connection cannot take these frames: its outbox is emptied. ``notify`` may be called
from any thread (the verifier records verdicts off the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from typing import Any

from basis.gateway.workers.connection import WorkerConnection
from basis.protocol import RECEIPTS_VERSION, ReceiptAck, ReceiptFrame, VerdictFrame, dump

log = logging.getLogger("basis.gateway.workers")

OUTBOX_LIMIT = 10_000  # frames kept per worker awaiting acknowledgement


def frame_key(kind: str, receipt_hash: str) -> str:
    return f"{kind}:{receipt_hash.lower()}"


class WorkerOutbox:
    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        self.limit = limit
        self._boxes: dict[str, OrderedDict[str, str]] = {}
        self._lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.acked = 0
        self.refused: list[tuple[str, str, str]] = []  # (worker, key, error) the worker refused

    def pending(self, address: str) -> list[str]:
        with self._lock:
            return list(self._boxes.get(address.lower(), {}))

    def put(self, address: str, frame: ReceiptFrame | VerdictFrame) -> str | None:
        """Queue ``frame``; returns the frame's JSON text when it is new (to send now)."""
        key = frame_key(frame.type, frame.hash)
        text = dump(frame)
        with self._lock:
            box = self._boxes.setdefault(address.lower(), OrderedDict())
            if key in box:
                return None
            box[key] = text
            while len(box) > self.limit:
                dropped, _ = box.popitem(last=False)
                log.warning("worker %s outbox full: %s dropped unacknowledged", address, dropped)
        return text

    def frames(self, address: str) -> list[str]:
        with self._lock:
            return list(self._boxes.get(address.lower(), {}).values())

    def discard(self, address: str) -> int:
        with self._lock:
            return len(self._boxes.pop(address.lower(), {}))

    def ack(self, address: str, msg: ReceiptAck) -> None:
        key = frame_key(msg.kind, msg.hash)
        with self._lock:
            found = self._boxes.get(address.lower(), {}).pop(key, None)
        if found is None:
            return
        if msg.ok:
            self.acked += 1
        else:
            # The worker refused what the gateway signed: loud, since one side is wrong.
            self.refused.append((address, key, msg.error))
            log.error("worker %s refused %s: %s", address, key, msg.error)


async def send_quietly(conn: Any, text: str) -> None:
    with contextlib.suppress(Exception):  # unacknowledged frames are resent on the next connection
        await conn.send(text)


def wants_receipts(conn: Any) -> bool:
    return bool(conn is not None and conn.alive and conn.protocol_version >= RECEIPTS_VERSION)


class OwedFrameDelivery:
    """Part of ``WorkerHub``: queues receipt/verdict frames and sends them to v2 connections."""

    outbox: WorkerOutbox
    _sends: set[asyncio.Future[None]]

    def notify(self, address: str, frame: ReceiptFrame | VerdictFrame) -> None:
        """Queue ``frame`` for worker ``address`` until it acknowledges it; sent now if it is
        connected with v2, else on its next v2 connection. Safe from any thread."""
        text = self.outbox.put(address, frame)
        if text is None:
            return
        loop = self.outbox.loop
        if loop is None or loop.is_closed():
            return  # no connection served yet: sent on connect
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._send_owed(address, text)
        else:
            loop.call_soon_threadsafe(self._send_owed, address, text)

    def _send_owed(self, address: str, text: str) -> None:
        conn = self._conns.get(address.lower())
        if wants_receipts(conn):
            task = asyncio.ensure_future(send_quietly(conn, text))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _deliver_owed(self, conn: WorkerConnection) -> None:
        if not wants_receipts(conn):
            if self.outbox.discard(conn.address):
                log.info("worker %s speaks protocol %d: its receipts stay in the ledger only", conn.address,
                         conn.protocol_version)
            return
        for text in self.outbox.frames(conn.address):
            await send_quietly(conn, text)
