"""Re-posting confirmed batches the chain lost (``basis settle repost``; see consistency.py).

A lost batch is sent again exactly as the ledger confirmed it — same batch id, amounts, rewards and
receipts roots — oldest first, so each one lands on the cumulative state its successor was built on.
Then ``SettlementBatch.Reposted`` records the transaction it lives in now (the batch stays
confirmed; receipts keep their batch and leaf index). A batch id the chain holds with another
receipts root is never re-posted: ledger and chain disagree on what the batch was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from basis.ledger.committer import UnitOfWork
from basis.ledger.settlement import SettlementBatch, batch_aggregate_id
from basis.settlement.chain import hex32
from basis.settlement.consistency import lost_batches

if TYPE_CHECKING:
    from basis.settlement.batches import Settler

log = logging.getLogger(__name__)


def record_reposted(batch_id: str, tx_hash: str, block: int, gas_used: int,
                    reason: str) -> Callable[[UnitOfWork], None]:
    def cmd(uow: UnitOfWork) -> None:
        batch = uow.find(SettlementBatch, batch_aggregate_id(batch_id))
        assert batch is not None
        batch.repost(tx_hash=tx_hash, block=block, gas_used=gas_used, reason=reason[:500])

    return cmd


def repost_lost(settler: Settler) -> list[dict[str, Any]]:
    """Re-post every lost batch (the caller holds the settler's lock and lease). Raises
    SettlementError, naming the batch, when one cannot be re-posted or the vault refuses it."""
    from basis.settlement.batches import SettlementError

    lost = lost_batches(settler.ledger, settler.chain)
    foreign = [b for b in lost if b.problem != "not_posted"]
    if foreign:
        raise SettlementError("cannot re-post: " + "; ".join(f"batch {b.seq} ({b.batch_id}): {b.detail}"
                                                              for b in foreign))
    w3 = settler.chain.w3
    done = []
    for lb in lost:
        settler.current_batch = lb.batch_id
        tx, _nonce = settler._build(settler._batch(lb.batch_id), action="re-post")
        signed = settler.sender.account.sign_transaction(tx)
        tx_hash = hex32(signed.hash)
        w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=settler.receipt_timeout)
        if receipt["status"] != 1:
            raise SettlementError(f"the re-post of batch {lb.seq} ({lb.batch_id}) reverted in tx {tx_hash}")
        settler.ledger.run(record_reposted(lb.batch_id, tx_hash, int(receipt["blockNumber"]),
                                           int(receipt["gasUsed"]), f"lost from the chain: {lb.detail}"))
        log.warning("re-posted lost batch %s", lb.batch_id,
                    extra={"batch_id": lb.batch_id, "seq": lb.seq, "tx_hash": tx_hash})
        done.append(settler.summary(settler._batch(lb.batch_id)))
    return done
