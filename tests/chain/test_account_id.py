"""Account ids on chain: 16 UUID bytes then 16 zero bytes (DESIGN 1.5). No chain needed."""

import uuid

import pytest

from basis.domain import account_id


def test_account_id_roundtrip():
    u = uuid.uuid4()
    b = account_id.to_bytes32(u)
    assert len(b) == 32 and b[:16] == u.bytes and b[16:] == bytes(16)
    assert account_id.from_bytes32(b) == u
    assert account_id.from_bytes32(account_id.to_hex(str(u))) == u
    with pytest.raises(account_id.AccountIdError):
        account_id.from_bytes32(b[:16] + b"\x01" + bytes(15))
    with pytest.raises(account_id.AccountIdError):
        account_id.from_bytes32(b[:31])
