"""Ledger anchors on chain: each settlement transaction logs ``LedgerAnchored(batchId, position,
head)`` from the vault (docs/audit.md). Reading them, and checking a ledger export against them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from basis.settlement.chain import TOPICS, Chain, hex32


@dataclass(frozen=True)
class Anchor:
    batch_id: str
    position: int
    head: str
    tx_hash: str
    block: int

    def as_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "position": self.position, "head": self.head, "tx_hash": self.tx_hash,
                "block": self.block}


def _decode(log: Any) -> Anchor:
    data = bytes(log["data"])
    return Anchor(batch_id=hex32(log["topics"][1]), position=int.from_bytes(data[:32], "big"),
                  head=hex32(data[32:64]), tx_hash=hex32(log["transactionHash"]), block=int(log["blockNumber"]))


def _is_anchor(chain: Chain, log: Any) -> bool:
    return (log["address"].lower() == chain.vault.lower() and len(log["topics"]) == 2
            and bytes(log["topics"][0]) == bytes(TOPICS["LedgerAnchored"]))


def anchor_in_transaction(chain: Chain, tx_hash: str) -> tuple[int, str] | None:
    """(position, head) the settlement transaction ``tx_hash`` anchored, None when it logged none."""
    receipt = chain.w3.eth.get_transaction_receipt(tx_hash)
    for log in receipt["logs"]:
        if _is_anchor(chain, log):
            a = _decode(log)
            return a.position, a.head
    return None


def chain_anchors(chain: Chain, to_block: int | str = "latest") -> list[Anchor]:
    """Every anchor the vault logged, in chain order (positions strictly increase: the vault
    refuses any other)."""
    logs = chain.w3.eth.get_logs({"address": chain.vault, "fromBlock": chain.deploy_block, "toBlock": to_block,
                                  "topics": [hex32(TOPICS["LedgerAnchored"])]})
    return [_decode(log) for log in logs if _is_anchor(chain, log)]


def check_anchors(anchors: list[Anchor], head_of: Callable[[int], str | None], last_position: int,
                  problem: Callable[[int | None, str], None],
                  claims: list[tuple[int, int, str]] = ()) -> dict[str, Any]:
    """Every anchor on chain must name a position the export holds with the same head, and the export
    must reach the latest; every anchor the export claims (line position, anchored position, head)
    must be one the chain holds. Returns the summary (anchors, anchored_through, unanchored)."""
    by_position = {a.position: a for a in anchors}
    for a in anchors:
        if a.position > last_position:
            problem(a.position, f"anchored on chain (batch {a.batch_id}, tx {a.tx_hash}) but the export ends at "
                                f"position {last_position}: it does not reach the latest anchor")
            continue
        have = head_of(a.position)
        if have is None:
            problem(a.position, f"anchored on chain (batch {a.batch_id}, tx {a.tx_hash}) but missing from the export")
        elif have != a.head:
            problem(a.position, f"anchored head on chain {a.head} (batch {a.batch_id}, tx {a.tx_hash}) != the "
                                f"export's head {have}")
    for line_position, position, head in claims:
        onchain = by_position.get(position)
        if onchain is None:
            problem(position, f"the export claims it anchored (position {line_position}); no anchor on chain names it")
        elif onchain.head != head:
            problem(position, f"the export claims anchor head {head} (position {line_position}); the chain holds "
                              f"{onchain.head}")
    through = max((a.position for a in anchors), default=0)
    return {"anchors": len(anchors), "anchored_through": through,
            "latest": anchors[-1].as_dict() if anchors else None}
