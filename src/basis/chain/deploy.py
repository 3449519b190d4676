"""Deploy the token (local chains only), RewardDistributor and CreditVault, wire them, write a manifest.

Order: [BasisToken] -> RewardDistributor(poster = deployer, root delay) -> CreditVault(distributor)
-> distributor.setPoster(vault). After that only the vault (inside ``settle``) posts roots.
The deployer owns both contracts (transfer with Ownable2Step afterwards if needed). When the
treasury is the deployer itself, the deployer also approves the vault to pull reward top-ups.

``root_delay`` (seconds, fixed for the distributor's life) is how long a posted rewards root stays
pending, revocable by the owner, before anyone can accept it and claims can draw on it.

The manifest (default ``$BASIS_HOME/deployment.json``) is what the gateway reads.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address
from web3 import Web3

from basis.chain.compiler import Artifact, load_artifacts
from basis.chain.contracts import BasisContracts, Sender
from basis.chain.paths import default_manifest_path

MANIFEST_VERSION = 1
LOCAL_CHAIN_IDS = frozenset({31337, 1337})
MAX_UINT256 = 2**256 - 1
MAX_ROOT_DELAY = 30 * 24 * 3600  # RewardDistributor.MAX_ROOT_DELAY


class DeployError(RuntimeError):
    pass


@dataclass(frozen=True)
class Deployment:
    manifest: dict[str, Any]
    path: Path | None

    @property
    def token(self) -> str:
        return self.manifest["contracts"]["token"]["address"]

    @property
    def vault(self) -> str:
        return self.manifest["contracts"]["vault"]["address"]

    @property
    def distributor(self) -> str:
        return self.manifest["contracts"]["distributor"]["address"]


def _deploy(sender: Sender, art: Artifact, *args: Any) -> tuple[str, int, str]:
    contract = sender.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
    result = sender.transact(contract.constructor(*args))
    address = result.receipt["contractAddress"]
    if not address:
        raise DeployError(f"{art.name}: no contract address in receipt")
    return to_checksum_address(address), result.block_number, result.tx_hash


def deploy(
    w3: Web3,
    private_key: str | bytes,
    *,
    token: str | None = None,
    treasury: str | None = None,
    operator: str | None = None,
    allow_stand_in_token: bool | None = None,
    mint_to_deployer: int = 0,
    manifest_path: Path | None = None,
    write_manifest: bool = True,
    root_delay: int = 0,
) -> Deployment:
    """Deploy and wire the contracts; returns the manifest (and writes it unless told not to)."""
    arts = load_artifacts()
    sender = Sender(w3, private_key)
    chain_id = sender.chain_id
    deployer = sender.address
    operator = to_checksum_address(operator or deployer)
    treasury = to_checksum_address(treasury or deployer)
    txs: dict[str, str] = {}
    if not 0 <= root_delay <= MAX_ROOT_DELAY:
        raise DeployError(f"root delay must be between 0 and {MAX_ROOT_DELAY} seconds, got {root_delay}")

    stand_in = token is None
    if stand_in:
        allowed = chain_id in LOCAL_CHAIN_IDS if allow_stand_in_token is None else allow_stand_in_token
        if not allowed:
            raise DeployError(f"chain {chain_id} is not a local chain: pass the real token address (--token)")
        token, first_block, txs["token"] = _deploy(sender, arts["BasisToken"], deployer)
    else:
        token = to_checksum_address(token)
        if not w3.eth.get_code(token):
            raise DeployError(f"no contract at token address {token}")
        first_block = None

    distributor, block, txs["distributor"] = _deploy(
        sender, arts["RewardDistributor"], token, deployer, deployer, root_delay
    )
    first_block = first_block if first_block is not None else block
    vault, _, txs["vault"] = _deploy(
        sender, arts["CreditVault"], token, distributor, deployer, operator, treasury
    )

    bound = BasisContracts(w3, token=token, vault=vault, distributor=distributor, artifacts=arts)
    txs["set_poster"] = bound._send(sender, bound.distributor.functions.setPoster(vault)).tx_hash
    if treasury == deployer:
        txs["treasury_approve"] = bound.approve(sender, vault, MAX_UINT256).tx_hash
    if stand_in and mint_to_deployer:
        txs["mint"] = bound.mint(sender, deployer, mint_to_deployer).tx_hash

    compiler = arts["CreditVault"].compiler_version
    manifest = {
        "version": MANIFEST_VERSION,
        "chain_id": chain_id,
        "deploy_block": first_block,
        "deployed_at": int(time.time()),
        "compiler": compiler,
        "source_hash": arts["CreditVault"].source_hash,
        "deployer": deployer,
        "owner": deployer,
        "operator": operator,
        "treasury": treasury,
        "root_delay": root_delay,
        "contracts": {
            "token": {"address": token, "stand_in": stand_in},
            "distributor": {"address": distributor},
            "vault": {"address": vault},
        },
        "transactions": txs,
    }
    path = None
    if write_manifest:
        path = Path(manifest_path) if manifest_path else default_manifest_path()
        write_manifest_file(manifest, path)
    return Deployment(manifest, path)


def write_manifest_file(manifest: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_manifest(path: Path | None = None) -> dict[str, Any]:
    p = Path(path) if path else default_manifest_path()
    data = json.loads(p.read_text())
    if data.get("version") != MANIFEST_VERSION:
        raise DeployError(f"{p}: unsupported manifest version {data.get('version')!r}")
    return data


def read_key_file(path: Path) -> str:
    """A key file holds one hex private key (0x optional); surrounding whitespace is ignored."""
    text = Path(path).read_text().strip()
    key = text[2:] if text.startswith("0x") else text
    if len(key) != 64:
        raise DeployError(f"{path}: expected a 32-byte hex private key")
    try:
        bytes.fromhex(key)
    except ValueError as exc:
        raise DeployError(f"{path}: not hex") from exc
    return "0x" + key
