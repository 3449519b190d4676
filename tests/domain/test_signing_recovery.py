"""The coincurve recovery path agrees with eth-account's on every signature form, valid or not."""

from __future__ import annotations

import secrets

import pytest

from basis.domain.signing import _N, ReceiptSigner, recover_signer, recover_signer_eth_account


def _both(h: str, sig: str):
    out = []
    for fn in (recover_signer, recover_signer_eth_account):
        try:
            out.append(("ok", fn(h, sig)))
        except Exception as exc:  # the same refusal, whatever its class
            out.append(("refused", type(exc).__name__))
    return out


def test_fast_recovery_equals_eth_account_on_random_and_edge_signatures():
    for _ in range(40):
        signer = ReceiptSigner("0x" + secrets.token_hex(32))
        h = "0x" + secrets.token_hex(32)
        sig = signer.sign_hash(h)
        assert recover_signer(h, sig) == recover_signer_eth_account(h, sig) == signer.address
        raw = bytes.fromhex(sig[2:])
        r, s, v = raw[:32], int.from_bytes(raw[32:64], "big"), raw[64]
        high_s = "0x" + (r + (_N - s).to_bytes(32, "big") + bytes([55 - v])).hex()  # the malleable twin
        flipped_v = "0x" + (raw[:64] + bytes([55 - v])).hex()
        zero_v = "0x" + (raw[:64] + bytes([v - 27])).hex()
        for variant in (high_s, flipped_v, zero_v, "0x" + (b"\0" * 32 + raw[32:]).hex(),
                        "0x" + (raw[:32] + _N.to_bytes(32, "big") + raw[64:]).hex(), sig[:-2] + "1d"):
            a, b = _both(h, variant)
            assert a[0] == b[0] and (a[0] == "refused" or a == b), (variant, a, b)


@pytest.mark.parametrize("bad", ["0x", "0x1234", "0x" + "zz" * 65])
def test_malformed_signatures_take_eth_account_s_path(bad):
    a, b = _both("0x" + "11" * 32, bad)
    assert a == b and a[0] == "refused"
