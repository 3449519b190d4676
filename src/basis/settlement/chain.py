"""Shared chain plumbing for settlement: the deployment, its contracts and log topics."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address
from web3 import Web3

from basis.chain.contracts import BasisContracts

ZERO32 = "0x" + "00" * 32

TOPICS = {
    "Deposited": Web3.keccak(text="Deposited(address,bytes32,uint256)"),
    "Withdrawn": Web3.keccak(text="Withdrawn(bytes32,address,uint256,uint256)"),
    "Claimed": Web3.keccak(text="Claimed(address,uint256,uint256)"),
    "RootPosted": Web3.keccak(text="RootPosted(bytes32,bytes32,bytes32)"),
    "LedgerAnchored": Web3.keccak(text="LedgerAnchored(bytes32,uint64,bytes32)"),
}


def hex32(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def from_hex(value: str) -> bytes:
    return bytes.fromhex(value[2:] if value.startswith("0x") else value)


@dataclass
class Chain:
    """A deployment bound to one web3 connection."""

    w3: Web3
    manifest: dict[str, Any]

    def __post_init__(self) -> None:
        self.contracts = BasisContracts.from_manifest(self.w3, self.manifest)
        self.chain_id = int(self.manifest["chain_id"])
        self.vault = to_checksum_address(self.manifest["contracts"]["vault"]["address"])
        self.distributor = to_checksum_address(self.manifest["contracts"]["distributor"]["address"])
        self.token = to_checksum_address(self.manifest["contracts"]["token"]["address"])
        self.deploy_block = int(self.manifest.get("deploy_block") or 0)
        actual = int(self.w3.eth.chain_id)
        if actual != self.chain_id:
            raise RuntimeError(f"the RPC serves chain {actual}, the deployment is on chain {self.chain_id}")


def load_manifest(path: str | Path | None, home: Path) -> dict[str, Any] | None:
    """The deployment manifest, or None while no vault is configured (pending)."""
    from basis.chain.deploy import read_manifest

    p = Path(path) if path else Path(os.environ.get("BASIS_MANIFEST") or home / "deployment.json")
    if not p.is_file():
        return None
    return read_manifest(p)


def connect(rpc_url: str) -> Web3:
    return Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 60}))
