"""A live worker connection (what its hello advertised, what it runs now) and the hooks it fires."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from basis.gateway.workers.jobs import JobChannel

log = logging.getLogger("basis.gateway.workers")

Hook = Callable[..., Any | Awaitable[Any]]


@dataclass
class WorkerConnection:
    conn_id: str
    address: str  # checksummed reward address
    capacity: dict[str, int]  # model -> capacity
    binding_hashes: dict[str, str]
    software: str
    protocol_version: int
    send_text: Callable[[str], Awaitable[None]]
    close: Callable[[int, str], Awaitable[None]]
    connected_at: float
    last_seen: float
    reported_active: int = 0
    features: frozenset[str] = frozenset()  # optional job features from its hello (e.g. "json_schema")
    active: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, JobChannel] = field(default_factory=dict)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    alive: bool = True

    @property
    def active_total(self) -> int:
        return sum(self.active.values())

    @property
    def capacity_total(self) -> int:
        return sum(self.capacity.values())

    def spare(self, model: str) -> int:
        return self.capacity.get(model, 0) - self.active.get(model, 0)

    async def send(self, text: str) -> None:
        async with self.send_lock:
            await self.send_text(text)


@dataclass(frozen=True)
class WorkerInfo:
    address: str
    models: dict[str, int]
    active_jobs: int
    capacity: int
    last_seen: float
    software: str
    deadline_misses: int = 0  # jobs this address lost to a deadline since the gateway started


async def call_hook(hook: Hook | None, *args: Any) -> None:
    if hook is None:
        return
    try:
        res = hook(*args)
        if inspect.isawaitable(res):
            await res
    except Exception:  # a broken hook must not take the worker network down
        log.exception("worker hook %r failed", hook)

