"""Key management, shared by the admin HTTP API and `basis keys`: one behaviour, two faces.

Every function takes the ledger (and, to list every account, the views) and raises the ledger's
own errors; each face turns them into its refusal (an HTTP error, a CLI message).
"""

from __future__ import annotations

import contextlib
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from basis.domain.pricing import parse_amount
from basis.ledger import ids
from basis.ledger.accounts import Account, ApiKey
from basis.ledger.errors import KeyRevoked, UnknownApiKey
from basis.ledger.keys import API_KEY_PREFIX, UNSET


def key_id_of(text: str) -> UUID:
    """A key's id from its id or from the key itself (an operator may hold only a leaked key)."""
    text = text.strip()
    if text.startswith(API_KEY_PREFIX):
        return ids.api_key_id(ids.hash_api_key(text))
    try:
        return UUID(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is neither an API key id (a UUID) nor an API key") from None


def parse_cap(value: Any) -> int | None:
    """A cap as a decimal string of base units (``^(0|[1-9][0-9]*)$``), or None for no cap."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("cap must be a decimal string of base units (e.g. \"1000000000000000000\") or null")
    return parse_amount(value, "cap", positive=False)


def describe(ledger: Any, key_id: UUID) -> dict[str, Any]:
    try:
        record: ApiKey = ledger.get(key_id)
    except AggregateNotFoundError:
        raise UnknownApiKey(f"no API key {key_id}") from None
    if not isinstance(record, ApiKey):
        raise UnknownApiKey(f"no API key {key_id}")
    out = record.describe()
    account: Account = ledger.get(record.account_id)
    out["account"] = account.name
    return out


def create(ledger: Any, account: str, *, name: str = "", cap: int | None = None,
           requests_per_minute: int | None = None, tokens_per_minute: int | None = None) -> dict[str, Any]:
    """A new key on ACCOUNT (opened if new); the key itself is in the answer, and only there."""
    _, key = ledger.create_api_key(account, name=name, cap=cap, requests_per_minute=requests_per_minute,
                                   tokens_per_minute=tokens_per_minute)
    return {**describe(ledger, ids.api_key_id(ids.hash_api_key(key))), "key": key}


def list_keys(ledger: Any, account_names: list[str], include_revoked: bool = True) -> list[dict[str, Any]]:
    out = []
    for name in account_names:
        try:
            account: Account = ledger.get(ids.account_id(name))
        except AggregateNotFoundError:
            continue  # no such account: it has no keys
        for key_hash in account.key_hashes:
            key = describe(ledger, ids.api_key_id(key_hash))
            if include_revoked or not key["revoked"]:
                out.append(key)
    return out


def update(ledger: Any, key_id: UUID, *, cap: Any = UNSET, requests_per_minute: Any = UNSET,
           tokens_per_minute: Any = UNSET) -> dict[str, Any]:
    changes = {k: v for k, v in (("cap", cap), ("requests_per_minute", requests_per_minute),
                                 ("tokens_per_minute", tokens_per_minute)) if v is not UNSET}
    describe(ledger, key_id)  # an unknown key is refused before anything is sent to the writer
    ledger.update_api_key(key_id, **changes)
    return describe(ledger, key_id)


def revoke(ledger: Any, key_id: UUID, reason: str = "") -> dict[str, Any]:
    """Revoke at once on every gateway (their next job with it is refused); a second revoke
    answers the revoked key, so a retried call is harmless."""
    if not describe(ledger, key_id)["revoked"]:
        with contextlib.suppress(KeyRevoked):  # revoked meanwhile, elsewhere: the outcome asked for
            ledger.update_api_key(key_id, revoke=True, reason=reason)
    ledger.forget_key(key_id)
    return describe(ledger, key_id)
