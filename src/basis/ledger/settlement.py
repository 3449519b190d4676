"""Aggregates of on-chain settlement: batches, the per-vault settlement log, the voucher nonce
book, chain cursors and reward claims.

Commands that drive them live in ``basis.settlement`` (they only build ``fn(uow)`` functions).
Every event carries only data (no wall clock beyond eventsourcing's own timestamp), so replays
are deterministic. Topics are explicit and pinned in tests/ledger/test_ledger.py.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from basis.ledger.errors import InvalidTransition

_NS = UUID("2b7c3f61-5a0e-4c38-9c2e-8f1d6e4a7b90")


def _scope(chain_id: int, vault: str) -> str:
    return f"{int(chain_id)}:{vault.lower()}"


def settlement_log_id(chain_id: int, vault: str) -> UUID:
    return uuid5(_NS, f"settlement-log:{_scope(chain_id, vault)}")


def voucher_book_id(chain_id: int, vault: str) -> UUID:
    return uuid5(_NS, f"voucher-book:{_scope(chain_id, vault)}")


def batch_aggregate_id(batch_id: str) -> UUID:
    return uuid5(_NS, f"batch:{batch_id.lower()}")


def cursor_id(name: str) -> UUID:
    return uuid5(_NS, f"cursor:{name}")


def reward_claims_id(chain_id: int, distributor: str, worker: str) -> UUID:
    return uuid5(_NS, f"claims:{_scope(chain_id, distributor)}:{worker.lower()}")


class SettlementBatch(Aggregate):
    """proposed -> submitted (tx hash; again on a resubmission) -> confirmed (block) | abandoned.

    ``jobs``: one entry per receipt, in leaf order: job_id, account_id, hash, charged, reward,
    worker, from_deposit. ``rewards``: the new cumulative rewards tree, [[worker, cumulative]]
    sorted by worker. Amounts are ints.
    """

    TOPIC = "basis:SettlementBatch"

    class Created(Aggregate.Created):
        TOPIC = "basis:SettlementBatch.Created.v1"

    @staticmethod
    def create_id(batch_id: str) -> UUID:
        return batch_aggregate_id(batch_id)

    @event("Proposed", topic="basis:SettlementBatch.Proposed.v1")
    def __init__(self, batch_id: str, seq: int, chain_id: int, vault: str, distributor: str,
                 jobs: list[dict[str, Any]], receipts_root: str, rewards: list[list[Any]], rewards_root: str,
                 to_distributor: int, to_treasury: int, reward_top_up: int, previous: str | None) -> None:
        self.batch_id = batch_id
        self.seq = seq
        self.chain_id = chain_id
        self.vault = vault
        self.distributor = distributor
        self.jobs = jobs
        self.receipts_root = receipts_root
        self.rewards = rewards
        self.rewards_root = rewards_root
        self.to_distributor = to_distributor
        self.to_treasury = to_treasury
        self.reward_top_up = reward_top_up
        self.previous = previous
        self.status = "proposed"
        self.tx_hashes: list[str] = []
        self.tx_hash: str | None = None
        self.block: int | None = None
        self.gas_used: int | None = None
        self.reason: str | None = None
        self.anchor_position: int | None = None
        self.anchor_head: str | None = None

    @property
    def is_open(self) -> bool:
        return self.status in ("proposed", "submitted")

    @event("Submitted", topic="basis:SettlementBatch.Submitted.v1")
    def submit(self, tx_hash: str, nonce: int) -> None:
        if not self.is_open:
            raise InvalidTransition(f"batch {self.batch_id} is {self.status}")
        self.tx_hashes.append(tx_hash)
        self.status = "submitted"

    @event("Confirmed", topic="basis:SettlementBatch.Confirmed.v1")
    def confirm(self, tx_hash: str, block: int, gas_used: int, anchor_position: int | None = None,
                anchor_head: str | None = None) -> None:
        """``anchor_*``: the ledger (position, head) its transaction anchored, as the chain logged it
        (docs/audit.md); None for a batch settled before anchoring existed."""
        if not self.is_open:
            raise InvalidTransition(f"batch {self.batch_id} is {self.status}")
        self.tx_hash = tx_hash
        self.block = block
        self.gas_used = gas_used
        self.anchor_position = anchor_position
        self.anchor_head = anchor_head
        self.status = "confirmed"

    @event("Abandoned", topic="basis:SettlementBatch.Abandoned.v1")
    def abandon(self, reason: str) -> None:
        if not self.is_open:
            raise InvalidTransition(f"batch {self.batch_id} is {self.status}")
        self.reason = reason
        self.status = "abandoned"

    @event("Reposted", topic="basis:SettlementBatch.Reposted.v1")
    def repost(self, tx_hash: str, block: int, gas_used: int, reason: str) -> None:
        """A confirmed batch the chain lost (a reorg, a node restored from older state) was sent
        again with the same id, amounts and roots (``basis settle repost``); it lives in this tx now."""
        if self.status != "confirmed":
            raise InvalidTransition(f"batch {self.batch_id} is {self.status}, not confirmed")
        self.tx_hashes.append(tx_hash)
        self.tx_hash = tx_hash
        self.block = block
        self.gas_used = gas_used


class SettlementLog(Aggregate):
    """One per (chain id, vault): batch sequence, the one batch in flight, the last confirmed one."""

    TOPIC = "basis:SettlementLog"

    class Created(Aggregate.Created):
        TOPIC = "basis:SettlementLog.Created.v1"

    @staticmethod
    def create_id(chain_id: int, vault: str) -> UUID:
        return settlement_log_id(chain_id, vault)

    @event("Opened", topic="basis:SettlementLog.Opened.v1")
    def __init__(self, chain_id: int, vault: str) -> None:
        self.chain_id = chain_id
        self.vault = vault
        self.next_seq = 1
        self.in_flight: str | None = None
        self.last_confirmed: str | None = None
        self.confirmed = 0

    @event("BatchOpened", topic="basis:SettlementLog.BatchOpened.v1")
    def open_batch(self, batch_id: str, seq: int) -> None:
        if self.in_flight is not None:
            raise InvalidTransition(f"batch {self.in_flight} is still in flight")
        if seq != self.next_seq:
            raise InvalidTransition(f"expected batch seq {self.next_seq}, got {seq}")
        self.in_flight = batch_id
        self.next_seq += 1

    @event("BatchClosed", topic="basis:SettlementLog.BatchClosed.v1")
    def close_batch(self, batch_id: str, confirmed: bool) -> None:
        if self.in_flight != batch_id:
            raise InvalidTransition(f"batch {batch_id} is not in flight")
        self.in_flight = None
        if confirmed:
            self.last_confirmed = batch_id
            self.confirmed += 1


class VoucherBook(Aggregate):
    """One per (chain id, vault): the vault's voucher nonces are global, so one counter allocates
    them, and the outstanding vouchers (nonce -> account, amount, expiry) are listed here."""

    TOPIC = "basis:VoucherBook"

    class Created(Aggregate.Created):
        TOPIC = "basis:VoucherBook.Created.v1"

    @staticmethod
    def create_id(chain_id: int, vault: str) -> UUID:
        return voucher_book_id(chain_id, vault)

    @event("Opened", topic="basis:VoucherBook.Opened.v1")
    def __init__(self, chain_id: int, vault: str) -> None:
        self.chain_id = chain_id
        self.vault = vault
        self.next_nonce = 1
        self.outstanding: dict[str, dict[str, Any]] = {}
        self.redeemed_total = 0
        self.foreign_total = 0
        self.redeemed: set[str] = set()  # nonces of this ledger's vouchers seen redeemed
        self.foreign_seen: set[str] = set()  # "<tx hash>:<log index>" of foreign Withdrawn events

    @event("Allocated", topic="basis:VoucherBook.Allocated.v1")
    def allocate(self, nonce: int, account_id: str, amount: int, recipient: str, expiry: int) -> None:
        """``nonce`` >= next_nonce (a nonce already used on chain by someone else is skipped)."""
        if nonce < self.next_nonce:
            raise InvalidTransition(f"nonce {nonce} was already allocated (next is {self.next_nonce})")
        self.next_nonce = nonce + 1
        self.outstanding[str(nonce)] = {"account_id": account_id, "amount": amount, "recipient": recipient,
                                        "expiry": expiry}

    @event("Closed", topic="basis:VoucherBook.Closed.v1")
    def close(self, nonce: int, outcome: str, tx_hash: str | None, chain_time: int) -> None:
        """``outcome``: redeemed (its Withdrawn event, ``tx_hash``) or expired (``chain_time`` > expiry)."""
        entry = self.outstanding.pop(str(nonce), None)
        if entry is None:
            raise InvalidTransition(f"voucher {nonce} is not outstanding")
        if outcome == "redeemed":
            self.redeemed_total += entry["amount"]
            self.redeemed.add(str(nonce))

    @event("ForeignRedeemed", topic="basis:VoucherBook.ForeignRedeemed.v1")
    def foreign_redeemed(self, nonce: int, account: str, recipient: str, amount: int, tx_hash: str,
                         log_index: int) -> None:
        """A Withdrawn event for a nonce this ledger never allocated (an audit finding)."""
        self.foreign_total += amount
        self.foreign_seen.add(f"{tx_hash}:{log_index}")


class ChainCursor(Aggregate):
    """The last block an indexer has fully processed (resumes from there after a restart)."""

    TOPIC = "basis:ChainCursor"

    class Created(Aggregate.Created):
        TOPIC = "basis:ChainCursor.Created.v1"

    @staticmethod
    def create_id(name: str) -> UUID:
        return cursor_id(name)

    @event("Started", topic="basis:ChainCursor.Started.v1")
    def __init__(self, name: str, block: int) -> None:
        self.name = name
        self.block = block
        self.chain_time = 0
        self.block_hash: str | None = None

    @event("Advanced", topic="basis:ChainCursor.Advanced.v1")
    def advance(self, block: int, chain_time: int, block_hash: str | None = None) -> None:
        """``chain_time``: the block's timestamp (``timestamp`` is eventsourcing's own attribute).
        ``block_hash``: the hash of ``block`` as indexed; a chain whose block at this height has
        another hash reorganised blocks already indexed (None in events recorded before it was kept)."""
        if block <= self.block:
            raise InvalidTransition(f"cursor {self.name} is at {self.block}, not moving back to {block}")
        self.block = block
        self.chain_time = chain_time
        self.block_hash = block_hash


class RewardClaims(Aggregate):
    """A worker's claims on the distributor (indexed Claimed events); cumulative only grows."""

    TOPIC = "basis:RewardClaims"

    class Created(Aggregate.Created):
        TOPIC = "basis:RewardClaims.Created.v1"

    @staticmethod
    def create_id(chain_id: int, distributor: str, worker: str) -> UUID:
        return reward_claims_id(chain_id, distributor, worker)

    @event("Opened", topic="basis:RewardClaims.Opened.v1")
    def __init__(self, chain_id: int, distributor: str, worker: str) -> None:
        self.worker = worker.lower()
        self.claimed = 0

    @event("Claimed", topic="basis:RewardClaims.Claimed.v1")
    def record(self, worker: str, amount: int, cumulative: int, tx_hash: str, log_index: int, block: int) -> None:
        if cumulative <= self.claimed or cumulative - amount != self.claimed:
            raise InvalidTransition(f"claim to {cumulative} does not follow {self.claimed}")
        self.claimed = cumulative


