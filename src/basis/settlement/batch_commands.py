"""Settlement batches as ledger commands: propose (receipts -> roots and amounts), record the
submitted transaction, confirm (jobs settled, deposit spend settled), abandon. Each is one ledger
command, so each step is one commit; batches.py drives them against the chain (the money per
receipt and the crash-safety steps are described there)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any
from uuid import UUID

from web3 import Web3

from basis.domain.merkle import receipts_tree, rewards_tree
from basis.ledger.accounts import Account
from basis.ledger.committer import UnitOfWork
from basis.ledger.jobs import Job
from basis.ledger.settlement import SettlementBatch, SettlementLog, batch_aggregate_id, settlement_log_id
from basis.ledger.verdicts import settleable_reward
from basis.settlement.chain import ZERO32, hex32

MAX_RECEIPTS = 5000
STAGES = ("proposed", "submitted", "sent", "mined", "confirmed")



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
        picked: list[Job] = []
        for job_id in candidates:
            if len(jobs) >= max_receipts:
                break
            job = uow.find(Job, UUID(job_id))
            if job is None or job.receipt is None or job.settlement is not None or job.in_batch is not None:
                continue
            reward = settleable_reward(uow, job)  # None: awaiting its verdict; 0: forfeited (DESIGN 1.6)
            if reward is None:
                continue
            picked.append(job)
            acc = uow.find(Account, job.account_id)
            assert acc is not None
            core = job.receipt["core"]
            entry = {"job_id": str(job.id), "account_id": str(job.account_id), "hash": job.receipt["hash"],
                     "charged": int(core["charged"]), "reward": reward, "worker": core["worker"],
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
        for job in picked:  # their rewards are committed now: no suspension forfeits them meanwhile
            job.batch(batch_id=batch_id)
            uow.release(job)
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


def confirm_batch(batch_id: str, tx_hash: str, block: int, gas_used: int,
                  anchor: tuple[int, str] | None = None) -> Callable[[UnitOfWork], bool]:
    """Confirm the batch and settle its receipts, atomically. False when it was already closed.
    ``anchor``: the ledger (position, head) its transaction anchored (read from the chain's log)."""

    def cmd(uow: UnitOfWork) -> bool:
        batch = uow.find(SettlementBatch, batch_aggregate_id(batch_id))
        assert batch is not None
        if not batch.is_open:
            return False
        slog = uow.find(SettlementLog, settlement_log_id(batch.chain_id, batch.vault))
        assert slog is not None
        batch.confirm(tx_hash=tx_hash, block=block, gas_used=gas_used, anchor_position=anchor and anchor[0],
                      anchor_head=anchor and anchor[1])
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
        for e in batch.jobs:
            job = uow.find(Job, UUID(e["job_id"]))
            assert job is not None
            if job.in_batch == batch_id:  # None: proposed before batches were recorded on jobs
                job.unbatch(batch_id=batch_id)
            uow.release(job)

    return cmd


# -- the settler -------------------------------------------------------------------------------
