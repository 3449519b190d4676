"""Bearer API keys, looked up by hash; a small per-account rate limit."""

from __future__ import annotations

import time
from uuid import UUID

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from basis.gateway.errors import APIError


async def bearer_account(request: Request) -> UUID:
    """Async, so FastAPI runs it on the loop: a known key is a dict lookup, not a thread hop."""
    runtime = request.app.state.runtime
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if not header:
        raise APIError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer sk-basis-...'.",
                       code="missing_api_key")
    if scheme.lower() != "bearer" or not key.strip():
        raise APIError(401, "Malformed Authorization header: expected 'Bearer <key>'.", code="invalid_api_key")
    key = key.strip()
    account_id = runtime.ledger.cached_account(key)
    if account_id is None:  # first sight of this key: a store read, off the loop
        account_id = await run_in_threadpool(runtime.ledger.authenticate, key)
    if account_id is None:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    if not runtime.rate_limiter.allow(account_id):
        raise APIError(429, "Rate limit reached for requests on this account; slow down.",
                       code="rate_limit_exceeded")
    return account_id


class RateLimiter:
    """Token bucket per account: ``rate`` requests per second with bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[UUID, tuple[float, float]] = {}

    def allow(self, account_id: UUID) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        tokens, last = self._buckets.get(account_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[account_id] = (tokens, now)
            return False
        self._buckets[account_id] = (tokens - 1, now)
        return True
