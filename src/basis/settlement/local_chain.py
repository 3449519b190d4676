"""The local chain of `basis up`: anvil with persisted state, the contracts, a funded operator.

anvil writes its state on a clean exit and every second (``--state-interval 1``). After an
unclean stop the chain can lag the ledger (or be gone); that is detected, never papered over.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basis.chain.anvil import Anvil
from basis.chain.deploy import deploy, read_manifest, write_manifest_file
from basis.settlement.chain import connect

STATE_FILES = ("events.sqlite3", "events.sqlite3-wal", "events.sqlite3-shm", "views.sqlite3", "views.sqlite3-wal",
               "views.sqlite3-shm", "deployment.json", "anvil-state.json", "up.json")
OPERATOR_GAS_WEI = 10**22


class ChainStateLost(RuntimeError):
    """The chain this BASIS_HOME settled on is gone or behind its ledger."""


class LostBatches(ChainStateLost):
    """Batches the ledger confirmed are not on chain: settlement stays stopped until they are
    re-posted (``basis settle repost``); everything else may run."""


@dataclass
class LocalChain:
    anvil: Anvil
    manifest: dict[str, Any]

    @property
    def rpc_url(self) -> str:
        return self.anvil.rpc_url

    def stop(self) -> None:
        self.anvil.stop()


# `basis up`: a short rewards-root delay, so the local network exercises pending roots without
# making a demo wait (production deployments choose theirs with `basis contracts deploy --root-delay`).
LOCAL_ROOT_DELAY = 5


def start_local_chain(home: Path, operator: str, port: int, root_delay: int = LOCAL_ROOT_DELAY) -> LocalChain:
    manifest_path = home / "deployment.json"
    anvil = Anvil(port=port, state_path=home / "anvil-state.json", state_interval=1,
                  die_with_parent=True, log_dir=home).start()
    try:
        w3 = connect(anvil.rpc_url)
        if manifest_path.exists():
            manifest = read_manifest(manifest_path)
            vault = manifest["contracts"]["vault"]["address"]
            if int(manifest["chain_id"]) != anvil.chain_id or not w3.eth.get_code(vault):
                raise ChainStateLost(
                    f"the local chain no longer holds the vault {vault} that this ledger settled on "
                    "(its state was lost in an unclean stop)")
        else:
            manifest = deploy(w3, anvil.keys[0], operator=operator, mint_to_deployer=10**27,
                              manifest_path=manifest_path, root_delay=root_delay).manifest
        manifest["rpc_url"] = anvil.rpc_url
        write_manifest_file(manifest, manifest_path)
        # The gateway's operator key sends settlement transactions: give it gas on the local chain.
        anvil.rpc("anvil_setBalance", [operator, hex(OPERATOR_GAS_WEI)])
        return LocalChain(anvil, manifest)
    except BaseException:
        anvil.stop()
        raise


def check_ledger_matches_chain(runtime: Any) -> None:
    """The chain still holds what the ledger saw on it:

    - the indexer's cursor is the last block the ledger saw: a chain below it lost blocks;
    - the block at the cursor has the hash the indexer recorded (else indexed blocks were reorganised);
    - every batch the ledger confirmed is posted with its receipts root (``LostBatches`` otherwise).
    """
    from basis.settlement.consistency import ChainMismatch, lost_batches
    from basis.settlement.deposits import ChainReorg

    head = int(runtime.web3.eth.block_number)
    indexer = runtime.indexer
    cursor = indexer.cursor()
    if cursor > head:
        raise ChainStateLost(f"the ledger has seen block {cursor} but the chain's head is {head}: the chain lost "
                             "recent state in an unclean stop, so ledger and chain disagree")
    try:
        indexer.check_reorg()
    except ChainReorg as exc:
        raise ChainStateLost(str(exc)) from None
    lost = lost_batches(indexer.ledger, indexer.chain)
    if lost:
        raise LostBatches(str(ChainMismatch(lost)))


def set_aside(home: Path) -> Path:
    """Move a BASIS_HOME's ledger and chain state aside (keys stay) for a fresh start."""
    target = home / f"stale-{time.strftime('%Y%m%d-%H%M%S')}"
    target.mkdir()
    for name in STATE_FILES:
        if (home / name).exists():
            shutil.move(str(home / name), target / name)
    return target


def fund_demo_account(chain: LocalChain, account_id: Any, amount: int) -> str:
    """A real deposit through the vault: the stand-in token is minted to a depositor first."""
    from basis.chain.contracts import BasisContracts
    from basis.domain.account_id import to_bytes32

    w3 = connect(chain.rpc_url)
    contracts = BasisContracts.from_manifest(w3, chain.manifest)
    owner = contracts.sender(chain.anvil.keys[0])
    depositor = contracts.sender(chain.anvil.keys[1])
    contracts.mint(owner, depositor.address, amount)
    return contracts.deposit(depositor, amount, to_bytes32(account_id)).tx_hash


def describe(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: v["address"] for k, v in manifest["contracts"].items()} | {"chain_id": manifest["chain_id"]}


__all__ = ["ChainStateLost", "LocalChain", "LostBatches", "check_ledger_matches_chain", "describe", "fund_demo_account",
           "set_aside", "start_local_chain"]
