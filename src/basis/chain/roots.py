"""The distributor's rewards-root delay, read from the chain alone (no ledger).

A posted rewards root is pending until anyone accepts it after ``ROOT_DELAY`` seconds or the
owner revokes it; claims prove against the last accepted root. These helpers list the roots the
chain reports (RootPosted / RootPending / RootAccepted / RootRevoked logs) and accept the newest
pending root that is due, so the gateway's settlement loop, ``basis worker claim`` and the audits
share one reading of that state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from web3 import Web3

from basis.chain.contracts import BasisContracts, ChainRevert, Sender, TxResult

ZERO32 = b"\0" * 32


@dataclass
class RootRecord:
    batch_id: str  # 0x-hex bytes32
    rewards_root: str
    receipts_root: str
    block: int
    tx_hash: str
    status: str = "pending"  # pending | accepted (the current one) | superseded | revoked
    valid_at: int | None = None
    events: list[str] = field(default_factory=list)


def _hex(b: Any) -> str:
    return "0x" + bytes(b).hex()


def root_history(contracts: BasisContracts, from_block: int = 0) -> list[RootRecord]:
    """Every rewards root posted on the distributor, in posting order, with its fate."""
    dist = contracts.distributor
    records: dict[str, RootRecord] = {}
    order: list[str] = []

    def logs(name: str) -> list[Any]:
        return list(dist.events[name]().get_logs(from_block=from_block, to_block="latest"))

    for ev in logs("RootPosted"):
        bid = _hex(ev["args"]["batchId"])
        records[bid] = RootRecord(bid, _hex(ev["args"]["rewardsRoot"]), _hex(ev["args"]["receiptsRoot"]),
                                  int(ev["blockNumber"]), _hex(ev["transactionHash"]))
        order.append(bid)
    for ev in logs("RootPending"):
        rec = records.get(_hex(ev["args"]["batchId"]))
        if rec is not None:
            rec.valid_at = int(ev["args"]["validAt"])
    accepted = _hex(contracts.accepted_batch())
    for ev in logs("RootAccepted"):
        rec = records.get(_hex(ev["args"]["batchId"]))
        if rec is not None:
            rec.status = "superseded"
            rec.events.append("accepted")
    for ev in logs("RootRevoked"):
        rec = records.get(_hex(ev["args"]["batchId"]))
        if rec is not None:
            rec.status = "revoked"
            rec.events.append("revoked")
    if accepted in records:
        records[accepted].status = "accepted"
    seen_accepted = False
    for bid in reversed(order):
        rec = records[bid]
        if rec.status == "accepted":
            seen_accepted = True
        elif rec.status == "pending" and seen_accepted:
            rec.status = "superseded"  # older than the accepted root: can never be accepted
    return [records[b] for b in order]


def chain_time(w3: Web3) -> int:
    return int(w3.eth.get_block("latest")["timestamp"])


def accept_due_root(contracts: BasisContracts, sender: Sender, *, from_block: int = 0,
                    now: int | None = None) -> TxResult | None:
    """Accept the newest pending rewards root whose delay has passed; None when none is due.

    ``now`` defaults to the latest block's time; the contract decides with the next block's."""
    now = chain_time(contracts.w3) if now is None else now
    accepted_seq = contracts.accepted_seq()
    for rec in reversed(root_history(contracts, from_block)):
        if rec.status != "pending":
            continue
        _, valid_at, seq = contracts.pending_root_of(bytes.fromhex(rec.batch_id[2:]))
        if seq <= accepted_seq or valid_at > now:
            continue
        try:
            return contracts.accept_root(sender, bytes.fromhex(rec.batch_id[2:]))
        except ChainRevert as exc:
            if exc.name in ("RootNotYetValid", "NoPendingRoot"):
                continue  # raced the clock or another acceptor; the next tick retries
            raise
    return None
