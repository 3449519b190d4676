"""Chain indexer: the vault's Deposited and Withdrawn events and the distributor's Claimed events.

- Reads logs from the block after its cursor up to ``head - confirmations`` (pages of
  ``max_blocks``), applies them in (block, log index) order, then advances the cursor — a
  ``ChainCursor`` aggregate in the ledger, so it survives restarts. A crash between applying and
  advancing re-reads the same blocks, which is harmless: every log is applied exactly once
  (deposits: ``Ledger.credit(account, "deposit", "<tx hash>:<log index>", amount)`` and its
  ``DuplicateCredit``; withdrawals: the voucher's reservation can be redeemed once; claims: the
  worker's cumulative claimed amount only grows).
- Deposited(account): the bytes32 is the account's UUID (DESIGN 1.5). When no Account has that
  id, the deposit is credited to the account NAMED by the UUID's text (opened if new), so a
  depositor may pick a fresh UUID and the operator later issues a key for that account name
  (``basis keys create --account <uuid>``). A bytes32 that is not a UUID + 16 zero bytes is
  credited to the account named by its 0x-hex text. Either way no deposit is lost and the vault
  balance stays reconcilable.
- After each pass, outstanding vouchers whose expiry is before the chain time of the cursor
  block are released (any redemption would be in a block at or before it, already indexed).
- Without a deployment manifest the indexer reports ``pending`` and accepts nothing.
- Reorgs deeper than ``confirmations`` are not handled: use confirmations > 0 on a real chain.
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
from basis.ledger.accounts import Account
from basis.ledger.committer import UnitOfWork
from basis.ledger.errors import DuplicateCredit
from basis.ledger.service import Ledger
from basis.ledger.settlement import ChainCursor, RewardClaims, VoucherBook, cursor_id, voucher_book_id
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


# -- ledger commands ---------------------------------------------------------------------------
def advance_cursor(name: str, start: int, block: int, chain_time: int):
    def cmd(uow: UnitOfWork) -> None:
        cur = uow.find(ChainCursor, cursor_id(name))
        if cur is None:
            cur = uow.add(ChainCursor(name=name, block=start))
        if block > cur.block:
            cur.advance(block=block, chain_time=chain_time)

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

    def run_once(self) -> IndexPass | None:
        """Index the next page of blocks. None when pending or already at the head."""
        chain = self.chain
        if chain is None:
            return None
        w3 = chain.w3
        head = int(w3.eth.block_number) - self.confirmations
        start = self.cursor() + 1
        if start > head:
            return None
        end = min(head, start + self.max_blocks - 1)
        result = self.reindex(start, end)
        timestamp = int(w3.eth.get_block(end)["timestamp"])
        self.ledger.run(advance_cursor(self.cursor_name, chain.deploy_block - 1, end, timestamp))
        result.released = self.ledger.run(release_expired(chain.chain_id, chain.vault, timestamp))
        return result

    def reindex(self, start: int, end: int) -> IndexPass:
        """Apply the logs of blocks start..end (inclusive) without moving the cursor; re-reading
        blocks already indexed changes nothing (each log lands once)."""
        chain = self.chain
        assert chain is not None
        result = IndexPass(start, end)
        logs = chain.w3.eth.get_logs({
            "fromBlock": start, "toBlock": end, "address": [chain.vault, chain.distributor],
            "topics": [[hex32(TOPICS["Deposited"]), hex32(TOPICS["Withdrawn"]), hex32(TOPICS["Claimed"])]],
        })
        for entry in sorted(logs, key=lambda x: (int(x["blockNumber"]), int(x["logIndex"]))):
            self._apply(entry, result)
        return result

    def sync(self) -> list[IndexPass]:
        passes = []
        while (p := self.run_once()) is not None:
            passes.append(p)
        return passes

    def _apply(self, entry: Any, result: IndexPass) -> None:
        chain = self.chain
        assert chain is not None
        topic = bytes(entry["topics"][0])
        tx_hash, log_index, block = hex32(entry["transactionHash"]), int(entry["logIndex"]), int(entry["blockNumber"])
        c = chain.contracts
        if topic == bytes(TOPICS["Deposited"]) and entry["address"].lower() == chain.vault.lower():
            args = c.vault.events.Deposited().process_log(entry)["args"]
            account_id = self._account_for(bytes(args["account"]))
            try:
                self.ledger.credit(account_id, "deposit", f"{tx_hash}:{log_index}", int(args["amount"]),
                                   memo=f"deposit by {args['depositor']} in block {block}")
            except DuplicateCredit:
                result.duplicates += 1
            else:
                result.deposits += 1
                result.credited.append((str(account_id), int(args["amount"])))
        elif topic == bytes(TOPICS["Withdrawn"]) and entry["address"].lower() == chain.vault.lower():
            args = c.vault.events.Withdrawn().process_log(entry)["args"]
            outcome = self.ledger.run(record_withdrawn(
                chain.chain_id, chain.vault, account=hex32(args["account"]), recipient=args["recipient"],
                amount=int(args["amount"]), nonce=int(args["nonce"]), tx_hash=tx_hash, log_index=log_index))
            if outcome == "foreign":
                log.warning("Withdrawn with nonce %s was not issued by this ledger (tx %s)", args["nonce"], tx_hash)
            if outcome != "seen":
                result.withdrawals += 1
        elif topic == bytes(TOPICS["Claimed"]) and entry["address"].lower() == chain.distributor.lower():
            args = c.distributor.events.Claimed().process_log(entry)["args"]
            if self.ledger.run(record_claimed(chain.chain_id, chain.distributor, worker=args["worker"],
                                              amount=int(args["amount"]), cumulative=int(args["cumulative"]),
                                              tx_hash=tx_hash, log_index=log_index, block=block)):
                result.claims += 1

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
                except Exception as exc:  # keep polling; the cursor makes the next pass resume
                    self.last_error = str(exc)
                    log.exception("chain indexer pass failed; retrying")
                self._stop.wait(interval)

        self._thread = threading.Thread(target=loop, name="basis-chain-indexer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


DepositIndexer = ChainIndexer  # the name the issue uses
