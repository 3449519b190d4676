"""Bearer API keys, looked up by hash; a per-account rate limit and each key's own limits.

Rate limits are local to each gateway (a key's requests per minute are counted per gateway
process, as BASIS_RATE_LIMIT_RPS is): N gateways let through up to N times a key's rate.
Revocation and spend caps are not: the job's acceptance checks them in the shared store."""

from __future__ import annotations

import time
from uuid import UUID

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from basis.gateway.errors import APIError
from basis.ledger.keys import KeyEntry


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
    entry = runtime.ledger.cached_key(key)
    if entry is None:  # first sight of this key (or a stale one): a store read, off the loop
        entry = await run_in_threadpool(runtime.ledger.authenticate_key, key)
    if entry is None:
        raise APIError(401, "Incorrect API key provided (unknown or revoked).", code="invalid_api_key")
    account_id = entry.account_id
    request.state.api_key = entry  # its jobs: checked against revocation and the cap, tokens counted
    if not runtime.rate_limiter.allow(account_id):
        raise APIError(429, "Rate limit reached for requests on this account; slow down.",
                       code="rate_limit_exceeded")
    refused = runtime.key_limiter.refuse(entry)
    if refused is not None:
        raise APIError(429, refused, code="rate_limit_exceeded")
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


class KeyRateLimiter:
    """A key's requests per minute and tokens per minute, as token buckets that refill smoothly
    (a full minute's worth may burst). Tokens are counted as jobs spend them (prompt at
    acceptance, output at the end), so a key is refused once its bucket is empty, and the
    request that empties it is not cut short."""

    def __init__(self) -> None:
        self._requests: dict[UUID, tuple[float, float]] = {}
        self._tokens: dict[UUID, tuple[float, float]] = {}

    @staticmethod
    def _level(buckets: dict[UUID, tuple[float, float]], key_id: UUID, per_minute: int, now: float) -> float:
        level, last = buckets.get(key_id, (float(per_minute), now))
        return min(float(per_minute), level + (now - last) * per_minute / 60.0)

    def refuse(self, entry: KeyEntry) -> str | None:
        """None to let the request through (counting it), else the 429 message."""
        now = time.monotonic()
        rpm, tpm = entry.requests_per_minute, entry.tokens_per_minute
        if tpm is not None and self._level(self._tokens, entry.key_id, tpm, now) <= 0:
            return f"Rate limit reached for tokens on this API key: {tpm} tokens per minute; slow down."
        if rpm is not None:
            level = self._level(self._requests, entry.key_id, rpm, now)
            if level < 1:
                self._requests[entry.key_id] = (level, now)
                return f"Rate limit reached for requests on this API key: {rpm} per minute; slow down."
            self._requests[entry.key_id] = (level - 1, now)
        return None

    def spend_tokens(self, entry: KeyEntry | None, tokens: int) -> None:
        if entry is None or entry.tokens_per_minute is None or tokens <= 0:
            return
        now = time.monotonic()
        level = self._level(self._tokens, entry.key_id, entry.tokens_per_minute, now)
        self._tokens[entry.key_id] = (level - tokens, now)
