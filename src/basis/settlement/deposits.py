"""Chain indexer: the vault's Deposited and Withdrawn events and the distributor's Claimed events.

- Reads logs from the block after its cursor up to ``head - confirmations`` (pages of
  ``max_blocks``), applies them in (block, log index) order and advances the cursor — a
  ``ChainCursor`` aggregate in the ledger, so it survives restarts — in one ledger command, so a
  snapshot never holds a page's credits without the cursor's block that covers them. Re-reading
  blocks (``reindex``, a crash before the commit) is harmless: every log is applied exactly once
  (deposits: a credit of source ``deposit`` whose ``CreditRef`` is ``"<tx hash>:<log index>"``;
  withdrawals: the voucher's reservation can be redeemed once; claims: the worker's cumulative
  claimed amount only grows).
- Deposited(account): the bytes32 is the account's UUID (DESIGN 1.5). When no Account has that
  id, the deposit is credited to the account NAMED by the UUID's text (opened if new), so a
  depositor may pick a fresh UUID and the operator later issues a key for that account name
  (``basis keys create --account <uuid>``). A bytes32 that is not a UUID + 16 zero bytes is
  credited to the account named by its 0x-hex text. Either way no deposit is lost and the vault
  balance stays reconcilable.
- After each pass, outstanding vouchers whose expiry is before the chain time of the cursor
  block are released (any redemption would be in a block at or before it, already indexed).
- Each deposit also records its depositor (the address that paid) on the account's
  ``AccountOwners``, in the same ledger command as the credit: only such an address may withdraw
  the account's deposit-backed credit (DESIGN 1.5, ``basis.settlement.withdrawals``).
- Without a deployment manifest the indexer reports ``pending`` and accepts nothing.
- Reorgs: blocks are indexed only ``confirmations`` deep (``basis serve --confirmations N``), and
  the cursor keeps the hash of its block. A pass first asks the chain for the block at the
  cursor's height: another hash (or no such block) means blocks already indexed were reorganised
  (a reorg deeper than ``confirmations``, or a node restored from older state). The indexer then
  stops (``ChainReorg``, named in its state, logs and metrics) instead of indexing the new
  branch, so a deposit moved to another block or log index is never credited twice.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from web3 import Web3

from basis.domain.account_id import AccountIdError, from_bytes32
from basis.ledger import ids
from basis.ledger.accounts import Account, CreditRef
from basis.ledger.committer import UnitOfWork
from basis.ledger.service import Ledger
from basis.ledger.settlement import (
    AccountOwners,
    ChainCursor,
    RewardClaims,
    VoucherBook,
    account_owners_id,
    cursor_id,
    voucher_book_id,
)
from basis.observability import metrics
from basis.settlement.chain import TOPICS, Chain, hex32
from basis.units import Seconds

log = logging.getLogger(__name__)


@dataclass
class IndexPass:
    from_block: int
    to_block: int
    deposits: int = 0
    duplicates: int = 0
    withdrawals: int = 0
    claims: int = 0
    released: int = 0
    credited: list[tuple[str, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"from_block": self.from_block, "to_block": self.to_block, "deposits": self.deposits,
                "duplicates": self.duplicates, "withdrawals": self.withdrawals, "claims": self.claims,
                "released": self.released}


class ChainReorg(RuntimeError):
    """Blocks the indexer already indexed are no longer on the chain."""


# -- ledger commands ---------------------------------------------------------------------------
def advance_cursor(name: str, start: int, block: int, chain_time: int, block_hash: str | None = None):
    def cmd(uow: UnitOfWork) -> None:
        cur = uow.find(ChainCursor, cursor_id(name))
        if cur is None:
            cur = uow.add(ChainCursor(name=name, block=start))
        if block > cur.block:
            cur.advance(block=block, chain_time=chain_time, block_hash=block_hash)

    return cmd


def record_deposit(chain_id: int, vault: str, account_id: UUID, *, depositor: str, amount: int, tx_hash: str,
                   log_index: int, block: int):
    """Credit a Deposited event once and bind its depositor to the account, in one commit.
    Returns "credited" or "duplicate" (a re-read: the depositor is bound all the same)."""
    external_id = f"{tx_hash}:{log_index}"

    def cmd(uow: UnitOfWork) -> str:
        owners = uow.find(AccountOwners, account_owners_id(chain_id, vault, str(account_id)))
        if owners is None:
            owners = uow.add(AccountOwners(chain_id=chain_id, vault=vault, account_id=str(account_id)))
        if depositor.lower() not in owners.depositors:
            owners.add_depositor(address=depositor.lower(), tx_hash=tx_hash, log_index=log_index, block=block)
        if uow.find(CreditRef, ids.credit_ref_id("deposit", external_id)) is not None:
            return "duplicate"
        acc = uow.find(Account, account_id)
        assert acc is not None
        acc.credit(source="deposit", external_id=external_id, amount=amount,
                   memo=f"deposit by {depositor} in block {block}")
        uow.add(CreditRef(source="deposit", external_id=external_id, account_id=account_id, amount=amount))
        return "credited"

    return cmd


def record_withdrawn(chain_id: int, vault: str, *, account: str, recipient: str, amount: int, nonce: int,
                     tx_hash: str, log_index: int):
    """A Withdrawn event: redeem the voucher's reservation once. Returns what happened."""

    def cmd(uow: UnitOfWork) -> str:
        book = uow.find(VoucherBook, voucher_book_id(chain_id, vault))
        if book is None:
            book = uow.add(VoucherBook(chain_id=chain_id, vault=vault))
        entry = book.outstanding.get(str(nonce))
        if entry is not None and entry["amount"] == amount:
            acc = uow.find(Account, UUID(entry["account_id"]))
            assert acc is not None
            acc.redeem_withdrawal(nonce=nonce, amount=amount, tx_hash=tx_hash, log_index=log_index)
            book.close(nonce=nonce, outcome="redeemed", tx_hash=tx_hash, chain_time=None)
            return "redeemed"
        if str(nonce) in book.redeemed or f"{tx_hash}:{log_index}" in book.foreign_seen:
            return "seen"  # a re-read of blocks already indexed
        book.foreign_redeemed(nonce=nonce, account=account, recipient=recipient, amount=amount, tx_hash=tx_hash,
                              log_index=log_index)
        return "foreign"

    return cmd


