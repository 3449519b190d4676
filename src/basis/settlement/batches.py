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

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError, TransactionNotFound

from basis.chain.contracts import _revert_data
from basis.domain.merkle import receipts_tree, rewards_tree
from basis.ledger.accounts import Account
from basis.ledger.committer import UnitOfWork
from basis.ledger.errors import LedgerError
from basis.ledger.jobs import Job
from basis.ledger.projections import ViewReader
from basis.ledger.service import Ledger
from basis.ledger.settlement import SettlementBatch, SettlementLog, batch_aggregate_id, settlement_log_id
from basis.settlement.chain import TOPICS, ZERO32, Chain, from_hex, hex32
from basis.settlement.roots import RootAcceptor
from basis.units import Seconds

log = logging.getLogger(__name__)
MAX_RECEIPTS = 5000
STAGES = ("proposed", "submitted", "sent", "mined", "confirmed")


class SettlementError(RuntimeError):
    pass


def batch_id_for(chain_id: int, vault: str, seq: int, receipts_root: str) -> str:
    return hex32(Web3.keccak(text=f"basis-batch:{chain_id}:{vault.lower()}:{seq}:{receipts_root.lower()}"))


def split_amounts(charged: int, reward: int, from_deposit: int) -> tuple[int, int, int]:
    """(to_distributor, to_treasury, reward_top_up) for one receipt."""
    to_dist = min(reward, from_deposit)
    return to_dist, from_deposit - to_dist, reward - to_dist


# -- ledger commands ---------------------------------------------------------------------------
def propose_batch(chain_id: int, vault: str, distributor: str, candidates: list[str],
                  max_receipts: int = MAX_RECEIPTS) -> Callable[[UnitOfWork], str | None]:
    """Record the next batch as proposed. Returns its id, the id of the batch already in flight,
    or None when no candidate is an issued, unsettled receipt."""

    def cmd(uow: UnitOfWork) -> str | None:
        slog = uow.find(SettlementLog, settlement_log_id(chain_id, vault))
        if slog is None:
            slog = uow.add(SettlementLog(chain_id=chain_id, vault=vault))
        if slog.in_flight is not None:
            return slog.in_flight
        cumulative: dict[str, int] = {}
        previous = slog.last_confirmed
        if previous is not None:
            prev = uow.find(SettlementBatch, batch_aggregate_id(previous))
            assert prev is not None
            cumulative = {w: int(c) for w, c in prev.rewards}
        jobs: list[dict[str, Any]] = []
        for job_id in candidates:
            if len(jobs) >= max_receipts:
                break
            job = uow.find(Job, UUID(job_id))
            if job is None or job.receipt is None or job.settlement is not None:
                continue
            uow.release(job)
            acc = uow.find(Account, job.account_id)
            assert acc is not None
            core = job.receipt["core"]
            entry = {"job_id": str(job.id), "account_id": str(job.account_id), "hash": job.receipt["hash"],
                     "charged": int(core["charged"]), "reward": int(core["reward"]), "worker": core["worker"],
                     "from_deposit": acc.unsettled_deposit_spend.get(str(job.id), 0)}
            jobs.append(entry)
            if entry["worker"] and entry["reward"]:
                w = entry["worker"].lower()
                cumulative[w] = cumulative.get(w, 0) + entry["reward"]
        if not jobs:
            return None
        to_dist = to_treasury = top_up = 0
        for e in jobs:
            d, t, u = split_amounts(e["charged"], e["reward"], e["from_deposit"])
            to_dist, to_treasury, top_up = to_dist + d, to_treasury + t, top_up + u
        rewards = [[w, cumulative[w]] for w in sorted(cumulative)]
        rewards_root = rewards_tree([(w, c) for w, c in rewards]).root_hex if rewards else ZERO32
        receipts_root = receipts_tree([e["hash"] for e in jobs]).root_hex
        seq = slog.next_seq
        batch_id = batch_id_for(chain_id, vault, seq, receipts_root)
        slog.open_batch(batch_id=batch_id, seq=seq)
        uow.add(SettlementBatch(batch_id=batch_id, seq=seq, chain_id=chain_id, vault=vault, distributor=distributor,
                                jobs=jobs, receipts_root=receipts_root, rewards=rewards, rewards_root=rewards_root,
                                to_distributor=to_dist, to_treasury=to_treasury, reward_top_up=top_up,
                                previous=previous))
        return batch_id

    return cmd


def record_submitted(batch_id: str, tx_hash: str, nonce: int) -> Callable[[UnitOfWork], None]:
    def cmd(uow: UnitOfWork) -> None:
        batch = uow.find(SettlementBatch, batch_aggregate_id(batch_id))
        assert batch is not None
        batch.submit(tx_hash=tx_hash, nonce=nonce)

    return cmd


