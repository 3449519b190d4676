"""The per-connection session: challenge, hello, admission, then the frame loop until the worker leaves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from pydantic import ValidationError

from basis.gateway.workers.connection import WorkerConnection, call_hook
from basis.gateway.workers.jobs import ConnectionLost
from basis.protocol import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Challenge,
    Done,
    Error,
    Heartbeat,
    HeartbeatAck,
    Hello,
    ReceiptAck,
    Reject,
    Tokens,
    Welcome,
    challenge_text,
    dump,
    new_nonce,
    parse_worker_message,
    recover_signer,
)
from basis.protocol.messages import FEATURE_LOGPROBS, version_features

log = logging.getLogger("basis.gateway.workers")


class WorkerSessions:
    """Part of ``WorkerHub``: serves one WebSocket per worker from handshake to disconnect."""

    async def serve(self, ws: Any) -> None:
        """Run one worker connection (a Starlette/FastAPI ``WebSocket``) to its end."""
        from starlette.websockets import WebSocketDisconnect

        await ws.accept()
        self.outbox.loop = asyncio.get_running_loop()

        async def reject(code: str, message: str) -> None:
            with contextlib.suppress(Exception):
                await ws.send_text(dump(Reject(code=code, message=message)))
                await ws.close(code=1008, reason=code)

        nonce = new_nonce()
        expires_at = int(self.clock()) + self.challenge_ttl
        challenge = Challenge(
            gateway_address=self.gateway_address,
            chain_id=self.chain_id,
            nonce=nonce,
            expires_at=expires_at,
            protocol_version=PROTOCOL_VERSION,
            heartbeat_interval=self.heartbeat_interval,
        )
        try:
            await ws.send_text(dump(challenge))
            raw = await asyncio.wait_for(ws.receive_text(), timeout=max(1.0, float(self.challenge_ttl)))
        except (TimeoutError, WebSocketDisconnect):
            await reject("timeout", "no hello before the challenge expired")
            return
        try:
            hello = parse_worker_message(raw)
        except ValidationError as exc:
            await reject("bad_message", f"expected hello: {exc.errors()[:1]}")
            return
        if not isinstance(hello, Hello):
            await reject("bad_message", "expected hello")
            return
        if hello.protocol_version not in SUPPORTED_VERSIONS:
            await reject(
                "unsupported_version",
                f"protocol {hello.protocol_version} not supported; "
                f"gateway speaks {sorted(SUPPORTED_VERSIONS)}",
            )
            return
        if self.clock() > expires_at:
            await reject("expired", "challenge expired")
            return
        text = challenge_text(
            gateway_address=self.gateway_address,
            chain_id=self.chain_id,
            nonce=nonce,
            expires_at=expires_at,
            protocol_version=hello.protocol_version,
        )
        try:
            signer = await asyncio.to_thread(recover_signer, text, hello.signature)
        except ValueError:
            signer = ""
        if not signer or signer.lower() != hello.worker_address.lower():
            await reject("bad_signature", "signature does not match worker_address for this challenge")
            return
        if self.is_suspended is not None and await asyncio.to_thread(self.is_suspended, signer):
            await reject("suspended", f"worker {signer.lower()} is suspended from this network (see its verdicts)")
            return
        self.suspended.discard(signer.lower())  # reinstated since
        if not hello.models:
            await reject("no_models", "advertise at least one model")
            return
        for offer in hello.models:
            expected = self.binding_hashes.get(offer.model)
            if expected is None:
                await reject("unknown_model", f"model {offer.model!r} is not in this gateway's catalog")
                return
            if offer.binding_hash.lower() != expected.lower():
                await reject(
                    "binding_mismatch",
                    f"model {offer.model!r}: binding hash {offer.binding_hash} != gateway's {expected}",
                )
                return

        now = self.clock()

        async def _close(code: int, reason: str) -> None:
            await ws.close(code=code, reason=reason)

        conn = WorkerConnection(
            conn_id=uuid.uuid4().hex,
            address=signer,
            capacity={o.model: o.capacity for o in hello.models},
            binding_hashes={o.model: o.binding_hash for o in hello.models},
            software=hello.software,
            protocol_version=hello.protocol_version,
            # logprobs come with protocol v3, never from a list an older worker might send
            features=(frozenset(hello.features) - {FEATURE_LOGPROBS}) | version_features(hello.protocol_version),
            send_text=ws.send_text,
            close=_close,
            connected_at=now,
            last_seen=now,
        )
        await conn.send(
            dump(
                Welcome(
                    worker_address=signer,
                    protocol_version=hello.protocol_version,
                    heartbeat_interval=self.heartbeat_interval,
                    models=list(conn.capacity),
                )
            )
        )
        key = signer.lower()
        old = self._conns.get(key)
        self._conns[key] = conn
        self._wake_slot_waiters()
        if old is not None:  # the same key reconnected: the newest connection wins
            await self._drop(old, "replaced by a new connection", notify=False)
            with contextlib.suppress(Exception):
                await old.close(1000, "replaced")
        else:
            await call_hook(self.on_worker_online, signer, dict(conn.capacity))
        log.info("worker %s online: %s", signer, conn.capacity)
        await self._deliver_owed(conn)

        reason = "disconnected"
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(ws.receive_text(), timeout=3 * self.heartbeat_interval)
                except TimeoutError:
                    reason = "heartbeat timeout"
                    with contextlib.suppress(Exception):
                        await ws.close(code=4000, reason="heartbeat timeout")
                    break
                conn.last_seen = self.clock()
                try:
                    msg = parse_worker_message(raw)
                except ValidationError:
                    log.warning("worker %s sent a malformed frame; ignored", signer)
                    continue
                if isinstance(msg, Heartbeat):
                    conn.reported_active = msg.active_jobs
                    await conn.send(dump(HeartbeatAck(active_jobs=conn.active_total)))
                elif isinstance(msg, Tokens | Done | Error):
                    ch = conn.jobs.get(msg.job_id)
                    if ch is None or ch.ended:
                        continue  # unknown, finished or cancelled job: ignore late frames
                    if not isinstance(msg, Tokens):
                        ch.ended = True
                    ch.queue.put_nowait(msg)
                elif isinstance(msg, ReceiptAck):
                    self.outbox.ack(signer, msg)
                # a second hello or anything else: ignored
        except WebSocketDisconnect:
            reason = "disconnected"
        except Exception as exc:  # socket errors
            reason = f"connection error: {exc}"
        finally:
            if self._conns.get(key) is conn:
                del self._conns[key]
                await self._drop(conn, reason, notify=True)
            else:
                await self._drop(conn, reason, notify=False)

    async def _drop(self, conn: WorkerConnection, reason: str, *, notify: bool) -> None:
        if not conn.alive:
            return
        conn.alive = False
        for ch in list(conn.jobs.values()):
            if not ch.ended:
                ch.ended = True
                ch.queue.put_nowait(ConnectionLost(reason))
        log.info("worker %s offline: %s", conn.address, reason)
        if notify:
            await call_hook(self.on_worker_offline, conn.address)

    async def close(self) -> None:
        """Disconnect every worker (gateway shutdown)."""
        for conn in list(self._conns.values()):
            with contextlib.suppress(Exception):
                await conn.close(1001, "gateway shutting down")
