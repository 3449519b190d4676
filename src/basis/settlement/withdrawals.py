"""Withdrawals of unspent deposit-backed credit with operator-signed EIP-712 vouchers (DESIGN 1.5).

``request_withdrawal`` reserves the amount on the Account (``WithdrawalReserved``) and allocates
the vault-global nonce from the per-vault ``VoucherBook`` in ONE ledger command, then signs the
voucher (off the writer thread). The user (or anyone) submits it to ``CreditVault.withdraw``; the
indexer sees ``Withdrawn`` and redeems the reservation; a voucher unredeemed when chain time passes
its expiry is released by the indexer. Only deposit-backed credit not spent, not reserved by a
running job and not already held by a voucher can be withdrawn (``Account.withdrawable``).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eth_account import Account as EthAccount
from eth_utils import to_checksum_address

from basis.chain.vouchers import Withdrawal, sign_withdrawal
from basis.domain import account_id as onchain_account
from basis.domain.pricing import require_amount
from basis.ledger.accounts import Account
from basis.ledger.committer import UnitOfWork
from basis.ledger.errors import InsufficientCredit, UnknownAccount
from basis.ledger.service import Ledger
from basis.ledger.settlement import VoucherBook, voucher_book_id
from basis.settlement.chain import Chain, hex32

DEFAULT_TTL = 3600  # seconds of chain time a voucher stays redeemable


class WithdrawalError(RuntimeError):
    pass


def reserve_withdrawal(chain_id: int, vault: str, account_id: UUID, amount: int | None, recipient: str,
                       expiry: int, min_nonce: int):
    """Allocate a nonce (>= min_nonce) and reserve ``amount`` (None: everything withdrawable)."""

    def cmd(uow: UnitOfWork) -> tuple[int, int]:
        acc = uow.find(Account, account_id)
        if acc is None:
            raise UnknownAccount(f"no account {account_id}")
        value = acc.withdrawable if amount is None else amount
        if value <= 0:
            raise InsufficientCredit("nothing to withdraw: no unspent deposit-backed credit is available")
        book = uow.find(VoucherBook, voucher_book_id(chain_id, vault))
        if book is None:
            book = uow.add(VoucherBook(chain_id=chain_id, vault=vault))
        nonce = max(book.next_nonce, min_nonce)
        acc.reserve_withdrawal(nonce=nonce, amount=value, recipient=recipient, expiry=expiry)
        book.allocate(nonce=nonce, account_id=str(account_id), amount=value, recipient=recipient, expiry=expiry)
        return nonce, value

    return cmd


def voucher_json(voucher: Withdrawal, signature: bytes, chain: Chain) -> dict[str, Any]:
    return {
        "object": "withdrawal_voucher",
        "account": hex32(voucher.account),
        "recipient": voucher.recipient,
        "amount": str(voucher.amount),
        "nonce": str(voucher.nonce),
        "expiry": voucher.expiry,
        "signature": hex32(signature),
        "chain_id": chain.chain_id,
        "vault": chain.vault,
        "domain": {"name": "BasisCreditVault", "version": "1"},
    }


def request_withdrawal(ledger: Ledger, chain: Chain, operator_key: str, *, account_id: UUID, recipient: str,
                       amount: int | None = None, ttl: int = DEFAULT_TTL) -> dict[str, Any]:
    """Reserve and sign. Raises InsufficientCredit / UnknownAccount / WithdrawalError."""
    if amount is not None:
        require_amount(amount, "amount", positive=True)
    try:
        recipient = to_checksum_address(recipient)
    except ValueError as exc:
        raise WithdrawalError(f"recipient is not an address: {recipient!r}") from exc
    if int(recipient, 16) == 0:
        raise WithdrawalError("recipient is the zero address")
    if not 60 <= ttl <= 30 * 86400:
        raise WithdrawalError("ttl must be between 60 seconds and 30 days")
    operator = EthAccount.from_key(operator_key).address
    vault_operator = chain.contracts.vault.functions.operator().call()
    if operator != vault_operator:
        raise WithdrawalError(f"this gateway's key {operator} is not the vault operator {vault_operator}")
    expiry = int(chain.w3.eth.get_block("latest")["timestamp"]) + ttl
    try:
        book: VoucherBook = ledger.get(voucher_book_id(chain.chain_id, chain.vault))
        min_nonce = book.next_nonce
    except Exception:  # no voucher issued yet
        min_nonce = 1
    while chain.contracts.nonce_used(min_nonce):  # a nonce used outside this ledger is skipped
        min_nonce += 1
    nonce, value = ledger.run(reserve_withdrawal(chain.chain_id, chain.vault, account_id, amount, recipient,
                                                 expiry, min_nonce))
    voucher = Withdrawal(account=onchain_account.to_bytes32(account_id), recipient=recipient, amount=value,
                         nonce=nonce, expiry=expiry)
    signature = sign_withdrawal(operator_key, voucher, chain_id=chain.chain_id, vault=chain.vault)
    return voucher_json(voucher, signature, chain)