def confirm_batch(batch_id: str, tx_hash: str, block: int, gas_used: int) -> Callable[[UnitOfWork], bool]:
    """Confirm the batch and settle its receipts, atomically. False when it was already closed."""

    def cmd(uow: UnitOfWork) -> bool:
        batch = uow.find(SettlementBatch, batch_aggregate_id(batch_id))
        assert batch is not None
        if not batch.is_open:
            return False
        slog = uow.find(SettlementLog, settlement_log_id(batch.chain_id, batch.vault))
        assert slog is not None
        batch.confirm(tx_hash=tx_hash, block=block, gas_used=gas_used)
        slog.close_batch(batch_id=batch_id, confirmed=True)
        by_account: dict[str, list[str]] = defaultdict(list)
        for index, e in enumerate(batch.jobs):
            job = uow.find(Job, UUID(e["job_id"]))
            assert job is not None
            job.mark_settled(batch_id=batch_id, leaf_index=index, tx_hash=tx_hash, chain_id=batch.chain_id)
            uow.release(job)
            if e["from_deposit"]:
                by_account[e["account_id"]].append(e["job_id"])
        for account_id, job_ids in by_account.items():
            acc = uow.find(Account, UUID(account_id))
            assert acc is not None
            acc.settle_deposit_spend(batch_id=batch_id, job_ids=job_ids)
        return True

    return cmd


def abandon_batch(batch_id: str, reason: str) -> Callable[[UnitOfWork], None]:
    def cmd(uow: UnitOfWork) -> None:
        batch = uow.find(SettlementBatch, batch_aggregate_id(batch_id))
        assert batch is not None
        if not batch.is_open:
            return
        slog = uow.find(SettlementLog, settlement_log_id(batch.chain_id, batch.vault))
        assert slog is not None
        batch.abandon(reason=reason[:500])
        slog.close_batch(batch_id=batch_id, confirmed=False)

    return cmd


# -- the settler -------------------------------------------------------------------------------
class Settler:
    """Settles one batch at a time. ``hook(stage)`` is called after each durable step (tests inject
    crashes there): proposed, submitted (hash recorded, not yet broadcast), sent, mined, confirmed."""

    def __init__(self, ledger: Ledger, chain: Chain, operator_key: str, *,
                 reader: Callable[[], ViewReader], max_receipts: int = MAX_RECEIPTS,
                 receipt_timeout: Seconds = 120.0, hook: Callable[[str], None] | None = None) -> None:
        self.ledger = ledger
        self.chain = chain
        self.contracts = chain.contracts
        self.sender = self.contracts.sender(operator_key)
        self.reader = reader
        self.max_receipts = max_receipts
        self.receipt_timeout = receipt_timeout
        self.hook = hook or (lambda stage: None)
        self._lock = threading.Lock()

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
        Returns the settled batch's summary, or None when there was nothing to settle."""
        with self._lock:
            pending = self.in_flight()
            if pending is not None:
                log.info("finishing batch %s left in flight", pending)
                return self._finish(pending)
            reader = self.reader()
            candidates = [r["job_id"] for r in reader.unsettled_receipts()]
            if not candidates:
                return None
            batch_id = self.ledger.run(propose_batch(self.chain.chain_id, self.chain.vault, self.chain.distributor,
                                                     candidates, self.max_receipts))
            if batch_id is None:
                return None
            self.hook("proposed")
            return self._finish(batch_id)

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

    def _submit(self, batch: SettlementBatch) -> dict[str, Any] | None:
        w3 = self.chain.w3
        fn = self.contracts.vault.functions.settle(
            from_hex(batch.batch_id), batch.to_distributor, batch.to_treasury, batch.reward_top_up,
            from_hex(batch.rewards_root), from_hex(batch.receipts_root))
        nonce = w3.eth.get_transaction_count(self.sender.address, "pending")
        try:
            tx = fn.build_transaction({"from": self.sender.address, "nonce": nonce, "chainId": self.chain.chain_id})
        except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
            err = self.contracts.decoder.decode(_revert_data(exc))
            if err.name == "BatchAlreadyPosted":
                return None  # posted meanwhile: the caller asks the chain again
            if not batch.tx_hashes:
                self.ledger.run(abandon_batch(batch.batch_id, f"the vault refused the batch: {err}"))
                raise SettlementError(f"the vault refused batch {batch.batch_id}: {err}; abandoned") from exc
            raise SettlementError(f"the vault refuses batch {batch.batch_id}: {err}; it stays in flight") from exc
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
        self.ledger.run(confirm_batch(batch_id, tx_hash, block, gas_used))
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


class SettlementScheduler:
    """Runs ``Settler.settle_once`` every ``interval`` seconds on a daemon thread (the gateway
    starts it when settlement is enabled). Errors are logged and retried on the next tick."""

    def __init__(self, ledger: Ledger, w3: Web3, deployment: dict[str, Any], operator_key: str, *,
                 reader: Callable[[], ViewReader], interval: Seconds = 60.0, max_receipts: int = MAX_RECEIPTS) -> None:
        self.settler = Settler(ledger, Chain(w3, deployment), operator_key, reader=reader, max_receipts=max_receipts)
        self.interval = interval
        self.roots = RootAcceptor(self.settler.chain, self.settler.sender)
        self.last_error: str | None = None
        self.last_batch: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> dict[str, Any] | None:
        try:
            result = self.settler.settle_once()
        except (SettlementError, LedgerError, OSError, ValueError, RuntimeError) as exc:
            self.last_error = str(exc)
            log.exception("settlement failed; retrying next tick")
            return None
        self.last_error = None
        if result is not None:
            self.last_batch = result
        self.roots.tick()  # accept the newest rewards root whose delay has passed (basis.settlement.roots)
        return result

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.tick()

        self._thread = threading.Thread(target=loop, name="basis-settlement", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
