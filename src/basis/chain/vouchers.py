"""EIP-712 withdrawal vouchers for CreditVault (DESIGN 1.5).

Domain: name ``BasisCreditVault``, version ``1``, chain id, verifying contract = the vault.
Type: ``Withdrawal(bytes32 account,address recipient,uint256 amount,uint256 nonce,uint256 expiry)``;
``expiry`` is chain time (block timestamp); the vault accepts it while ``block.timestamp <= expiry``.
Signatures are 65 bytes r || s || v (v in {27, 28}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

DOMAIN_NAME = "BasisCreditVault"
DOMAIN_VERSION = "1"
WITHDRAWAL_TYPE = "Withdrawal(bytes32 account,address recipient,uint256 amount,uint256 nonce,uint256 expiry)"
WITHDRAWAL_TYPEHASH = keccak(text=WITHDRAWAL_TYPE)

_TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "Withdrawal": [
        {"name": "account", "type": "bytes32"},
        {"name": "recipient", "type": "address"},
        {"name": "amount", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "expiry", "type": "uint256"},
    ],
}


@dataclass(frozen=True)
class Withdrawal:
    account: bytes  # 32 bytes (see basis.domain.account_id)
    recipient: str
    amount: int
    nonce: int
    expiry: int

    def __post_init__(self) -> None:
        if len(self.account) != 32:
            raise ValueError("account must be 32 bytes")
        for name in ("amount", "nonce", "expiry"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**256:
                raise ValueError(f"{name} must be a uint256 int")
        object.__setattr__(self, "recipient", to_checksum_address(self.recipient))


def typed_data(voucher: Withdrawal, *, chain_id: int, vault: str) -> dict[str, Any]:
    return {
        "types": _TYPES,
        "primaryType": "Withdrawal",
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": chain_id,
            "verifyingContract": to_checksum_address(vault),
        },
        "message": {
            "account": voucher.account,
            "recipient": voucher.recipient,
            "amount": voucher.amount,
            "nonce": voucher.nonce,
            "expiry": voucher.expiry,
        },
    }


def voucher_digest(voucher: Withdrawal, *, chain_id: int, vault: str) -> bytes:
    """The 32-byte EIP-712 digest (equals CreditVault.hashWithdrawal)."""
    msg = encode_typed_data(full_message=typed_data(voucher, chain_id=chain_id, vault=vault))
    return keccak(b"\x19" + msg.version + msg.header + msg.body)


def sign_withdrawal(private_key: bytes | str, voucher: Withdrawal, *, chain_id: int, vault: str) -> bytes:
    """The operator's 65-byte signature over the voucher."""
    msg = encode_typed_data(full_message=typed_data(voucher, chain_id=chain_id, vault=vault))
    return bytes(Account.sign_message(msg, private_key).signature)


def recover_signer(voucher: Withdrawal, signature: bytes | str, *, chain_id: int, vault: str) -> str:
    """Checksum address that signed ``voucher`` (compare with the vault operator)."""
    msg = encode_typed_data(full_message=typed_data(voucher, chain_id=chain_id, vault=vault))
    return Account.recover_message(msg, signature=signature)
