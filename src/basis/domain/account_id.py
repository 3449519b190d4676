"""Account ids on chain (DESIGN 1.5): a UUID's 16 bytes followed by 16 zero bytes, as bytes32."""

from __future__ import annotations

import uuid

_PAD = bytes(16)


class AccountIdError(ValueError):
    pass


def to_bytes32(account: uuid.UUID | str) -> bytes:
    """UUID (or its text) -> 32 bytes: the UUID bytes then 16 zero bytes."""
    u = account if isinstance(account, uuid.UUID) else uuid.UUID(str(account))
    return u.bytes + _PAD


def to_hex(account: uuid.UUID | str) -> str:
    """``0x`` + 64 lowercase hex of :func:`to_bytes32`."""
    return "0x" + to_bytes32(account).hex()


def from_bytes32(value: bytes | str) -> uuid.UUID:
    """bytes32 (raw or ``0x`` hex) -> UUID; rejects anything but 16 UUID bytes + 16 zero bytes."""
    if isinstance(value, str):
        h = value[2:] if value.startswith(("0x", "0X")) else value
        try:
            b = bytes.fromhex(h)
        except ValueError as exc:
            raise AccountIdError(f"not hex: {value!r}") from exc
    else:
        b = bytes(value)
    if len(b) != 32:
        raise AccountIdError(f"account id must be 32 bytes, got {len(b)}")
    if b[16:] != _PAD:
        raise AccountIdError("account id must end with 16 zero bytes")
    return uuid.UUID(bytes=b[:16])
