"""Deterministic aggregate ids: the same name always finds the same stream, in every process."""

from __future__ import annotations

import hashlib
from uuid import UUID, uuid5

_NS = UUID("6f0c1a6e-0c59-4b8e-9a51-3b1d2f0b5a11")


def account_id(name: str) -> UUID:
    return uuid5(_NS, f"account:{name}")


def worker_id(address: str) -> UUID:
    return uuid5(_NS, f"worker:{address.lower()}")


def api_key_id(key_hash: str) -> UUID:
    return uuid5(_NS, f"api-key:{key_hash}")


def credit_ref_id(source: str, external_id: str) -> UUID:
    return uuid5(_NS, f"credit:{source}:{external_id}")


def idempotency_id(account: UUID, key: str) -> UUID:
    return uuid5(_NS, f"idempotency:{account}:{key}")


def hash_api_key(api_key: str) -> str:
    """API keys are stored only as this hash. Keys carry 256 bits of entropy, so a plain
    SHA-256 is the standard choice (as GitHub and Stripe do for tokens); no slow KDF is needed."""
    return hashlib.sha256(api_key.encode()).hexdigest()
