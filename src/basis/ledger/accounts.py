"""Account aggregate: credits by source, reservations, spend. Never overdrawn."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from basis.domain.pricing import require_amount
from basis.ledger import account_rules as rules
from basis.ledger import ids
from basis.ledger.errors import InvalidTransition, KeyCapReached


class Account(Aggregate):
    """Credit flows in as grants (operator, no tokens behind) or deposits (vault-backed).

    Spend draws on granted credit first (promotional credit is used before paid credit, as
    cloud providers do), so settlement knows how much of each charge moves vault tokens.

    Refunds (a job that failed verification, DESIGN 1.6) give back exactly what the job spent,
    in the kind it was spent: its deposit-backed part (``backed``) never left the vault (a job
    is checked before it settles; the refund drops it from ``unsettled_deposit_spend``, so
    settlement moves nothing for it) and stays deposit-backed credit, withdrawable like a
    deposit; the rest was granted credit and comes back as credit with no tokens behind it.
    """

    TOPIC = "basis:Account"

    class Created(Aggregate.Created):
        TOPIC = "basis:Account.Created.v1"

    @staticmethod
    def create_id(name: str) -> UUID:
        return ids.account_id(name)

    @event("Opened", topic="basis:Account.Opened.v1")
    def __init__(self, name: str) -> None:
        self.name = name
        self.granted = 0
        self.deposited = 0
        self.withdrawn = 0
        self.spent_granted = 0
        self.spent_deposited = 0
        self.reservations: dict[str, int] = {}
        self.reserved = 0  # job reservations + outstanding withdrawal vouchers
        self.api_keys = 0
        self.key_hashes: list[str] = []  # its keys, oldest first (ids: ``ids.api_key_id(hash)``)
        self.vouchers: dict[str, int] = {}  # outstanding withdrawal vouchers: nonce -> amount
        self.unsettled_deposit_spend: dict[str, int] = {}  # job id -> deposit-backed charge not yet on chain
        self.refunded = 0  # refund credits (source "refund")
        self.refund_backed = 0  # the part of them still backed by vault tokens

    @property
    def available(self) -> int:
        return self.total_credit - self.spent - self.withdrawn - self.reserved

    @property
    def total_credit(self) -> int:
        return self.granted + self.deposited + self.refunded

    @property
    def backed_credit(self) -> int:
        """Credit with vault tokens behind it: deposits and the deposit-backed part of refunds."""
        return self.deposited + self.refund_backed

    @property
    def spent(self) -> int:
        return self.spent_granted + self.spent_deposited

    @event("ApiKeyAdded", topic="basis:Account.ApiKeyAdded.v1")
    def add_api_key(self, key_hash: str, prefix: str) -> None:
        rules.add_api_key(self, key_hash, prefix)

    @event("Credited", topic="basis:Account.Credited.v1")
    def credit(self, source: str, external_id: str, amount: int, memo: str = "", backed: int = 0) -> None:
        rules.credit(self, source, external_id, amount, memo, backed)

    @event("Reserved", topic="basis:Account.Reserved.v1")
    def reserve(self, job_id: str, amount: int) -> None:
        rules.reserve(self, job_id, amount)

    @event("ReservationSettled", topic="basis:Account.ReservationSettled.v1")
    def settle_reservation(self, job_id: str, released: int, charged: int, from_grant: int,
                           from_deposit: int) -> None:
        """Release a job's reservation and spend its real charge (0 for a job with no receipt).

        ``released`` repeats the amount held, so readers of this stream alone know it."""
        rules.settle_reservation(self, job_id, released, charged, from_grant, from_deposit)

    def split_spend(self, charged: int) -> tuple[int, int]:
        """How a charge divides between granted and deposited credit (grant first)."""
        grant_left = self.total_credit - self.backed_credit - self.spent_granted
        from_grant = min(charged, grant_left)
        return from_grant, charged - from_grant

    # -- on-chain settlement and withdrawals ----------------------------------------------------
    @property
    def withdrawable(self) -> int:
        """Unspent deposit-backed credit that is not held by a job or a voucher."""
        deposit_left = self.backed_credit - self.spent_deposited - self.withdrawn - sum(self.vouchers.values())
        return max(0, min(self.available, deposit_left))

    @event("DepositSpendSettled", topic="basis:Account.DepositSpendSettled.v1")
    def settle_deposit_spend(self, batch_id: str, job_ids: list[str]) -> None:
        """These jobs' deposit-backed charges left the vault in settlement batch ``batch_id``."""
        rules.settle_deposit_spend(self, batch_id, job_ids)

    @event("WithdrawalReserved", topic="basis:Account.WithdrawalReserved.v1")
    def reserve_withdrawal(self, nonce: int, amount: int, recipient: str, expiry: int) -> None:
        rules.reserve_withdrawal(self, nonce, amount, recipient, expiry)

    @event("WithdrawalRedeemed", topic="basis:Account.WithdrawalRedeemed.v1")
    def redeem_withdrawal(self, nonce: int, amount: int, tx_hash: str, log_index: int) -> None:
        rules.redeem_withdrawal(self, nonce, amount, tx_hash, log_index)

    @event("WithdrawalReleased", topic="basis:Account.WithdrawalReleased.v1")
    def release_withdrawal(self, nonce: int, amount: int, chain_time: int) -> None:
        """The voucher expired unredeemed (chain time past its expiry): its credit is available again."""
        rules.release_withdrawal(self, nonce, amount, chain_time)

    def snapshot_view(self) -> dict[str, Any]:
        return {
            "granted": self.granted,
            "deposited": self.deposited,
            "refunded": self.refunded,
            "withdrawn": self.withdrawn,
            "spent": self.spent,
            "reserved": self.reserved,
            "available": self.available,
        }