def record_claimed(chain_id: int, distributor: str, *, worker: str, amount: int, cumulative: int, tx_hash: str,
                   log_index: int, block: int):
    def cmd(uow: UnitOfWork) -> bool:
        claims = uow.find(RewardClaims, RewardClaims.create_id(chain_id, distributor, worker))
        if claims is None:
            claims = uow.add(RewardClaims(chain_id=chain_id, distributor=distributor, worker=worker))
        if cumulative <= claims.claimed:
            return False
        claims.record(worker=worker.lower(), amount=amount, cumulative=cumulative, tx_hash=tx_hash,
                      log_index=log_index, block=block)
        return True

    return cmd


def release_expired(chain_id: int, vault: str, chain_time: int):
    """Release every outstanding voucher whose expiry is before ``chain_time``."""

    def cmd(uow: UnitOfWork) -> int:
        book = uow.find(VoucherBook, voucher_book_id(chain_id, vault))
        if book is None:
            return 0
        expired = [(int(n), e) for n, e in book.outstanding.items() if chain_time > e["expiry"]]
        for nonce, e in sorted(expired, key=lambda x: x[0]):
            acc = uow.find(Account, UUID(e["account_id"]))
            assert acc is not None
            acc.release_withdrawal(nonce=nonce, amount=e["amount"], chain_time=chain_time)
            book.close(nonce=nonce, outcome="expired", tx_hash=None, chain_time=chain_time)
        return len(expired)

    return cmd


