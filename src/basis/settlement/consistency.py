"""Is the chain still the one the ledger settled on? Checked before any batch is built upon.

Every batch the ledger holds as confirmed must be posted on chain under its id with its receipts
root (``isBatchPosted`` and ``receiptsRootOf``). A chain that lost a confirmed batch (a reorg, a
node restarted from state saved before the batch's block) must not be built upon: the next
batch's cumulative rewards would include the lost one, and the distributor would promise rewards
it does not hold. So the settler stops and names the batches (``ChainMismatch``) until an operator
re-posts them (``basis settle repost``, see docs/settlement.md).

A full check walks every confirmed batch (at start: the first check of each settler). Before
each later batch only the batches confirmed in the last ``depth`` blocks are asked again, plus the
newest one below them: a chain that lost an older block also lost every later one, and every
later batch's transaction (the operator's nonces are sequential), so the newest batch answers for
the older ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from eventsourcing.application import AggregateNotFoundError

from basis.ledger.service import Ledger
from basis.ledger.settlement import SettlementBatch, SettlementLog, batch_aggregate_id, settlement_log_id
from basis.settlement.chain import Chain, from_hex, hex32

RECHECK_DEPTH = 64  # blocks: confirmed batches younger than this are asked again before every batch


@dataclass(frozen=True)
class LostBatch:
    batch_id: str
    seq: int
    block: int | None
    problem: str  # "not_posted" | "root_mismatch"
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "seq": self.seq, "block": self.block, "problem": self.problem,
                "detail": self.detail}


class ChainMismatch(RuntimeError):
    """Batches confirmed in the ledger are missing from the chain (or posted with another root)."""

    def __init__(self, lost: list[LostBatch]) -> None:
        self.lost = lost
        named = "; ".join(f"batch {b.seq} ({b.batch_id}): {b.detail}" for b in lost)
        super().__init__(f"the chain does not hold {len(lost)} batch(es) the ledger confirmed, so settlement "
                         f"stopped: {named}. Re-post them with `basis settle repost` (docs/settlement.md)")


def confirmed_batches(ledger: Ledger, chain: Chain) -> Iterator[SettlementBatch]:
    """The ledger's confirmed batches, newest first (each names the one confirmed before it)."""
    try:
        slog: SettlementLog = ledger.get(settlement_log_id(chain.chain_id, chain.vault))
    except AggregateNotFoundError:
        return
    batch_id = slog.last_confirmed
    while batch_id is not None:
        batch: SettlementBatch = ledger.get(batch_aggregate_id(batch_id))
        yield batch
        batch_id = batch.previous


def check_batch(chain: Chain, batch: SettlementBatch) -> LostBatch | None:
    dist = chain.contracts.distributor.functions
    bid = from_hex(batch.batch_id)
    if not dist.isBatchPosted(bid).call():
        return LostBatch(batch.batch_id, batch.seq, batch.block, "not_posted",
                         f"confirmed in block {batch.block} (tx {batch.tx_hash}) but not posted on chain")
    onchain = hex32(dist.receiptsRootOf(bid).call())
    if onchain != batch.receipts_root:
        return LostBatch(batch.batch_id, batch.seq, batch.block, "root_mismatch",
                         f"posted on chain with receipts root {onchain}, the ledger's is {batch.receipts_root}")
    return None


def lost_batches(ledger: Ledger, chain: Chain, *, depth: int | None = None) -> list[LostBatch]:
    """Confirmed batches the chain does not hold, oldest first. ``depth=None``: check all of them."""
    head = int(chain.w3.eth.block_number)
    lost = []
    for batch in confirmed_batches(ledger, chain):
        problem = check_batch(chain, batch)
        if problem is not None:
            lost.append(problem)
        if depth is not None and batch.block is not None and batch.block <= head - depth and problem is None:
            break
    return sorted(lost, key=lambda b: b.seq)
