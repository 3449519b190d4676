"""Projection of the chain side of the ledger: withdrawals and their vouchers, settlement batches,
reward claims and chain cursors (split from the projector, which keeps accounts, jobs and receipts).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from basis.ledger.projections.checks import _ts, reward_row

if TYPE_CHECKING:
    from basis.ledger.projections.projector import Projector, _Batch


# -- withdrawals -------------------------------------------------------------------------------
def withdrawal_reserved(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    p._account(b, n, d)["reserved"] += d["amount"]


def withdrawal_redeemed(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    row = p._account(b, n, d)
    row["reserved"] -= d["amount"]
    row["withdrawn"] += d["amount"]


def withdrawal_released(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    p._account(b, n, d)["reserved"] -= d["amount"]


def voucher_allocated(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    p.db.execute(
        "INSERT INTO withdrawals VALUES (?, ?, ?, ?, ?, ?, 'reserved', NULL, NULL, ?, NULL)",
        (str(n.originator_id), d["nonce"], d["account_id"], d["recipient"], str(d["amount"]), d["expiry"],
         _ts(d)))


def voucher_closed(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    p.db.execute(
        "UPDATE withdrawals SET status = ?, tx_hash = ?, chain_time = ?, closed_at = ?"
        " WHERE book_id = ? AND nonce = ?",
        (d["outcome"], d.get("tx_hash"), d.get("chain_time"), _ts(d), str(n.originator_id), d["nonce"]))


def voucher_foreign(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    p.db.execute(
        "INSERT OR REPLACE INTO withdrawals VALUES (?, ?, NULL, ?, ?, 0, 'foreign', ?, NULL, ?, ?)",
        (str(n.originator_id), d["nonce"], d["recipient"], str(d["amount"]), d["tx_hash"], _ts(d),
         _ts(d)))


# -- settlement batches ------------------------------------------------------------------------
def batch_proposed(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    jobs = d["jobs"]
    p.db.execute(
        "INSERT INTO settlement_batches VALUES (?, ?, ?, ?, ?, ?, 'proposed', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
        " NULL, NULL, NULL, NULL, ?, NULL, NULL, NULL, NULL)",
        (d["batch_id"], str(n.originator_id), d["seq"], d["chain_id"], d["vault"], d["distributor"], len(jobs),
         d["receipts_root"], d["rewards_root"], str(sum(j["charged"] for j in jobs)),
         str(sum(j["reward"] for j in jobs)), str(sum(j["from_deposit"] for j in jobs)),
         str(d["to_distributor"]), str(d["to_treasury"]), str(d["reward_top_up"]),
         json.dumps([j["hash"] for j in jobs]), json.dumps([[w, str(c)] for w, c in d["rewards"]]),
         d.get("previous"), _ts(d)))


def batch_submitted(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    p.db.execute("UPDATE settlement_batches SET status = 'submitted', tx_hash = ?, submitted_at = ?"
                 " WHERE aggregate_id = ?", (d["tx_hash"], _ts(d), str(n.originator_id)))


def batch_confirmed(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    p.db.execute("UPDATE settlement_batches SET status = 'confirmed', tx_hash = ?, block = ?, gas_used = ?,"
                 " closed_at = ?, anchor_position = ?, anchor_head = ? WHERE aggregate_id = ?",
                 (d["tx_hash"], d["block"], d["gas_used"], _ts(d), d.get("anchor_position"),
                  d.get("anchor_head"), str(n.originator_id)))


def batch_abandoned(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    p.db.execute("UPDATE settlement_batches SET status = 'abandoned', reason = ?, closed_at = ?"
                 " WHERE aggregate_id = ?", (d["reason"], _ts(d), str(n.originator_id)))


def batch_reposted(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    p.db.execute("UPDATE settlement_batches SET tx_hash = ?, block = ?, gas_used = ? WHERE aggregate_id = ?",
                 (d["tx_hash"], d["block"], d["gas_used"], str(n.originator_id)))


# -- claims and cursors ------------------------------------------------------------------------
def reward_claimed(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    worker = d["worker"].lower()
    p.db.execute("INSERT INTO claims VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (d["tx_hash"], d["log_index"], worker, str(d["amount"]), str(d["cumulative"]), d["block"],
                  _ts(d)))
    row = reward_row(b, worker)
    row["claimed"] += d["amount"]


def cursor_started(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    p.db.execute("INSERT INTO chain_cursors VALUES (?, ?, ?, 0, ?)",
                 (str(n.originator_id), d["name"], d["block"], _ts(d)))


def cursor_advanced(p: Projector, b: _Batch, n: Any, d: dict[str, Any]) -> None:
    p.db.execute("UPDATE chain_cursors SET block = ?, chain_time = ?, updated_at = ? WHERE cursor_id = ?",
                 (d["block"], d["chain_time"], _ts(d), str(n.originator_id)))


HANDLERS = {
    "basis:Account.WithdrawalReserved.v1": withdrawal_reserved,
    "basis:Account.WithdrawalRedeemed.v1": withdrawal_redeemed,
    "basis:Account.WithdrawalReleased.v1": withdrawal_released,
    "basis:VoucherBook.Allocated.v1": voucher_allocated,
    "basis:VoucherBook.Closed.v1": voucher_closed,
    "basis:VoucherBook.ForeignRedeemed.v1": voucher_foreign,
    "basis:SettlementBatch.Proposed.v1": batch_proposed,
    "basis:SettlementBatch.Submitted.v1": batch_submitted,
    "basis:SettlementBatch.Confirmed.v1": batch_confirmed,
    "basis:SettlementBatch.Abandoned.v1": batch_abandoned,
    "basis:SettlementBatch.Reposted.v1": batch_reposted,
    "basis:RewardClaims.Claimed.v1": reward_claimed,
    "basis:ChainCursor.Started.v1": cursor_started,
    "basis:ChainCursor.Advanced.v1": cursor_advanced,
}
