"""Withdrawals of unspent deposit-backed credit with operator-signed EIP-712 vouchers (DESIGN 1.5).

A withdrawal proves control of the money, never of an inference key: the request is an EIP-712
``WithdrawalRequest`` (``basis.chain.vouchers``) signed by an address that deposited for the
account (the indexer binds each depositor to its account, ``AccountOwners``), its recipient is
such an address too, its expiry (chain time) has not passed, and its (signer, nonce) was never
honoured before. The last three are checked again inside the ledger command that reserves, so
two copies of one signature race to one voucher. A bearer key alone never withdraws.

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
from eventsourcing.application import AggregateNotFoundError

from basis.chain.vouchers import Withdrawal, WithdrawalRequest, recover_signer, sign_withdrawal
from basis.domain import account_id as onchain_account
from basis.domain.pricing import require_amount
from basis.ledger.accounts import Account
from basis.ledger.committer import UnitOfWork
from basis.ledger.errors import InsufficientCredit, UnknownAccount
from basis.ledger.service import Ledger
from basis.ledger.settlement import AccountOwners, VoucherBook, account_owners_id, voucher_book_id
from basis.settlement.chain import Chain, from_hex, hex32

DEFAULT_TTL = 3600  # seconds of chain time a voucher stays redeemable


class WithdrawalError(RuntimeError):
    """A refused request; ``status``/``code`` are what the HTTP API answers."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_withdrawal",
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


def _check_owners(owners: AccountOwners | None, account_id: UUID, signer: str, recipient: str) -> None:
    depositors = owners.depositors if owners is not None else {}
    if signer.lower() not in depositors:
        raise WithdrawalError(f"the request is signed by {signer}, which never deposited for account {account_id}: "
                              "only an address that deposited for the account may withdraw",
                              status=403, code="signer_not_a_depositor", param="signature")
    if recipient.lower() not in depositors:
        raise WithdrawalError(f"recipient {recipient} never deposited for account {account_id}: "
                              "a withdrawal goes only to an address that deposited for the account",
                              status=403, code="recipient_not_a_depositor", param="recipient")


def reserve_withdrawal(chain_id: int, vault: str, account_id: UUID, amount: int | None, recipient: str,
                       expiry: int, min_nonce: int, *, signer: str | None = None, request_nonce: int | None = None):
    """Allocate a nonce (>= min_nonce) and reserve ``amount`` (None: everything withdrawable).
    With ``signer``: the owner's request is checked (depositor signer and recipient) and
    honoured once, in the same commit."""

    def cmd(uow: UnitOfWork) -> tuple[int, int]:
        acc = uow.find(Account, account_id)
        if acc is None:
            raise UnknownAccount(f"no account {account_id}")
        owners = None
        if signer is not None:
            owners = uow.find(AccountOwners, account_owners_id(chain_id, vault, str(account_id)))
            _check_owners(owners, account_id, signer, recipient)
            if f"{signer.lower()}:{request_nonce}" in owners.requests:
                raise WithdrawalError(f"withdrawal request {request_nonce} signed by {signer} was already honoured "
                                      "(a signature withdraws once: sign a new nonce)",
                                      status=409, code="request_replayed", param="nonce")
        value = acc.withdrawable if amount is None else amount
        if value <= 0:
            raise InsufficientCredit("nothing to withdraw: no unspent deposit-backed credit is available")
        book = uow.find(VoucherBook, voucher_book_id(chain_id, vault))
        if book is None:
            book = uow.add(VoucherBook(chain_id=chain_id, vault=vault))
        nonce = max(book.next_nonce, min_nonce)
        acc.reserve_withdrawal(nonce=nonce, amount=value, recipient=recipient, expiry=expiry)
        book.allocate(nonce=nonce, account_id=str(account_id), amount=value, recipient=recipient, expiry=expiry)
        if owners is not None:
            owners.honour_request(signer=signer, nonce=str(request_nonce), voucher_nonce=nonce)
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


def _uint(value: object, name: str) -> int:
    text = str(value) if value is not None else ""
    if (not (text.isascii() and text.isdigit()) or len(text) > 78 or (len(text) > 1 and text[0] == "0")
            or int(text) >= 2**256):
        raise WithdrawalError(f"{name} must be a uint256 as a decimal string", code=f"invalid_{name}", param=name)
    return int(text)


