"""Settlement batches: unsettled receipts -> roots and amounts -> ``CreditVault.settle`` -> ledger.

Crash safety (every step is a durable record or an idempotent question to the chain):

1. **propose** (one ledger command): the batch — its deterministic id, receipts (leaf order), the
   new cumulative rewards tree, the amounts — is recorded as ``proposed`` and the per-vault
   ``SettlementLog`` marks it in flight (only one batch in flight; a second proposer, even in
   another process, conflicts on the log's version and then sees the batch in flight).
2. **submit**: the transaction is simulated, signed, and its hash recorded (``submitted``)
   BEFORE it is broadcast.
3. **confirm** (one ledger command): batch ``confirmed(block)``, log closed, every job
   ``mark_settled(batch_id, leaf_index, tx_hash, chain_id)``, accounts' deposit spend settled.

The ledger commands of each step are in batch_commands.py; the settler here drives them.

Before any of it the settler takes the settlement lease (lease.py: one settler at a time across
processes) and checks that the chain still holds every batch the ledger confirmed
(consistency.py: a lost batch stops settlement until ``basis settle repost``, repair.py).

Restarting with a batch in flight asks the distributor whether that batch id was posted
(``isBatchPosted``; it refuses replays with ``BatchAlreadyPosted``): posted -> find the posting
transaction in the logs and confirm; not posted -> wait for a recorded transaction the node still
knows, else resubmit. A batch is abandoned only when it was never broadcast and the chain refuses
it, or when its id was posted with another receipts root (ledger and chain disagree).

Money per receipt (charged C, reward R, deposit-backed part D of C, DESIGN 1.1): deposit money
pays the reward first — ``to_distributor = min(R, D)``, ``to_treasury = D - min(R, D)``,
``reward_top_up = R - min(R, D)`` (pulled from the treasury: rewards earned on granted credit).
The granted part of the fee moves nothing (it was never backed by tokens).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError, TransactionNotFound

from basis.chain.contracts import _revert_data
from basis.ledger.export import LedgerHeads
from basis.ledger.projections import ViewReader
from basis.ledger.service import Ledger
from basis.ledger.settlement import SettlementBatch, SettlementLog, batch_aggregate_id, settlement_log_id
from basis.settlement.anchors import anchor_in_transaction
from basis.settlement.batch_commands import (
    MAX_RECEIPTS,
    STAGES,
    abandon_batch,
    batch_id_for,
    confirm_batch,
    propose_batch,
    record_submitted,
    split_amounts,
)
from basis.settlement.chain import TOPICS, Chain, from_hex, hex32
from basis.settlement.consistency import RECHECK_DEPTH, ChainMismatch, lost_batches
from basis.settlement.lease import LeaseHeld, SettlerLease
from basis.units import Seconds

log = logging.getLogger(__name__)
__all__ = [
    "MAX_RECEIPTS",
    "STAGES",
    "SettlementError",
    "Settler",
    "abandon_batch",
    "batch_id_for",
    "confirm_batch",
    "propose_batch",
    "record_submitted",
    "split_amounts",
]
class SettlementError(RuntimeError):
    pass


class _Refused(SettlementError):
    """The vault refused the transaction in simulation (a named contract error)."""

    def __init__(self, error: Any, action: str) -> None:
        self.error = error
        super().__init__(f"the vault refuses to {action} the batch: {error}")


class Settler:
    """Settles one batch at a time. ``hook(stage)`` is called after each durable step (tests inject
    crashes there): proposed, submitted (hash recorded, not yet broadcast), sent, mined, confirmed."""

    def __init__(self, ledger: Ledger, chain: Chain, operator_key: str, *,
                 reader: Callable[[], ViewReader], max_receipts: int = MAX_RECEIPTS,
                 receipt_timeout: Seconds = 120.0, hook: Callable[[str], None] | None = None,
                 lease_wait: Seconds = 0.0) -> None:
        self.ledger = ledger
        self.chain = chain
        self.contracts = chain.contracts
        self.sender = self.contracts.sender(operator_key)
        self.reader = reader
        self.max_receipts = max_receipts
        self.receipt_timeout = receipt_timeout
        self.hook = hook or (lambda stage: None)
        self.recheck_depth = RECHECK_DEPTH
        self.current_batch: str | None = None  # the batch being worked on (named in error logs)
        self._chain_checked = False  # a full check of the confirmed batches passed once
        self._lock = threading.Lock()
        # Across processes: only the lease holder proposes, sends and confirms (lease.py).
        self.lease = SettlerLease(ledger.env, f"{chain.chain_id}:{chain.vault.lower()}")
        self.lease_wait = lease_wait
        self._heads: LedgerHeads | None = None

    @property
    def heads(self) -> LedgerHeads:
        """The ledger's hash-chain head, for the anchor; follows the ledger if it is reopened."""
        if self._heads is None or self._heads.store is not self.ledger.store:
            self._heads = LedgerHeads(self.ledger.store, self.ledger.settings.home / "ledger-head.json")
        return self._heads

    @property
    def log_id(self) -> UUID:
        return settlement_log_id(self.chain.chain_id, self.chain.vault)

    def in_flight(self) -> str | None:
        try:
            slog: SettlementLog = self.ledger.get(self.log_id)
        except AggregateNotFoundError:
            return None
        return slog.in_flight

    def settle_once(self) -> dict[str, Any] | None:
        """Finish a batch left in flight, else propose and settle the next one.
        Returns the settled batch's summary, or None when there was nothing to settle.
        Raises LeaseHeld while another settler holds the lease (after ``lease_wait`` seconds)."""
        with self._lock, self._leased():
            self.current_batch = None
            self._check_chain()
            pending = self.in_flight()
            if pending is not None:
                log.info("finishing batch %s left in flight", pending, extra={"batch_id": pending})
                self.current_batch = pending
                return self._finish(pending)
            reader = self.reader()
            candidates = [r["job_id"] for r in reader.unsettled_receipts()]
            if not candidates:
                return None
            batch_id = self.ledger.run(propose_batch(self.chain.chain_id, self.chain.vault, self.chain.distributor,
                                                     candidates, self.max_receipts))
            if batch_id is None:
                return None
            self.current_batch = batch_id
            self.hook("proposed")
            return self._finish(batch_id)

    def check_chain(self) -> None:
        """Raise ChainMismatch when a batch the ledger confirmed is not on chain (consistency.py):
        every confirmed batch on this settler's first check, then the recent ones."""
        with self._lock:
            self._check_chain()

    def _check_chain(self) -> None:
        lost = lost_batches(self.ledger, self.chain, depth=self.recheck_depth if self._chain_checked else None)
        if lost:
            self._chain_checked = False
            raise ChainMismatch(lost)
        self._chain_checked = True

    def repost(self) -> list[dict[str, Any]]:
        """Send every confirmed batch the chain lost again, oldest first (``repair.repost_lost``)."""
        from basis.settlement.repair import repost_lost

        with self._lock, self._leased():
            done = repost_lost(self)
            self._chain_checked = False
            return done

    @contextlib.contextmanager
    def _leased(self) -> Iterator[None]:
        if not self.lease.acquire(self.lease_wait):
            raise LeaseHeld(f"another settler holds the settlement lease of chain {self.chain.chain_id} "
                            f"vault {self.chain.vault}; standing by")
        try:
            yield
        finally:
            self.lease.release()

    # -- steps ---------------------------------------------------------------------------------
    def _batch(self, batch_id: str) -> SettlementBatch:
        return self.ledger.get(batch_aggregate_id(batch_id))

    def _finish(self, batch_id: str) -> dict[str, Any]:
        batch = self._batch(batch_id)
        bid = from_hex(batch_id)
        dist = self.contracts.distributor.functions
        for _round in range(3):
            if not batch.is_open:
                return self.summary(batch)
            if dist.isBatchPosted(bid).call():
                onchain = hex32(dist.receiptsRootOf(bid).call())
                if onchain != batch.receipts_root:
                    reason = f"batch id posted on chain with receipts root {onchain}, ours is {batch.receipts_root}"
                    self.ledger.run(abandon_batch(batch_id, reason))
                    raise SettlementError(f"ledger and chain disagree on batch {batch_id}: {reason}")
                tx_hash, block = self._find_posting(bid)
                gas = int(self.chain.w3.eth.get_transaction_receipt(tx_hash)["gasUsed"])
                return self._confirm(batch_id, tx_hash, block, gas)
            if self._await_known_tx(batch):
                continue  # a recorded transaction was mined: ask the chain again
            result = self._submit(batch)
            if result is not None:
                return result
            batch = self._batch(batch_id)
        raise SettlementError(f"batch {batch_id} could not be settled; it stays in flight")

    def _await_known_tx(self, batch: SettlementBatch) -> bool:
        """Wait for a recorded transaction the node still knows. True if one was mined successfully."""
        w3 = self.chain.w3
        for tx_hash in reversed(batch.tx_hashes):
            try:
                w3.eth.get_transaction(tx_hash)
            except TransactionNotFound:
                continue
            receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout)
            if receipt["status"] == 1:
                return True
        return False

    def _build(self, batch: SettlementBatch, action: str = "settle") -> tuple[dict[str, Any], int]:
        """The signed-to-be ``CreditVault.settle`` transaction (simulated here: a refusal raises).
        It also anchors the ledger's head at its last committed position, which follows the
        batch's own events (docs/audit.md)."""
        anchor = self.heads.latest()
        fn = self.contracts.vault.functions.settle(
            from_hex(batch.batch_id), batch.to_distributor, batch.to_treasury, batch.reward_top_up,
            from_hex(batch.rewards_root), from_hex(batch.receipts_root), anchor.position, anchor.head)
        nonce = self.chain.w3.eth.get_transaction_count(self.sender.address, "pending")
        try:
            tx = fn.build_transaction({"from": self.sender.address, "nonce": nonce, "chainId": self.chain.chain_id})
        except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
            raise _Refused(self.contracts.decoder.decode(_revert_data(exc)), action) from exc
        return tx, nonce

    def _submit(self, batch: SettlementBatch) -> dict[str, Any] | None:
        w3 = self.chain.w3
        try:
            tx, nonce = self._build(batch)
        except _Refused as refused:
            err = refused.error
            if err.name == "BatchAlreadyPosted":
                return None  # posted meanwhile: the caller asks the chain again
            if not batch.tx_hashes:
                self.ledger.run(abandon_batch(batch.batch_id, f"the vault refused the batch: {err}"))
                raise SettlementError(f"the vault refused batch {batch.batch_id}: {err}; abandoned") from refused
            raise SettlementError(f"the vault refuses batch {batch.batch_id}: {err}; it stays in flight") from refused
        signed = self.sender.account.sign_transaction(tx)
        tx_hash = hex32(signed.hash)
        self.ledger.run(record_submitted(batch.batch_id, tx_hash, nonce))
        self.hook("submitted")
        w3.eth.send_raw_transaction(signed.raw_transaction)
        self.hook("sent")
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout)
        self.hook("mined")
        if receipt["status"] != 1:
            log.warning("settlement transaction %s reverted; batch %s stays in flight", tx_hash, batch.batch_id)
            return None
        return self._confirm(batch.batch_id, tx_hash, int(receipt["blockNumber"]), int(receipt["gasUsed"]))

    def _find_posting(self, bid: bytes) -> tuple[str, int]:
        logs = self.chain.w3.eth.get_logs({
            "address": self.chain.distributor, "fromBlock": self.chain.deploy_block, "toBlock": "latest",
            "topics": [hex32(TOPICS["RootPosted"]), hex32(bid)],
        })
        if len(logs) != 1:
            raise SettlementError(f"expected one RootPosted log for batch {hex32(bid)}, found {len(logs)}")
        return hex32(logs[0]["transactionHash"]), int(logs[0]["blockNumber"])

    def _confirm(self, batch_id: str, tx_hash: str, block: int, gas_used: int) -> dict[str, Any]:
        anchor = anchor_in_transaction(self.chain, tx_hash)
        self.ledger.run(confirm_batch(batch_id, tx_hash, block, gas_used, anchor))
        self.hook("confirmed")
        return self.summary(self._batch(batch_id))

    @staticmethod
    def summary(batch: SettlementBatch) -> dict[str, Any]:
        return {
            "batch_id": batch.batch_id, "seq": batch.seq, "status": batch.status, "receipts": len(batch.jobs),
            "receipts_root": batch.receipts_root, "rewards_root": batch.rewards_root,
            "to_distributor": str(batch.to_distributor), "to_treasury": str(batch.to_treasury),
            "reward_top_up": str(batch.reward_top_up), "tx_hash": batch.tx_hash, "block": batch.block,
            "gas_used": batch.gas_used, "reason": batch.reason,
        }


def __getattr__(name: str) -> Any:  # the scheduler moved to its own module; keep the old import path
    if name == "SettlementScheduler":
        from basis.settlement.scheduler import SettlementScheduler

        return SettlementScheduler
    raise AttributeError(name)