class ApiKey(Aggregate):
    """A key: key hash -> account (its deterministic id makes a key unique across processes), and
    what an operator decided about it: revoked, a spend cap, request and token rate limits.

    While a key has a cap, each of its jobs reserves here too, in the same transaction as the
    account's reservation, so concurrent requests on any number of gateways can never spend
    past the cap (optimistic concurrency on this stream arbitrates). The cap counts spend from
    when the key was first capped: an uncapped key's jobs do not touch this stream at all.
    """

    TOPIC = "basis:ApiKey"

    class Created(Aggregate.Created):
        TOPIC = "basis:ApiKey.Created.v1"

    @staticmethod
    def create_id(key_hash: str) -> UUID:
        return ids.api_key_id(key_hash)

    @event("Issued", topic="basis:ApiKey.Issued.v1")
    def __init__(self, key_hash: str, account_id: UUID, name: str = "", prefix: str = "") -> None:
        self.key_hash = key_hash
        self.account_id = account_id
        self.name = name
        self.prefix = prefix
        self.revoked = False
        self.cap: int | None = None  # base units; None: no cap (the account's credit is the limit)
        self.spent = 0  # charged to this key's jobs while it had a cap
        self.reserved = 0
        self.reservations: dict[str, int] = {}
        self.requests_per_minute: int | None = None
        self.tokens_per_minute: int | None = None

    @property
    def capped(self) -> bool:
        return self.cap is not None

    @property
    def cap_left(self) -> int | None:
        return None if self.cap is None else max(0, self.cap - self.spent - self.reserved)

    @event("Revoked", topic="basis:ApiKey.Revoked.v1")
    def revoke(self, reason: str = "") -> None:
        if self.revoked:
            raise InvalidTransition("this key is already revoked")
        self.revoked = True

    @event("CapSet", topic="basis:ApiKey.CapSet.v1")
    def set_cap(self, cap: int | None) -> None:
        """``None`` lifts the cap (jobs still holding a reservation here settle it as usual)."""
        if cap is not None:
            require_amount(cap, "cap")
        self.cap = cap

    @event("LimitsSet", topic="basis:ApiKey.LimitsSet.v1")
    def set_limits(self, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
        for name, value in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if value is not None:
                require_amount(value, name, positive=True)
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute

    @event("Reserved", topic="basis:ApiKey.Reserved.v1")
    def reserve(self, job_id: str, amount: int) -> None:
        require_amount(amount, "amount")
        if job_id in self.reservations:
            raise InvalidTransition(f"job {job_id} already holds a reservation on this key")
        left = self.cap_left
        if left is not None and amount > left:
            raise KeyCapReached(
                f"this request may cost up to {amount} base units; the key's spend cap of {self.cap} has "
                f"{left} left ({self.spent} spent, {self.reserved} reserved by running requests)")
        self.reservations[job_id] = amount
        self.reserved += amount

    @event("ReservationSettled", topic="basis:ApiKey.ReservationSettled.v1")
    def settle_reservation(self, job_id: str, released: int, charged: int) -> None:
        held = self.reservations.get(job_id)
        if held is None or held != released or not 0 <= charged <= held:
            raise InvalidTransition(f"job {job_id}: charge {charged} does not fit its key reservation {held}")
        del self.reservations[job_id]
        self.reserved -= held
        self.spent += charged

    def describe(self) -> dict[str, Any]:
        """What an operator sees (amounts as decimal strings, as everywhere over HTTP)."""
        return {
            "id": str(self.id), "object": "api_key", "name": self.name, "prefix": self.prefix,
            "account_id": str(self.account_id), "revoked": self.revoked,
            "cap": None if self.cap is None else str(self.cap), "spent": str(self.spent),
            "reserved": str(self.reserved), "cap_left": None if self.cap_left is None else str(self.cap_left),
            "requests_per_minute": self.requests_per_minute, "tokens_per_minute": self.tokens_per_minute,
        }


class CreditRef(Aggregate):
    """Index: (source, external id) -> credit. Creating it twice conflicts: a credit lands once."""

    TOPIC = "basis:CreditRef"

    class Created(Aggregate.Created):
        TOPIC = "basis:CreditRef.Created.v1"

    @staticmethod
    def create_id(source: str, external_id: str) -> UUID:
        return ids.credit_ref_id(source, external_id)

    @event("Recorded", topic="basis:CreditRef.Recorded.v1")
    def __init__(self, source: str, external_id: str, account_id: UUID, amount: int) -> None:
        self.source = source
        self.external_id = external_id
        self.account_id = account_id
        self.amount = amount
