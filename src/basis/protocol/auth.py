"""Worker authentication: EIP-191 personal_sign over a canonical challenge text."""

from __future__ import annotations

import secrets

CHALLENGE_HEADER = "Basis worker authentication"


def new_nonce() -> str:
    """32 random bytes as 0x-hex."""
    return "0x" + secrets.token_hex(32)


def challenge_text(
    *, gateway_address: str, chain_id: int, nonce: str, expires_at: int, protocol_version: int = 1
) -> str:
    """The exact text a worker signs (lines joined by LF, no trailing newline).

    Addresses are lowercased so that checksum casing never changes the text.
    """
    return "\n".join(
        [
            CHALLENGE_HEADER,
            f"protocol: {int(protocol_version)}",
            f"gateway: {gateway_address.lower()}",
            f"chain_id: {int(chain_id)}",
            f"nonce: {nonce}",
            f"expires_at: {int(expires_at)}",
        ]
    )


def sign_challenge(private_key: str | bytes, text: str) -> str:
    """EIP-191 personal_sign of ``text``; returns 0x + 130 hex (r || s || v)."""
    from eth_account import Account  # ~0.5 s of imports (eth-keyfile, py_ecc): not on a gateway's start
    from eth_account.messages import encode_defunct

    signed = Account.sign_message(encode_defunct(text=text), private_key=private_key)
    sig = signed.signature.hex()
    return sig if sig.startswith("0x") else "0x" + sig


def recover_signer(text: str, signature: str) -> str:
    """Address (checksummed) that signed ``text``; raises ValueError on a malformed signature."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    try:
        return Account.recover_message(encode_defunct(text=text), signature=signature)
    except Exception as exc:  # eth-account raises several types for malformed input
        raise ValueError(f"bad signature: {exc}") from exc


def verify_challenge(text: str, signature: str, claimed_address: str) -> bool:
    try:
        return recover_signer(text, signature).lower() == claimed_address.lower()
    except ValueError:
        return False