def verify_request(chain: Chain, account_id: UUID, *, recipient: str, amount: object, nonce: object,
                   expiry: object, signature: str | None) -> tuple[WithdrawalRequest, str]:
    """(the request, its signer) once the signature recovers and the expiry is in the future.
    Whether the signer may withdraw is the ledger command's question (``reserve_withdrawal``)."""
    if not signature:
        raise WithdrawalError("a withdrawal needs an EIP-712 WithdrawalRequest signed by an address that deposited "
                              "for the account (docs/settlement.md); an API key alone never withdraws",
                              status=401, code="signature_required", param="signature")
    value = _uint(amount, "amount")
    if value <= 0:
        raise WithdrawalError("amount must be positive", code="invalid_amount", param="amount")
    request = WithdrawalRequest(account=onchain_account.to_bytes32(account_id), recipient=recipient, amount=value,
                                nonce=_uint(nonce, "nonce"), expiry=_uint(expiry, "expiry"))
    try:
        raw = from_hex(signature)
        if len(raw) != 65:
            raise ValueError("not 65 bytes")
        signer = recover_signer(request, raw, chain_id=chain.chain_id, vault=chain.vault)
    except Exception as exc:  # malformed bytes or a signature that recovers no key
        raise WithdrawalError(f"signature is not a 65-byte EIP-712 signature of this request: {exc}",
                              code="invalid_signature", param="signature") from None
    now = int(chain.w3.eth.get_block("latest")["timestamp"])
    if request.expiry < now:
        raise WithdrawalError(f"the request expired at chain time {request.expiry} (now {now})",
                              code="request_expired", param="expiry")
    return request, signer


def request_withdrawal(ledger: Ledger, chain: Chain, operator_key: str, *, account_id: UUID, recipient: str,
                       amount: object, nonce: object, expiry: object, signature: str | None,
                       ttl: int = DEFAULT_TTL) -> dict[str, Any]:
    """Check the owner's signed request, reserve and sign the voucher.
    Raises WithdrawalError (with its HTTP status) / InsufficientCredit / UnknownAccount."""
    try:
        recipient = to_checksum_address(recipient)
    except (TypeError, ValueError) as exc:
        raise WithdrawalError(f"recipient is not an address: {recipient!r}", code="invalid_recipient",
                              param="recipient") from exc
    if int(recipient, 16) == 0:
        raise WithdrawalError("recipient is the zero address", code="invalid_recipient", param="recipient")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 60 <= ttl <= 30 * 86400:
        raise WithdrawalError("ttl must be between 60 seconds and 30 days", param="ttl")
    request, signer = verify_request(chain, account_id, recipient=recipient, amount=amount, nonce=nonce,
                                     expiry=expiry, signature=signature)
    require_amount(request.amount, "amount", positive=True)
    try:  # refuse a non-owner before touching the nonce book (the command checks again, atomically)
        owners: AccountOwners | None = ledger.get(account_owners_id(chain.chain_id, chain.vault, str(account_id)))
    except AggregateNotFoundError:  # no deposit was ever bound to this account
        owners = None
    _check_owners(owners, account_id, signer, recipient)
    operator = EthAccount.from_key(operator_key).address
    vault_operator = chain.contracts.vault.functions.operator().call()
    if operator != vault_operator:
        raise WithdrawalError(f"this gateway's key {operator} is not the vault operator {vault_operator}",
                              status=503, code="not_vault_operator")
    expiry_at = int(chain.w3.eth.get_block("latest")["timestamp"]) + ttl
    try:
        book: VoucherBook = ledger.get(voucher_book_id(chain.chain_id, chain.vault))
        min_nonce = book.next_nonce
    except Exception:  # no voucher issued yet
        min_nonce = 1
    while chain.contracts.nonce_used(min_nonce):  # a nonce used outside this ledger is skipped
        min_nonce += 1
    voucher_nonce, value = ledger.run(reserve_withdrawal(
        chain.chain_id, chain.vault, account_id, request.amount, recipient, expiry_at, min_nonce,
        signer=signer, request_nonce=request.nonce))
    voucher = Withdrawal(account=request.account, recipient=recipient, amount=value, nonce=voucher_nonce,
                         expiry=expiry_at)
    signed = sign_withdrawal(operator_key, voucher, chain_id=chain.chain_id, vault=chain.vault)
    return voucher_json(voucher, signed, chain) | {"requested_by": signer}
