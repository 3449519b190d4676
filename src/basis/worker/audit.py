"""``basis worker audit``: the worker checks the operator from what it holds and the chain alone.

Inputs: the worker's own store (signed receipts and verdicts it received, protocol v2), the
chain (receipts roots by batch, the accepted and pending rewards roots, claims) and the gateway's
published data (receipt envelopes, Merkle proofs, batch leaves), which is only ever *data*: every
fact the audit relies on is confirmed against the chain. Findings (DESIGN 1.7):

- each stored receipt: hash, signature (the gateway's published signer), its own address, and
  the reward arithmetic;
- settled receipts: inclusion under the receipts root **read from the chain** for their batch;
- omitted: a receipt still not provably included after ``omitted_after`` batches were posted on
  chain since the worker received it;
- forfeits: a reward the gateway marks forfeited counts only with a published failed verdict
  (in the envelope, or a ``verdict`` frame the worker holds); otherwise it is a discrepancy;
- rewards: the worker's cumulative leaf in the accepted rewards root (and in every root still
  pending its delay, which is when a wrong root can still be revoked) equals the sum of its
  receipts settled up to that batch minus the forfeits backed by failed verdicts.

Never imports basis.ledger or basis.gateway (DESIGN 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address
from web3 import Web3

from basis.chain.contracts import BasisContracts
from basis.chain.inclusion import ChainReceipts, GatewayData, ReceiptCheck, check_inclusion, check_signed
from basis.chain.roots import RootRecord, root_history
from basis.domain.merkle import REWARDS_ENCODING, StandardMerkleTree

DEFAULT_OMITTED_AFTER = 2  # batches posted on chain since a receipt arrived, and it is still in none


@dataclass
class WorkerAudit:
    worker: str
    chain_id: int
    distributor: str
    gateway_signer: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    rewards: list[dict[str, Any]] = field(default_factory=list)
    discrepancies: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # what was read from the chain (the evidence)

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def as_dict(self) -> dict[str, Any]:
        return {"worker": self.worker, "ok": self.ok, "chain_id": self.chain_id, "distributor": self.distributor,
                "gateway_signer": self.gateway_signer, "receipts": self.rows, "rewards": self.rewards,
                "discrepancies": self.discrepancies, "chain": self.facts}


def _forfeit_backing(env: dict[str, Any] | None, verdict: dict[str, Any] | None) -> tuple[bool, bool, str | None]:
    """(claimed forfeited, backed by a published failed verdict, contradiction)."""
    claimed = bool(env and env.get("reward_forfeited"))
    published = (env or {}).get("verification") or {}
    failed = published.get("verdict") == "failed" or (verdict is not None and verdict.get("verdict") == "failed")
    contradiction = None
    if verdict is not None and published.get("verdict") and published["verdict"] != verdict["verdict"]:
        contradiction = (f"the gateway publishes verdict {published['verdict']!r}, but sent this worker "
                         f"{verdict['verdict']!r}")
    return claimed, claimed and failed, contradiction


def audit_worker(records: list[dict[str, Any]], worker: str, gateway: GatewayData, w3: Web3, *,
                 omitted_after: int = DEFAULT_OMITTED_AFTER) -> WorkerAudit:
    worker = worker.lower()
    network = gateway.network()
    signer = str(network.get("gateway_signer") or "").lower()
    contracts_info = {k: (network.get(k) or {}).get("address") for k in ("token", "vault", "distributor")}
    if not all(contracts_info.values()):
        raise ValueError("the gateway publishes no deployment (its vault is pending): nothing to audit on chain")
    if network.get("chain_id") is not None and int(network["chain_id"]) != int(w3.eth.chain_id):
        raise ValueError(f"the RPC serves chain {w3.eth.chain_id}; the gateway settles on chain {network['chain_id']}")
    contracts = BasisContracts(w3, token=contracts_info["token"], vault=contracts_info["vault"],
                               distributor=contracts_info["distributor"])
    chain = ChainReceipts(w3, contracts_info["distributor"])
    result = WorkerAudit(worker, chain.chain_id, chain.address, signer)
    problem = result.discrepancies.append

    receipts = [r for r in records if r.get("kind") == "receipt"]
    verdicts = {r["hash"]: r for r in records if r.get("kind") == "verdict"}
    history = root_history(contracts)
    post_index = {r.batch_id: i for i, r in enumerate(history)}
    block_time: dict[int, int] = {}

    def posted_at(rec: RootRecord) -> int:
        if rec.block not in block_time:
            block_time[rec.block] = int(w3.eth.get_block(rec.block)["timestamp"])
        return block_time[rec.block]

    checks: list[tuple[ReceiptCheck, dict[str, Any], bool]] = []  # (check, record, backed forfeit)
    for rec in receipts:
        rc = check_signed(rec, signer)
        if (rec["core"].get("worker") or "").lower() != worker:
            rc.problems.append(f"receipt of worker {rec['core'].get('worker')}, not this worker")
        env = gateway.receipt(rc.job_id)
        status = "issued"
        if env is None:
            rc.problems.append("the gateway publishes no receipt for this job")
        elif str(env.get("hash", "")).lower() != rc.hash:
            rc.problems.append(f"the gateway publishes another receipt for this job ({env.get('hash')})")
        else:
            check_inclusion(rc, {**rec, "settlement": env.get("settlement")}, chain, gateway.receipt_proof)
        claimed, backed, contradiction = _forfeit_backing(env, verdicts.get(rc.hash))
        if contradiction:
            rc.problems.append(contradiction)
        if claimed and not backed:
            rc.problems.append(f"reward {rc.reward} forfeited without a published failed verdict")
        if rc.settled:
            status = "settled"
        elif not rc.problems:
            # Block times have one-second resolution: a batch in the second the receipt arrived counts.
            since = [h for h in history if posted_at(h) >= int(rec.get("received_at") or 0)]
            if len(since) >= omitted_after:
                status = "omitted"
                rc.problems.append(f"omitted: in no batch, {len(since)} batches posted on chain since it was "
                                   "received")
            else:
                status = "pending"
        for p in rc.problems:
            problem(f"receipt {rc.hash} (job {rc.job_id}): {p}")
        verdict = verdicts.get(rc.hash)
        result.rows.append({**rc.as_dict(), "status": status if rc.ok or status == "omitted" else "discrepancy",
                            "forfeited": claimed, "forfeit_backed": backed,
                            "verdict": verdict["verdict"] if verdict else None})
        checks.append((rc, rec, backed))

    # -- rewards: the accepted root, and every root still pending (revocable) -------------------
    accepted = "0x" + contracts.accepted_batch().hex()
    accepted_root = "0x" + contracts.rewards_root().hex()
    claimed_total = contracts.claimed(to_checksum_address(worker))
    result.facts = {"accepted_batch": accepted, "accepted_rewards_root": accepted_root,
                    "claimed": str(claimed_total), "root_delay": contracts.root_delay(),
                    "roots": [vars(h) for h in history], "receipts_roots": chain.roots_read()}
    to_check = [h for h in history if h.status in ("accepted", "pending")]
    for h in to_check:
        upto = post_index[h.batch_id]
        expected = sum(0 if backed else rc.reward for rc, _, backed in checks
                       if rc.settled and rc.batch_id in post_index and post_index[rc.batch_id] <= upto)
        row: dict[str, Any] = {"batch_id": h.batch_id, "state": h.status, "rewards_root": h.rewards_root,
                               "expected": str(expected), "cumulative": None, "proof": None}
        proof = gateway.reward_proof(worker, h.batch_id)
        if proof is None or proof.get("rewards_root", "").lower() != h.rewards_root:
            if expected or h.status == "pending":
                problem(f"{h.status} rewards root of batch {h.batch_id}: the gateway proves no leaf of this worker "
                        f"in it (expected cumulative {expected})")
        else:
            cumulative = int(proof["cumulative"])
            row.update(cumulative=str(cumulative), proof=proof["proof"])
            if not StandardMerkleTree.verify(h.rewards_root, REWARDS_ENCODING, (worker, cumulative), proof["proof"]):
                problem(f"{h.status} rewards root of batch {h.batch_id}: the gateway's proof of this worker's leaf "
                        "does not verify against the root on chain")
            elif cumulative < expected:
                problem(f"{h.status} rewards root of batch {h.batch_id} shorts this worker: cumulative {cumulative}, "
                        f"expected {expected} (short by {expected - cumulative})")
            elif cumulative > expected:
                problem(f"{h.status} rewards root of batch {h.batch_id}: cumulative {cumulative} exceeds what this "
                        f"worker's receipts account for ({expected})")
        result.rewards.append(row)
    accepted_leaf = [int(r["cumulative"]) for r in result.rewards if r["state"] == "accepted" and r["cumulative"]]
    if accepted_leaf and claimed_total > accepted_leaf[0]:
        problem(f"the distributor paid this worker {claimed_total}, more than its accepted cumulative "
                f"{accepted_leaf[0]}")
    return result


def write_evidence(directory: Path, result: WorkerAudit, records: list[dict[str, Any]]) -> list[Path]:
    """A bundle a third party can check with DESIGN 1 alone: signed receipts, verdicts, proofs, chain facts."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "receipts.jsonl": "".join(json.dumps({k: r[k] for k in ("core", "hash", "signature")}, sort_keys=True) + "\n"
                                  for r in records if r.get("kind") == "receipt"),
        "verdicts.jsonl": "".join(json.dumps(r, sort_keys=True) + "\n" for r in records if r.get("kind") == "verdict"),
        "report.json": json.dumps(result.as_dict(), indent=2, sort_keys=True) + "\n",
        "README.txt": _README.format(worker=result.worker, chain_id=result.chain_id, distributor=result.distributor,
                                     signer=result.gateway_signer),
    }
    out = []
    for name, text in files.items():
        p = directory / name
        p.write_text(text)
        out.append(p)
    return out


_README = """Evidence from a Basis worker audit (DESIGN section 1).

worker {worker}; chain {chain_id}; RewardDistributor {distributor}; gateway receipt signer {signer}.

receipts.jsonl: the signed receipts the gateway sent this worker. For each: hash = "0x" +
  sha256(JCS(core)) (RFC 8785); the signature (EIP-191 personal_sign over the 32 hash bytes)
  recovers to the signer above, which the gateway publishes at /v1/network; charged and reward
  recompute from the core (DESIGN 1.1).
verdicts.jsonl: verification verdicts the gateway sent (DESIGN 1.6).
report.json: per receipt, the batch, the receipts root read from the chain (receiptsRootOf(batch))
  and the Merkle proof (OpenZeppelin StandardMerkleTree, leaf = keccak256(keccak256(abi.encode(
  bytes32 hash)))); per rewards root (accepted or pending), the worker's leaf (address,
  cumulative), its proof and the cumulative the receipts account for; every discrepancy found.
  Anyone can re-read the roots from the chain (RootPosted / RootAccepted / RootRevoked events of
  the distributor) and re-check each proof.
"""
