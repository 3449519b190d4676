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
