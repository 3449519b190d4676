"""``basis audit --chain``: the ledger against the chain. Each difference is named in report.problems.

- every confirmed batch: its receipts root is the one posted on chain for its batch id, and its
  tree rebuilds from the ledger; every receipt in it: its core (from the Job's events) re-hashes to
  the leaf at its index, and the leaf's proof verifies against the on-chain root (the first leaf of
  each batch is also checked by the distributor's own ``verifyReceipt``);
- every receipt the views call settled belongs to a confirmed batch at its leaf index;
- the latest confirmed batch's cumulative rewards equal the reward projection (settled per worker);
- rewards-root delay, read at the latest confirmed batch's block (later batches may be in flight):
  every root the distributor reports (RootPosted logs) is the rewards root of the ledger batch with
  that id; the accepted root (what claims prove against) is the root of the batch ``acceptedBatch``
  names, a confirmed ledger batch; with no delay that is the latest batch; a revoked latest root is
  named (its rewards are not claimable until superseded);
- at the indexer's cursor block (so indexing lag is not a difference): vault ``totalDeposited``,
  ``totalSettled``, ``totalWithdrawn``, ``totalRewardTopUp`` and token balance equal the ledger's
  deposits, settled deposit-backed spend, redeemed vouchers and top-ups; the distributor's balance
  equals funded - claimed; each worker's ``claimed`` equals the indexed claims.

The RPC URL comes from ``BASIS_RPC_URL`` (or ``rpc_url`` in the manifest).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address
from eventsourcing.application import AggregateNotFoundError
from web3 import Web3

from basis.config import Settings
from basis.domain.merkle import RECEIPTS_ENCODING, StandardMerkleTree, receipts_tree, rewards_tree
from basis.domain.receipt import receipt_hash
from basis.ledger.audit import AuditReport
from basis.ledger.jobs import Job
from basis.ledger.projections import Projector, ViewReader
from basis.ledger.settlement import SettlementBatch, batch_aggregate_id, cursor_id
from basis.ledger.snapshot import LedgerSnapshot
from basis.ledger.store import LedgerStore
from basis.settlement.chain import TOPICS, ZERO32, Chain, connect, from_hex, hex32, load_manifest


def audit_chain(settings: Settings, report: AuditReport, *, w3: Web3 | None = None,
                manifest: dict[str, Any] | None = None, views: str | Path | None = None) -> None:
    """The ledger snapshot that ``audit`` checked (``report.position``) against the chain at the block
    that snapshot had indexed, so gateways writing and settling meanwhile make no difference.
    ``views``: that audit's replay (kept with its ``replay_path``); without it the log is replayed
    again up to the same position."""
    manifest = manifest or load_manifest(None, settings.home)
    if manifest is None:
        report.problems.append("--chain: no deployment manifest (the vault is pending); nothing to verify")
        return
    if w3 is None:
        rpc = os.environ.get("BASIS_RPC_URL") or manifest.get("rpc_url")
        if not rpc:
            report.problems.append("--chain: set BASIS_RPC_URL to the chain's JSON-RPC URL")
            return
        w3 = connect(rpc)
    try:
        chain = Chain(w3, manifest)
    except Exception as exc:
        report.problems.append(f"--chain: cannot reach the deployment: {exc}")
        return
    store = LedgerStore(settings.event_store_env())
    try:
        snapshot = LedgerSnapshot(store, report.position or None)
        report.position = snapshot.position
        with tempfile.TemporaryDirectory(prefix="basis-audit-chain-") as tmp:
            if views is None:
                views = Path(tmp) / "replay.sqlite3"
                projector = Projector(store, views)
                while projector.run_once(stop=snapshot.position):
                    pass
                projector.stop()
            reader = ViewReader(views)
            try:
                ChainAudit(chain, store, reader, report, snapshot=snapshot).run()
                check_store_anchors(chain, store, report)
            finally:
                reader.close()
    finally:
        store.close()


class ChainAudit:
    def __init__(self, chain: Chain, store: LedgerStore, reader: ViewReader, report: AuditReport,
                 snapshot: LedgerSnapshot | None = None) -> None:
        """``reader``: views at ``snapshot``'s position (default: the store's last position)."""
        self.chain, self.store, self.reader, self.report = chain, store, reader, report
        self.at = snapshot or LedgerSnapshot(store)
        self.problem = report.problems.append
        self.in_flight = 0

    def run(self) -> None:
        batches = self._batches()
        self._check_receipts(batches)
        self._check_rewards(batches)
        self._check_balances(batches)

    def _batches(self) -> list[SettlementBatch]:
        out = []
        for row in self.reader.batches(limit=1_000_000):
            if row["status"] in ("proposed", "submitted"):
                # A settler at work: not a difference. Its receipts are not settled yet, and the chain
                # is read at blocks this snapshot had confirmed, so a post the ledger has not seen
                # confirmed yet does not show.
                self.in_flight += 1
                self.report.notes.append(f"batch {row['batch_id']} (seq {row['seq']}) is in flight "
                                         f"({row['status']}) at ledger position {self.at.position}")
            if row["status"] != "confirmed":
                continue
            out.append(self.at.get(batch_aggregate_id(row["batch_id"])))
        return sorted(out, key=lambda b: b.seq)

    # -- receipts ------------------------------------------------------------------------------
    def _check_receipts(self, batches: list[SettlementBatch]) -> None:
        dist = self.chain.contracts.distributor.functions
        in_batch: dict[str, tuple[str, int]] = {}
        for batch in batches:
            bid = from_hex(batch.batch_id)
            onchain = hex32(dist.receiptsRootOf(bid).call())
            if onchain == ZERO32:
                self.problem(f"batch {batch.batch_id}: confirmed in the ledger but not posted on chain")
                continue
            if onchain != batch.receipts_root:
                self.problem(f"batch {batch.batch_id}: receipts root on chain {onchain} != "
                             f"ledger {batch.receipts_root}")
            hashes = [e["hash"] for e in batch.jobs]
            tree = receipts_tree(hashes)
            if tree.root_hex != batch.receipts_root:
                self.problem(f"batch {batch.batch_id}: its receipts do not rebuild its recorded root")
            for index, e in enumerate(batch.jobs):
                in_batch[e["job_id"]] = (batch.batch_id, index)
                try:
                    job: Job = self.at.get(_uuid(e["job_id"]))
                except AggregateNotFoundError:
                    self.problem(f"receipt {e['job_id']}: in batch {batch.batch_id} but no such job")
                    continue
                if job.receipt is None:
                    self.problem(f"receipt {e['job_id']}: in batch {batch.batch_id} but the job has no receipt")
                    continue
                actual = receipt_hash(job.receipt["core"])
                proof = tree.proof(index)
                if not StandardMerkleTree.verify(onchain, RECEIPTS_ENCODING, (actual,), proof):
                    self.problem(f"receipt {e['job_id']}: its core hashes to {actual}, which the receipts root of "
                                 f"batch {batch.batch_id} on chain does not include (leaf {index} is {e['hash']})")
                settlement = job.settlement or {}
                if settlement.get("batch_id") != batch.batch_id or settlement.get("leaf_index") != index:
                    self.problem(f"receipt {e['job_id']}: settlement pointer {settlement} != batch "
                                 f"{batch.batch_id} leaf {index}")
                if index == 0 and not self.chain.contracts.verify_receipt(bid, from_hex(actual), proof):
                    self.problem(f"receipt {e['job_id']}: the distributor's verifyReceipt refuses its proof")
        for row in self.reader.db.execute("SELECT job_id, settlement FROM receipts WHERE status = 'settled'"):
            s = json.loads(row["settlement"])
            if in_batch.get(row["job_id"]) != (s["batch_id"], s["leaf_index"]):
                self.problem(f"receipt {row['job_id']}: marked settled in batch {s['batch_id']} leaf "
                             f"{s['leaf_index']}, which no confirmed batch holds")

    # -- rewards -------------------------------------------------------------------------------
    def _check_rewards(self, batches: list[SettlementBatch]) -> None:
        contracts = self.chain.contracts
        latest = batches[-1] if batches else None
        if latest is None and self.in_flight:
            return  # the first batch may be posted already: nothing confirmed to compare yet
        # At the latest confirmed batch's block: a later batch, posted but not yet confirmed at this
        # snapshot, has moved the root on since.
        at = latest.block if latest is not None and latest.block is not None else "latest"
        onchain = hex32(contracts.distributor.functions.rewardsRoot().call(block_identifier=at))
        if at != "latest":
            self._check_later_posts(at)
        expected = latest.rewards_root if latest else ZERO32
        by_id = {b.batch_id.lower(): b for b in batches}
        accepted_id = hex32(contracts.distributor.functions.acceptedBatch().call(block_identifier=at))
        if contracts.root_delay() == 0 and onchain != expected:
            self.problem(f"rewards root on chain {onchain} != latest confirmed batch's {expected}")
        if accepted_id != ZERO32:
            accepted = by_id.get(accepted_id)
            if accepted is None:
                self.problem(f"the distributor's accepted rewards root is batch {accepted_id}'s, which is not a "
                             "confirmed batch of this ledger")
            elif accepted.rewards_root != onchain:
                self.problem(f"accepted rewards root on chain {onchain} != batch {accepted_id}'s "
                             f"{accepted.rewards_root}")
        elif onchain != ZERO32:
            self.problem(f"rewards root on chain {onchain} was never accepted from a batch")
        from basis.chain.roots import root_history

        for rec in root_history(contracts, self.chain.deploy_block):
            if at != "latest" and rec.block > at:
                continue  # posted after the audited snapshot: _check_later_posts covers it
            batch = by_id.get(rec.batch_id)
            if batch is None:
                self.problem(f"batch {rec.batch_id} posted rewards root {rec.rewards_root} on chain ({rec.status}), "
                             "but this ledger has no such confirmed batch")
            elif batch.rewards_root != rec.rewards_root:
                self.problem(f"batch {rec.batch_id}: rewards root on chain {rec.rewards_root} != ledger "
                             f"{batch.rewards_root}")
            if rec.status == "revoked" and latest is not None and rec.batch_id == latest.batch_id.lower():
                # A revoked root is superseded by the next batch's (cumulative) one; until then the
                # ledger's settled rewards are not claimable.
                self.problem(f"batch {rec.batch_id}: the latest rewards root was revoked by the owner; its rewards "
                             "are not claimable until a later batch supersedes it")
        cumulative = {w.lower(): int(c) for w, c in latest.rewards} if latest else {}
        if cumulative and rewards_tree(list(cumulative.items())).root_hex != expected:
            self.problem("the latest batch's cumulative rewards do not rebuild its rewards root")
        projected = {r["worker"]: int(r["settled"]) for r in self.reader.rewards() if int(r["settled"])}
        for worker in sorted(set(projected) | set(cumulative)):
            if projected.get(worker, 0) != cumulative.get(worker, 0):
                self.problem(f"worker {worker}: settled reward in the projection {projected.get(worker, 0)} != "
                             f"cumulative in the rewards root {cumulative.get(worker, 0)}")

    def _check_later_posts(self, after: int) -> None:
        """Every root posted after the snapshot's latest confirmed batch is a batch this ledger
        proposed (read at its current state: it may have been proposed after the snapshot)."""
        if int(self.chain.w3.eth.block_number) <= after:
            return
        logs = self.chain.w3.eth.get_logs({"address": self.chain.distributor, "fromBlock": after + 1,
                                           "toBlock": "latest", "topics": [hex32(TOPICS["RootPosted"])]})
        for entry in logs:
            batch_id = hex32(bytes(entry["topics"][1]))
            try:
                batch = self.store.repository.get(batch_aggregate_id(batch_id))
            except AggregateNotFoundError:
                self.problem(f"a root was posted on chain for batch {batch_id} (block {entry['blockNumber']}), "
                             "which this ledger never proposed")
                continue
            rewards_root = hex32(bytes(entry["data"])[:32])
            if rewards_root != batch.rewards_root:
                self.problem(f"batch {batch_id}: rewards root posted on chain {rewards_root} != ledger "
                             f"{batch.rewards_root}")

    # -- balances ------------------------------------------------------------------------------
    def _check_balances(self, batches: list[SettlementBatch]) -> None:
        chain = self.chain
        name = f"indexer:{chain.chain_id}:{chain.vault.lower()}"
        try:
            at = self.at.get(cursor_id(name)).block
        except AggregateNotFoundError:
            at = int(chain.w3.eth.block_number)  # never indexed: any deposit on chain shows as a difference
        db = self.reader.db
        deposits = sum(int(r[0]) for r in db.execute("SELECT amount FROM credits WHERE source = 'deposit'"))
        withdrawn = sum(int(r[0]) for r in db.execute(
            "SELECT amount FROM withdrawals WHERE status IN ('redeemed', 'foreign')"))
        for r in db.execute("SELECT nonce, amount, tx_hash FROM withdrawals WHERE status = 'foreign'"):
            self.problem(f"withdrawal with nonce {r['nonce']} ({r['amount']}, tx {r['tx_hash']}) was not issued by "
                         "this ledger")
        done = [b for b in batches if b.block is not None and b.block <= at]
        settled = sum(b.to_distributor + b.to_treasury for b in done)
        top_up = sum(b.reward_top_up for b in done)
        funded = sum(b.to_distributor + b.reward_top_up for b in done)
        claims: dict[str, int] = defaultdict(int)
        for r in db.execute("SELECT worker, amount FROM claims WHERE block <= ?", (at,)):
            claims[r["worker"]] += int(r["amount"])
        vault = chain.contracts.vault.functions
        token = chain.contracts.token.functions
        onchain = {
            "totalDeposited": int(vault.totalDeposited().call(block_identifier=at)),
            "totalSettled": int(vault.totalSettled().call(block_identifier=at)),
            "totalWithdrawn": int(vault.totalWithdrawn().call(block_identifier=at)),
            "totalRewardTopUp": int(vault.totalRewardTopUp().call(block_identifier=at)),
        }
        ledger = {"totalDeposited": deposits, "totalSettled": settled, "totalWithdrawn": withdrawn,
                  "totalRewardTopUp": top_up}
        for key, value in ledger.items():
            if onchain[key] != value:
                self.problem(f"vault {key} at block {at}: chain {onchain[key]} != ledger {value}")
        vault_balance = int(token.balanceOf(chain.vault).call(block_identifier=at))
        if vault_balance != deposits - settled - withdrawn:
            self.problem(f"vault token balance at block {at}: chain {vault_balance} != ledger deposits - settled - "
                         f"withdrawn = {deposits - settled - withdrawn}")
        dist_balance = int(token.balanceOf(chain.distributor).call(block_identifier=at))
        claimed_total = sum(claims.values())
        if dist_balance != funded - claimed_total:
            self.problem(f"distributor token balance at block {at}: chain {dist_balance} != ledger funded - claimed "
                         f"= {funded - claimed_total}")
        dist = chain.contracts.distributor.functions
        workers = {w.lower() for b in done for w, _ in b.rewards} | set(claims)
        for worker in sorted(workers):
            on = int(dist.claimed(to_checksum_address(worker)).call(block_identifier=at))
            if on != claims.get(worker, 0):
                self.problem(f"worker {worker}: claimed on chain {on} != indexed claims {claims.get(worker, 0)}")


def check_store_anchors(chain: Chain, store: LedgerStore, report: AuditReport) -> None:
    """Every ledger anchor the vault logged names a committed position whose export head (recomputed
    here, one pass over the log) is the anchored one."""
    from basis.ledger.export import ChainPoint, head_at
    from basis.settlement.anchors import chain_anchors, check_anchors

    anchors = chain_anchors(chain)
    heads: dict[int, str | None] = {}
    point: ChainPoint | None = None
    for a in sorted(anchors, key=lambda a: a.position):
        point = head_at(store, a.position, point)
        heads[a.position] = point.head_hex if point.position == a.position else None
    last = store.recorder.max_notification_id() or 0
    check_anchors(anchors, heads.get, last,
                  lambda position, message: report.problems.append(f"ledger position {position}: {message}"))


def _uuid(text: str):
    from uuid import UUID

    return UUID(text)