# -- the indexer -------------------------------------------------------------------------------
class ChainIndexer:
    """``run_once()`` indexes one page; ``sync()`` until caught up; ``start()``/``stop()`` poll."""

    def __init__(self, ledger: Ledger, w3: Web3 | None, deployment: dict[str, Any] | None, *,
                 confirmations: int = 0, max_blocks: int = 2000) -> None:
        self.ledger = ledger
        self.confirmations = confirmations
        self.max_blocks = max_blocks
        self.chain = Chain(w3, deployment) if (w3 is not None and deployment is not None) else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.consecutive_failures = 0
        self.reorg: str | None = None  # set while stopped on a reorg of blocks already indexed

    @property
    def status(self) -> str:
        """``pending`` until a vault is configured, then ``live``."""
        return "live" if self.chain is not None else "pending"

    @property
    def cursor_name(self) -> str:
        assert self.chain is not None
        return f"indexer:{self.chain.chain_id}:{self.chain.vault.lower()}"

    def cursor(self) -> int:
        assert self.chain is not None
        try:
            return self.ledger.get(cursor_id(self.cursor_name)).block
        except AggregateNotFoundError:
            return self.chain.deploy_block - 1

    def check_reorg(self) -> None:
        """Raise ChainReorg when the chain's block at the cursor's height is not the one indexed."""
        chain = self.chain
        assert chain is not None
        try:
            cur: ChainCursor = self.ledger.get(cursor_id(self.cursor_name))
        except AggregateNotFoundError:
            return
        recorded = getattr(cur, "block_hash", None)
        if recorded is None:
            return  # indexed before block hashes were kept
        head = int(chain.w3.eth.block_number)
        if head < cur.block:
            self._reorg(f"the chain's head {head} is below block {cur.block}, already indexed (hash {recorded})")
        now = hex32(chain.w3.eth.get_block(cur.block)["hash"])
        if now != recorded:
            self._reorg(f"block {cur.block} was indexed with hash {recorded}; the chain now has {now} there")
        if self.reorg is not None:
            log.warning("the chain holds the indexed blocks again; indexing resumes", extra={"block": cur.block})
            self.reorg = None
            metrics.CHAIN_INDEXER_REORG.set(0)

    def _reorg(self, detail: str) -> None:
        self.reorg = (f"{detail}: blocks already indexed were reorganised (deeper than {self.confirmations} "
                      "confirmation(s)), so the indexer stopped; deposits credited from them stay credited, "
                      "see docs/settlement.md")
        metrics.CHAIN_INDEXER_REORG.set(1)
        raise ChainReorg(self.reorg)

    def run_once(self) -> IndexPass | None:
        """Index the next page of blocks. None when pending or already at the head."""
        chain = self.chain
        if chain is None:
            return None
        w3 = chain.w3
        self.check_reorg()
        head = int(w3.eth.block_number) - self.confirmations
        start = self.cursor() + 1
        if start > head:
            return None
        end = min(head, start + self.max_blocks - 1)
        end_block = w3.eth.get_block(end)
        logs = self._logs(start, end)
        if w3.eth.get_block(end)["hash"] != end_block["hash"]:
            raise ChainReorg(f"block {end} changed while it was read (a reorg); the pass is retried")
        result = IndexPass(start, end)
        timestamp = int(end_block["timestamp"])
        # The page's credits and the cursor's move commit together: a snapshot (a live audit) that
        # saw a deposit of a block beyond its cursor's block compared the chain at that block with
        # a ledger one deposit ahead of it.
        self._apply_page(logs, result, advance_cursor(self.cursor_name, chain.deploy_block - 1, end, timestamp,
                                                      hex32(end_block["hash"])))
        result.released = self.ledger.run(release_expired(chain.chain_id, chain.vault, timestamp))
        return result

    def _logs(self, start: int, end: int) -> list[Any]:
        chain = self.chain
        assert chain is not None
        logs = chain.w3.eth.get_logs({
            "fromBlock": start, "toBlock": end, "address": [chain.vault, chain.distributor],
            "topics": [[hex32(TOPICS["Deposited"]), hex32(TOPICS["Withdrawn"]), hex32(TOPICS["Claimed"])]],
        })
        return sorted(logs, key=lambda x: (int(x["blockNumber"]), int(x["logIndex"])))

    def reindex(self, start: int, end: int) -> IndexPass:
        """Apply the logs of blocks start..end (inclusive) without moving the cursor; re-reading
        blocks already indexed changes nothing (each log lands once; depositors are bound)."""
        result = IndexPass(start, end)
        self._apply_page(self._logs(start, end), result)
        return result

    def state(self) -> dict[str, Any]:
        """``status``: pending | ok | retrying | reorg (stopped on a reorg of indexed blocks)."""
        if self.chain is None:
            return {"status": "pending"}
        status = "reorg" if self.reorg else ("retrying" if self.consecutive_failures else "ok")
        return {"status": status, "confirmations": self.confirmations, "reorg": self.reorg,
                "last_error": self.last_error, "consecutive_failures": self.consecutive_failures}

    def sync(self) -> list[IndexPass]:
        passes = []
        while (p := self.run_once()) is not None:
            passes.append(p)
        return passes

    def _apply_page(self, logs: list[Any], result: IndexPass, then: Any = None) -> None:
        """Record the logs (and run ``then``, the cursor's move) in one ledger command: one commit."""
        steps = [step for entry in logs if (step := self._step(entry)) is not None]

        def page(uow: Any) -> list[Any]:
            outcomes = [cmd(uow) for _, cmd, _ in steps]
            if then is not None:
                then(uow)
            return outcomes

        for (kind, _, detail), outcome in zip(steps, self.ledger.run(page), strict=True):
            if kind == "deposit":
                if outcome == "duplicate":
                    result.duplicates += 1
                else:
                    result.deposits += 1
                    result.credited.append(detail)
            elif kind == "withdrawn":
                if outcome == "foreign":
                    log.warning("Withdrawn with nonce %s was not issued by this ledger (tx %s)", *detail)
                if outcome != "seen":
                    result.withdrawals += 1
            elif outcome:
                result.claims += 1

    def _step(self, entry: Any) -> tuple[str, Any, Any] | None:
        """(kind, ledger command, detail) for one log; None for a log this indexer does not record."""
        chain = self.chain
        assert chain is not None
        topic = bytes(entry["topics"][0])
        tx_hash, log_index, block = hex32(entry["transactionHash"]), int(entry["logIndex"]), int(entry["blockNumber"])
        c = chain.contracts
        if topic == bytes(TOPICS["Deposited"]) and entry["address"].lower() == chain.vault.lower():
            args = c.vault.events.Deposited().process_log(entry)["args"]
            account_id = self._account_for(bytes(args["account"]))
            return "deposit", record_deposit(
                chain.chain_id, chain.vault, account_id, depositor=args["depositor"], amount=int(args["amount"]),
                tx_hash=tx_hash, log_index=log_index, block=block), (str(account_id), int(args["amount"]))
        if topic == bytes(TOPICS["Withdrawn"]) and entry["address"].lower() == chain.vault.lower():
            args = c.vault.events.Withdrawn().process_log(entry)["args"]
            return "withdrawn", record_withdrawn(
                chain.chain_id, chain.vault, account=hex32(args["account"]), recipient=args["recipient"],
                amount=int(args["amount"]), nonce=int(args["nonce"]), tx_hash=tx_hash,
                log_index=log_index), (args["nonce"], tx_hash)
        if topic == bytes(TOPICS["Claimed"]) and entry["address"].lower() == chain.distributor.lower():
            args = c.distributor.events.Claimed().process_log(entry)["args"]
            return "claimed", record_claimed(chain.chain_id, chain.distributor, worker=args["worker"],
                                             amount=int(args["amount"]), cumulative=int(args["cumulative"]),
                                             tx_hash=tx_hash, log_index=log_index, block=block), None
        return None

    def _account_for(self, raw: bytes) -> UUID:
        try:
            uid = from_bytes32(raw)
        except AccountIdError:
            return self.ledger.open_account("0x" + raw.hex())
        try:
            found = self.ledger.get(uid)
        except AggregateNotFoundError:
            found = None
        if isinstance(found, Account):
            return uid
        return self.ledger.open_account(str(uid))

    # -- background ----------------------------------------------------------------------------
    def start(self, interval: Seconds = 2.0) -> None:
        if self.chain is None:
            return

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.sync()
                    self.last_error = None
                    self.consecutive_failures = 0
                except Exception as exc:  # keep polling; the cursor makes the next pass resume
                    from basis.settlement.scheduler import public_error

                    self.last_error = public_error(exc)
                    self.consecutive_failures += 1
                    log.error("chain indexer stopped: reorg of indexed blocks" if isinstance(exc, ChainReorg)
                              else "chain indexer pass failed; retrying", exc_info=exc,
                              extra={"error_type": type(exc).__name__, "error": self.last_error,
                                     "consecutive_failures": self.consecutive_failures})
                metrics.CHAIN_INDEXER_FAILURES.set(self.consecutive_failures)
                self._stop.wait(interval)

        self._thread = threading.Thread(target=loop, name="basis-chain-indexer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


DepositIndexer = ChainIndexer  # the name the issue uses
