"""The Account aggregate's event methods as plain functions, for the account fold of ``basis audit
--events`` (``AccountFold``): eventsourcing's way of applying an event (the event object built, its
method found in a registry, its arguments filtered) cost about 8 µs an account event, the method's
own body under 1 µs. Each function is a copy of its method's body (``accounts.Account``), applied
to the same aggregate object with eventsourcing's own checks around it (the version must follow;
the state's keys filtered to the method's parameters; ``modified_on`` set from its timestamp), so
the aggregate ends in the same state, and refuses the same events.
``tests/ledger/test_account_mutators.py`` holds each one equal to eventsourcing's application of
its event (property-tested, odd states included) and fails for an account event type that has none
here. Anything unusual in a state (``class_version``, which eventsourcing would upcast) is left to
eventsourcing (``apply_plain`` returns False).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from basis.domain.pricing import require_amount
from basis.ledger.accounts import CREDIT_SOURCES, Account
from basis.ledger.errors import InsufficientCredit, InvalidTransition


def add_api_key(self: Account, key_hash: str, prefix: str) -> None:
    self.api_keys += 1
    self.key_hashes.append(key_hash)


def credit(self: Account, source: str, external_id: str, amount: int, memo: str = "", backed: int = 0) -> None:
    require_amount(amount, "amount", positive=True)
    require_amount(backed, "backed")
    if source not in CREDIT_SOURCES:
        raise ValueError(f"credit source must be one of {CREDIT_SOURCES}")
    if backed and (source != "refund" or backed > amount):
        raise InvalidTransition("only a refund carries a deposit-backed part, at most its amount")
    if source == "grant":
        self.granted += amount
    elif source == "deposit":
        self.deposited += amount
    else:
        self.refunded += amount
        self.refund_backed += backed
        self.unsettled_deposit_spend.pop(external_id, None)


def reserve(self: Account, job_id: str, amount: int) -> None:
    require_amount(amount, "amount")
    if job_id in self.reservations:
        raise InvalidTransition(f"job {job_id} already holds a reservation")
    if amount > self.available:
        raise InsufficientCredit(f"this request may cost up to {amount} base units")
    self.reservations[job_id] = amount
    self.reserved += amount


def settle_reservation(self: Account, job_id: str, released: int, charged: int, from_grant: int,
                       from_deposit: int) -> None:
    held = self.reservations.get(job_id)
    if held is None or held != released:
        raise InvalidTransition(f"job {job_id} holds no reservation of {released}")
    if charged > held or from_grant + from_deposit != charged or min(from_grant, from_deposit) < 0:
        raise InvalidTransition(f"charge {charged} does not fit the reservation {held}")
    del self.reservations[job_id]
    self.reserved -= held
    self.spent_granted += from_grant
    self.spent_deposited += from_deposit
    if from_deposit:
        self.unsettled_deposit_spend[job_id] = from_deposit


def settle_deposit_spend(self: Account, batch_id: str, job_ids: list[str]) -> None:
    for job_id in job_ids:
        self.unsettled_deposit_spend.pop(job_id, None)


def reserve_withdrawal(self: Account, nonce: int, amount: int, recipient: str, expiry: int) -> None:
    require_amount(amount, "amount", positive=True)
    if str(nonce) in self.vouchers:
        raise InvalidTransition(f"voucher {nonce} already reserved")
    if amount > self.withdrawable:
        raise InsufficientCredit(f"withdrawal of {amount} base units asked")
    self.vouchers[str(nonce)] = amount
    self.reserved += amount


def redeem_withdrawal(self: Account, nonce: int, amount: int, tx_hash: str, log_index: int) -> None:
    if self.vouchers.get(str(nonce)) != amount:
        raise InvalidTransition(f"voucher {nonce} for {amount} is not outstanding")
    del self.vouchers[str(nonce)]
    self.reserved -= amount
    self.withdrawn += amount


def release_withdrawal(self: Account, nonce: int, amount: int, chain_time: int) -> None:
    if self.vouchers.get(str(nonce)) != amount:
        raise InvalidTransition(f"voucher {nonce} for {amount} is not outstanding")
    del self.vouchers[str(nonce)]
    self.reserved -= amount


# by event topic: (the function, the names eventsourcing passes it from the event: its parameters)
MUTATORS: dict[str, tuple[Callable[..., None], frozenset[str]]] = {
    event.TOPIC: (fn, frozenset(inspect.signature(fn).parameters)) for event, fn in (
        (Account.ApiKeyAdded, add_api_key),  # type: ignore[attr-defined]
        (Account.Credited, credit),  # type: ignore[attr-defined]
        (Account.Reserved, reserve),  # type: ignore[attr-defined]
        (Account.ReservationSettled, settle_reservation),  # type: ignore[attr-defined]
        (Account.DepositSpendSettled, settle_deposit_spend),  # type: ignore[attr-defined]
        (Account.WithdrawalReserved, reserve_withdrawal),  # type: ignore[attr-defined]
        (Account.WithdrawalRedeemed, redeem_withdrawal),  # type: ignore[attr-defined]
        (Account.WithdrawalReleased, release_withdrawal),  # type: ignore[attr-defined]
    )}


def apply_plain(aggregate: Account, version: int, topic: str, state: dict[str, Any]) -> bool:
    """Apply the event (``state`` as the store's transcoder decodes it) to ``aggregate`` as
    eventsourcing's ``mutate`` would; raises where it would raise (the aggregate is then not to be
    used). False, with nothing done, for an event left to eventsourcing."""
    found = MUTATORS.get(topic)
    if found is None or "class_version" in state:
        return False
    fn, params = found
    if version != aggregate.version + 1:  # as eventsourcing's OriginatorVersionError
        raise ValueError(f"version {version} does not follow {aggregate.version}")
    # the event's own originator_id and originator_version replace any in its state: neither is a parameter
    fn(aggregate, **{k: v for k, v in state.items() if k in params})
    aggregate.version = version
    aggregate.modified_on = state["timestamp"]  # eventsourcing reads the event's timestamp: missing, it raises
    return True