def account_owners_id(chain_id: int, vault: str, account_id: str) -> UUID:
    return uuid5(_NS, f"owners:{_scope(chain_id, vault)}:{str(account_id).lower()}")


class AccountOwners(Aggregate):
    """One per (chain id, vault, account): who controls the account's money in that vault.

    ``depositors``: every address that deposited for the account (the indexer records each one
    from the vault's ``Deposited`` events). Only such an address may ask for a withdrawal
    (an EIP-712 request it signed), and only to such an address (DESIGN 1.5).
    ``requests``: the signed requests already honoured, ``"<signer>:<nonce>"``, so a signature
    withdraws once."""

    TOPIC = "basis:AccountOwners"

    class Created(Aggregate.Created):
        TOPIC = "basis:AccountOwners.Created.v1"

    @staticmethod
    def create_id(chain_id: int, vault: str, account_id: str) -> UUID:
        return account_owners_id(chain_id, vault, account_id)

    @event("Opened", topic="basis:AccountOwners.Opened.v1")
    def __init__(self, chain_id: int, vault: str, account_id: str) -> None:
        self.account_id = str(account_id)
        self.depositors: dict[str, str] = {}  # address (lowercase) -> "<tx hash>:<log index>" of its first deposit
        self.requests: set[str] = set()

    @event("DepositorSeen", topic="basis:AccountOwners.DepositorSeen.v1")
    def add_depositor(self, address: str, tx_hash: str, log_index: int, block: int) -> None:
        self.depositors.setdefault(address.lower(), f"{tx_hash}:{log_index}")

    @event("RequestHonoured", topic="basis:AccountOwners.RequestHonoured.v1")
    def honour_request(self, signer: str, nonce: str, voucher_nonce: int) -> None:
        """A withdrawal request signed by ``signer`` with ``nonce`` (a decimal string: a uint256)
        got voucher ``voucher_nonce``; the same signature is refused from now on."""
        key = f"{signer.lower()}:{nonce}"
        if key in self.requests:
            raise InvalidTransition(f"withdrawal request {nonce} of {signer} was already honoured")
        self.requests.add(key)
