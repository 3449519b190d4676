"""API keys as an operator manages them: issue, revoke, cap, rate-limit; and the key's part of a job.

Every decision is an event on the key's own stream (``ApiKey``), so it is replayed and audited
like the money. What must hold on every gateway at once (revocation, the cap) is checked by the
job's acceptance command, inside the transaction that reserves the job's credit; what may be
local to a gateway (request and token rates) is only read from here.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from basis.domain.pricing import require_amount
from basis.ledger import ids
from basis.ledger.accounts import Account, ApiKey
from basis.ledger.committer import UnitOfWork
from basis.ledger.errors import KeyCapReached, KeyRevoked, UnknownAccount, UnknownApiKey

API_KEY_PREFIX = "sk-basis-"
MAX_KEY_NAME = 200
UNSET: Any = object()  # "leave as it is" (None means "no limit")
# How long a gateway trusts what it read of a key before reading it again. Revocation and the cap
# never wait for this (the job's acceptance checks them in the store); it bounds how long another
# gateway's change of rate limits, or a revocation made elsewhere, takes to reach non-job reads.
KEY_REFRESH_S = 5.0


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """What a gateway keeps of a key it has seen: enough to authenticate and rate-limit it."""

    account_id: UUID
    key_id: UUID
    requests_per_minute: int | None
    tokens_per_minute: int | None
    read_at: float

    @classmethod
    def of(cls, record: ApiKey) -> KeyEntry:
        return cls(record.account_id, record.id, record.requests_per_minute, record.tokens_per_minute,
                   time.monotonic())

    def fresh(self) -> bool:
        return time.monotonic() - self.read_at < KEY_REFRESH_S


def new_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def key_prefix(key: str) -> str:
    return key[: len(API_KEY_PREFIX) + 4]


def check_settings(cap: Any = UNSET, requests_per_minute: Any = UNSET, tokens_per_minute: Any = UNSET) -> None:
    """Refuse a bad value before anything is recorded (ints only: money never passes a float)."""
    if cap is not UNSET and cap is not None:
        require_amount(cap, "cap")
    for name, value in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
        if value is not UNSET and value is not None:
            require_amount(value, name, positive=True)


def issue(account_id: UUID, key: str, name: str = "", cap: int | None = None,
          requests_per_minute: int | None = None, tokens_per_minute: int | None = None) -> Callable[[UnitOfWork], UUID]:
    """A command: record a new key (only its hash) on an existing account, with its settings."""
    if len(name) > MAX_KEY_NAME:
        raise ValueError(f"a key name is at most {MAX_KEY_NAME} characters")
    check_settings(cap, requests_per_minute, tokens_per_minute)
    key_hash = ids.hash_api_key(key)

    def cmd(uow: UnitOfWork) -> UUID:
        acc = uow.find(Account, account_id)
        if acc is None:
            raise UnknownAccount(f"no account {account_id}")
        acc.add_api_key(key_hash=key_hash, prefix=key_prefix(key))
        record = uow.add(ApiKey(key_hash=key_hash, account_id=account_id, name=name, prefix=key_prefix(key)))
        if cap is not None:
            record.set_cap(cap=cap)
        if requests_per_minute is not None or tokens_per_minute is not None:
            record.set_limits(requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute)
        return record.id

    return cmd


def update(key_id: UUID, *, revoke: bool = False, reason: str = "", cap: Any = UNSET,
           requests_per_minute: Any = UNSET, tokens_per_minute: Any = UNSET) -> Callable[[UnitOfWork], dict[str, Any]]:
    """A command: revoke and/or change a key's cap and limits; returns the key as described after.
    A revoked key cannot be changed any more (there is nothing left to decide about it)."""
    check_settings(cap, requests_per_minute, tokens_per_minute)

    def cmd(uow: UnitOfWork) -> dict[str, Any]:
        record = uow.find(ApiKey, key_id)
        if record is None:
            raise UnknownApiKey(f"no API key {key_id}")
        if record.revoked:
            raise KeyRevoked(f"API key {key_id} is revoked")
        if cap is not UNSET and cap != record.cap:
            record.set_cap(cap=cap)
        rpm = record.requests_per_minute if requests_per_minute is UNSET else requests_per_minute
        tpm = record.tokens_per_minute if tokens_per_minute is UNSET else tokens_per_minute
        if (rpm, tpm) != (record.requests_per_minute, record.tokens_per_minute):
            record.set_limits(requests_per_minute=rpm, tokens_per_minute=tpm)
        if revoke:
            record.revoke(reason=reason)
        return record.describe()

    return cmd


# -- the key's part of a job (called inside the ledger's job commands) ----------------------------
def check_job(uow: UnitOfWork, key_id: UUID, account_id: UUID) -> ApiKey:
    """Refuse a revoked key (``KeyRevoked``), changing nothing."""
    record = uow.find(ApiKey, key_id)
    if record is None or record.account_id != account_id:
        raise KeyRevoked(f"API key {key_id} is not a key of this account")
    if record.revoked:
        raise KeyRevoked(f"API key {key_id} was revoked")
    return record


def check_cap(record: ApiKey, amount: int) -> None:
    """Refuse a request past the key's cap (``KeyCapReached``), changing nothing, so the command
    can still be refused by the account after it. The caller then reserves ``amount`` on a
    capped key in the same transaction as the account's reservation."""
    left = record.cap_left
    if left is not None and amount > left:
        raise KeyCapReached(
            f"this request may cost up to {amount} base units; the key's spend cap of {record.cap} has "
            f"{left} left ({record.spent} spent, {record.reserved} reserved by running requests)")


def settle_for_job(uow: UnitOfWork, key_id: UUID | None, job_id: UUID, charged: int) -> None:
    """Spend a job's charge against its key's cap, if the key held a reservation for it."""
    if key_id is None:
        return
    record = uow.find(ApiKey, key_id)
    if record is None:
        return
    held = record.reservations.get(str(job_id))
    if held is not None:
        record.settle_reservation(job_id=str(job_id), released=held, charged=charged)
