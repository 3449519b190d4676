"""EIP-712 withdrawal vouchers for CreditVault, and the requests that ask for them (DESIGN 1.5).

Domain: name ``BasisCreditVault``, version ``1``, chain id, verifying contract = the vault.
Voucher (signed by the vault operator, redeemed by the vault):
``Withdrawal(bytes32 account,address recipient,uint256 amount,uint256 nonce,uint256 expiry)``;
``expiry`` is chain time (block timestamp); the vault accepts it while ``block.timestamp <= expiry``.
Request (signed by an address that deposited for the account, checked by the gateway before it
issues a voucher; never seen by the contracts):
``WithdrawalRequest(bytes32 account,address recipient,uint256 amount,uint256 nonce,uint256 expiry)``;
``nonce`` is the signer's choice (each one is honoured once), ``expiry`` chain time. The type name
differs, so a request's signature can never pass for a voucher's or the reverse.
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
REQUEST_TYPE = "WithdrawalRequest(bytes32 account,address recipient,uint256 amount,uint256 nonce,uint256 expiry)"

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
_FIELDS = _TYPES["Withdrawal"]


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


@dataclass(frozen=True)
class WithdrawalRequest(Withdrawal):
    """An account owner's signed ask for a voucher (same fields; ``nonce`` is the owner's own)."""


def typed_data(voucher: Withdrawal, *, chain_id: int, vault: str) -> dict[str, Any]:
    """The EIP-712 message of a voucher, or of a request when given a ``WithdrawalRequest``
    (what a wallet's ``eth_signTypedData_v4`` takes)."""
    primary = "WithdrawalRequest" if isinstance(voucher, WithdrawalRequest) else "Withdrawal"
    return {
        "types": {"EIP712Domain": _TYPES["EIP712Domain"], primary: _FIELDS},
        "primaryType": primary,
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


def sign_withdrawal_request(private_key: bytes | str, request: WithdrawalRequest, *, chain_id: int,
                            vault: str) -> bytes:
    """An account owner's 65-byte signature over a withdrawal request."""
    return sign_withdrawal(private_key, request, chain_id=chain_id, vault=vault)
