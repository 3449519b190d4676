"""Protocol v2 on the worker side: store each ``receipt``/``verdict`` frame, then acknowledge it.

The acknowledgement goes out only after the store has fsynced the record, so the gateway stops
resending only what survives a crash. A frame the store refuses (wrong hash, foreign signature,
another worker's receipt, arithmetic that does not recompute) is logged as an error and answered
with ``ok: false`` and the reason; a malformed frame is logged as an error and the worker keeps
serving. Nothing already stored is touched in either case.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from basis.protocol import ReceiptAck, ReceiptFrame, VerdictFrame
from basis.worker.store import ReceiptRejected, ReceiptStore

log = logging.getLogger("basis.worker")


class ReceiptInbox:
    def __init__(self, store: ReceiptStore) -> None:
        self.store = store
        self.stored = 0
        self.rejected: list[tuple[str, str]] = []  # (hash or frame type, reason)
        self.malformed_frames: list[str] = []
        self._queue: asyncio.Queue[tuple[ReceiptFrame | VerdictFrame, Callable[[Any], Awaitable[None]]]] | None = None
        self._consumer: asyncio.Task[None] | None = None

    def submit(self, msg: ReceiptFrame | VerdictFrame, send: Callable[[Any], Awaitable[None]]) -> None:
        """Handle ``msg`` off the receive loop (an fsync must not delay the next job), in arrival
        order (a verdict follows its receipt)."""
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._consumer is None or self._consumer.done():
            self._consumer = asyncio.create_task(self._consume(self._queue))
        self._queue.put_nowait((msg, send))

    async def _consume(self, queue: asyncio.Queue) -> None:
        while True:
            msg, send = await queue.get()
            try:
                await self.handle(msg, send)
            except Exception as exc:  # the connection went away: stored frames are acknowledged on resend
                log.info("acknowledging %s %s failed: %s", msg.type, msg.hash, exc)

    async def handle(self, msg: ReceiptFrame | VerdictFrame, send: Callable[[Any], Awaitable[None]]) -> None:
        kind = msg.type
        try:
            if isinstance(msg, ReceiptFrame):
                added = await asyncio.to_thread(self.store.add_receipt, core=msg.core, hash=msg.hash,
                                                signature=msg.signature)
            else:
                added = await asyncio.to_thread(
                    self.store.add_verdict, job_id=msg.job_id, hash=msg.hash, verdict=msg.verdict,
                    method=msg.method, tokens=msg.tokens, statistic=msg.statistic,
                    reward_forfeited=msg.reward_forfeited, ids_sha256=msg.ids_sha256)
        except ReceiptRejected as exc:
            self.rejected.append((msg.hash, str(exc)))
            log.error("REJECTED %s %s of job %s: %s", kind, msg.hash, msg.job_id, exc)
            await send(ReceiptAck(kind=kind, hash=msg.hash, ok=False, error=str(exc)))
            return
        except OSError as exc:  # not stored: no acknowledgement, the gateway resends it
            log.error("could not store %s %s: %s", kind, msg.hash, exc)
            return
        if added:
            self.stored += 1
        await send(ReceiptAck(kind=kind, hash=msg.hash))

    def malformed(self, raw: Any, exc: Exception) -> None:
        """A frame that did not parse: name it loudly when it was meant as a receipt or verdict."""
        try:
            kind = json.loads(raw).get("type")
        except (ValueError, AttributeError):
            kind = None
        if kind in ("receipt", "verdict"):
            self.malformed_frames.append(kind)
            log.error("malformed %s frame from the gateway (not stored, not acknowledged): %s", kind, exc)
