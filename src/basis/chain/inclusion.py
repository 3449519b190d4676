"""Checking receipts against the chain, taking nothing on the gateway's word but the proofs.

For each receipt (core, hash, signature, and the envelope's ``settlement`` pointer when settled):
its hash is the hash of its core (DESIGN 1.2), its amounts recompute (1.1), its signature
recovers to the expected signer, and, when it claims to be settled, the batch's receipts root is
read **from the distributor on chain** and the receipt's Merkle proof (from the envelope, from
the gateway, or recomputed from the batch's leaves the gateway supplies) must prove the hash
under that root (1.5). The gateway only ever supplies data that the chain then confirms or
refutes. Shared by ``basis receipts verify`` and ``basis worker audit``; imports no ledger or
gateway code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eth_utils import to_checksum_address
from web3 import Web3

from basis.chain.compiler import load_artifacts
from basis.domain.merkle import RECEIPTS_ENCODING, StandardMerkleTree, receipts_tree
from basis.domain.receipt import receipt_hash, recompute_problems
from basis.domain.signing import recover_signer

ZERO32 = b"\0" * 32
ProofSource = Callable[[dict[str, Any]], list[str] | None]


@dataclass
class ReceiptCheck:
    job_id: str
    hash: str
    reward: int = 0
    signer: str | None = None
    settled: bool = False  # proven included under an on-chain receipts root
    batch_id: str | None = None
    leaf_proof: list[str] = field(default_factory=list)
    receipts_root: str | None = None  # as read from the chain
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "hash": self.hash, "reward": str(self.reward), "signer": self.signer,
                "settled": self.settled, "batch_id": self.batch_id, "receipts_root": self.receipts_root,
                "proof": self.leaf_proof, "problems": list(self.problems)}


def check_signed(receipt: dict[str, Any], expected_signer: str | None) -> ReceiptCheck:
    """Hash, arithmetic and signature of one receipt (no chain)."""
    core = receipt.get("core")
    digest = str(receipt.get("hash") or "").lower()
    job_id = core.get("job_id", "?") if isinstance(core, dict) else "?"
    rc = ReceiptCheck(job_id=job_id, hash=digest)
    if not isinstance(core, dict):
        rc.problems.append("no receipt core")
        return rc
    rc.problems += [f"arithmetic: {p}" for p in recompute_problems(core)]
    try:
        rc.reward = int(core.get("reward", "0"))
    except (TypeError, ValueError):
        rc.reward = 0
    try:
        actual = receipt_hash(core)
    except Exception as exc:
        rc.problems.append(f"core cannot be hashed: {exc}")
        return rc
    if actual != digest:
        rc.problems.append(f"hash {digest or '(none)'} is not the hash of its core ({actual})")
    try:
        rc.signer = recover_signer(actual, str(receipt.get("signature") or "")).lower()
    except Exception as exc:
        rc.problems.append(f"signature does not recover: {exc}")
        return rc
    if expected_signer and rc.signer != expected_signer.lower():
        rc.problems.append(f"signed by {rc.signer}, not the published signer {expected_signer.lower()}")
    return rc


class ChainReceipts:
    """Receipts roots (and other distributor facts) read from the chain, cached per batch."""

    def __init__(self, w3: Web3, distributor: str) -> None:
        self.w3 = w3
        self.address = to_checksum_address(distributor)
        self.contract = w3.eth.contract(address=self.address, abi=load_artifacts()["RewardDistributor"].abi)
        self._roots: dict[str, bytes] = {}
        self.chain_id = int(w3.eth.chain_id)

    def receipts_root(self, batch_id: str) -> bytes:
        key = batch_id.lower()
        if key not in self._roots:
            self._roots[key] = bytes(self.contract.functions.receiptsRootOf(bytes.fromhex(key[2:])).call())
        return self._roots[key]

    def roots_read(self) -> dict[str, str]:
        return {b: "0x" + r.hex() for b, r in self._roots.items()}


def check_inclusion(rc: ReceiptCheck, receipt: dict[str, Any], chain: ChainReceipts,
                    proofs: ProofSource | None) -> None:
    """Prove ``rc`` under its batch's on-chain receipts root (when the envelope says settled)."""
    s = receipt.get("settlement") or {}
    batch_id = s.get("batch_id")
    if not batch_id:
        return
    rc.batch_id = str(batch_id).lower()
    if s.get("chain_id") is not None and int(s["chain_id"]) != chain.chain_id:
        rc.problems.append(f"settled on chain {s['chain_id']}, the RPC serves chain {chain.chain_id}")
        return
    root = chain.receipts_root(rc.batch_id)
    rc.receipts_root = "0x" + root.hex()
    if root == ZERO32:
        rc.problems.append(f"batch {rc.batch_id} was never posted on chain")
        return
    proof = receipt.get("proof") or s.get("proof")
    if proof is None and proofs is not None:
        proof = proofs(receipt)
    if proof is None:
        rc.problems.append(f"no inclusion proof for batch {rc.batch_id} (none in the envelope, none from the gateway)")
        return
    rc.leaf_proof = [str(p) for p in proof]
    if not StandardMerkleTree.verify(root, RECEIPTS_ENCODING, (rc.hash,), rc.leaf_proof):
        rc.problems.append(f"not included: the receipts root of batch {rc.batch_id} on chain ({rc.receipts_root}) "
                           "does not prove this hash")
        return
    rc.settled = True


class GatewayData:
    """What a gateway publishes over HTTP (data only: every fact is checked against the chain)."""

    def __init__(self, base: str, timeout: float = 30.0) -> None:
        import httpx

        self.base = base.rstrip("/")
        self.http = httpx.Client(timeout=timeout)
        self._batches: dict[str, dict[str, Any] | None] = {}

    def _get(self, path: str) -> dict[str, Any] | None:
        r = self.http.get(self.base + path)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()

    def network(self) -> dict[str, Any]:
        return self._get("/v1/network") or {}

    def receipt(self, job_id: str) -> dict[str, Any] | None:
        return self._get(f"/v1/receipts/{job_id}")

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        if batch_id not in self._batches:
            self._batches[batch_id] = self._get(f"/v1/settlement/batches/{batch_id}")
        return self._batches[batch_id]

    def reward_proof(self, worker: str, batch_id: str | None = None) -> dict[str, Any] | None:
        return self._get(f"/v1/settlement/proofs/{worker.lower()}" + (f"?batch_id={batch_id}" if batch_id else ""))

    def receipt_proof(self, receipt: dict[str, Any]) -> list[str] | None:
        """The gateway's proof, else one recomputed from the batch's leaves (the gateway's list)."""
        job_id = receipt["core"]["job_id"]
        got = self._get(f"/v1/settlement/receipts/{job_id}/proof")
        if got and got.get("proof") is not None:
            return list(got["proof"])
        batch_id = (receipt.get("settlement") or {}).get("batch_id")
        batch = self.batch(batch_id) if batch_id else None
        leaves = (batch or {}).get("receipt_hashes")
        if not leaves or receipt["hash"].lower() not in [h.lower() for h in leaves]:
            return None
        return receipts_tree(leaves).proof_hex((receipt["hash"],))

    def close(self) -> None:
        self.http.close()
