"""What each account event does to an account: the bodies of ``Account``'s event methods, each
checking its invariants before it changes anything. ``Account`` applies its events through these
(eventsourcing's decorated methods call them), and the audit's account fold applies stored events
through the same functions without eventsourcing's machinery (``account_mutators``): one rule,
written once, for the live ledger and the audit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from basis.domain.pricing import require_amount
from basis.ledger.errors import InsufficientCredit, InvalidTransition

if TYPE_CHECKING:
    from basis.ledger.accounts import Account

CREDIT_SOURCES = ("grant", "deposit", "refund")


def add_api_key(account: Account, key_hash: str, prefix: str) -> None:
    account.api_keys += 1
    account.key_hashes.append(key_hash)


def credit(account: Account, source: str, external_id: str, amount: int, memo: str = "", backed: int = 0) -> None:
    require_amount(amount, "amount", positive=True)
    require_amount(backed, "backed")
    if source not in CREDIT_SOURCES:
        raise ValueError(f"credit source must be one of {CREDIT_SOURCES}")
    if backed and (source != "refund" or backed > amount):
        raise InvalidTransition("only a refund carries a deposit-backed part, at most its amount")
    if source == "grant":
        account.granted += amount
    elif source == "deposit":
        account.deposited += amount
    else:  # refund of job ``external_id``: its deposit-backed charge will not leave the vault
        account.refunded += amount
        account.refund_backed += backed
        account.unsettled_deposit_spend.pop(external_id, None)


def reserve(account: Account, job_id: str, amount: int) -> None:
    require_amount(amount, "amount")
    if job_id in account.reservations:
        raise InvalidTransition(f"job {job_id} already holds a reservation")
    if amount > account.available:
        raise InsufficientCredit(
            f"this request may cost up to {amount} base units; the account has {account.available} available"
        )
    account.reservations[job_id] = amount
    account.reserved += amount


def settle_reservation(account: Account, job_id: str, released: int, charged: int, from_grant: int,
                       from_deposit: int) -> None:
    """Release a job's reservation and spend its real charge (0 for a job with no receipt).

    ``released`` repeats the amount held, so readers of this stream alone know it."""
    held = account.reservations.get(job_id)
    if held is None or held != released:
        raise InvalidTransition(f"job {job_id} holds no reservation of {released}")
    if charged > held or from_grant + from_deposit != charged or min(from_grant, from_deposit) < 0:
        raise InvalidTransition(f"charge {charged} does not fit the reservation {held}")
    del account.reservations[job_id]
    account.reserved -= held
    account.spent_granted += from_grant
    account.spent_deposited += from_deposit
    if from_deposit:
        account.unsettled_deposit_spend[job_id] = from_deposit


def settle_deposit_spend(account: Account, batch_id: str, job_ids: list[str]) -> None:
    """These jobs' deposit-backed charges left the vault in settlement batch ``batch_id``."""
    for job_id in job_ids:
        account.unsettled_deposit_spend.pop(job_id, None)


def reserve_withdrawal(account: Account, nonce: int, amount: int, recipient: str, expiry: int) -> None:
    require_amount(amount, "amount", positive=True)
    if str(nonce) in account.vouchers:
        raise InvalidTransition(f"voucher {nonce} already reserved")
    if amount > account.withdrawable:
        raise InsufficientCredit(
            f"withdrawal of {amount} base units asked; {account.withdrawable} of deposited credit is withdrawable")
    account.vouchers[str(nonce)] = amount
    account.reserved += amount


def redeem_withdrawal(account: Account, nonce: int, amount: int, tx_hash: str, log_index: int) -> None:
    if account.vouchers.get(str(nonce)) != amount:
        raise InvalidTransition(f"voucher {nonce} for {amount} is not outstanding")
    del account.vouchers[str(nonce)]
    account.reserved -= amount
    account.withdrawn += amount


def release_withdrawal(account: Account, nonce: int, amount: int, chain_time: int) -> None:
    """The voucher expired unredeemed (chain time past its expiry): its credit is available again."""
    if account.vouchers.get(str(nonce)) != amount:
        raise InvalidTransition(f"voucher {nonce} for {amount} is not outstanding")
    del account.vouchers[str(nonce)]
    account.reserved -= amount
