"""A gateway home on a fresh anvil chain with the contracts deployed: the set-up the end-to-end
tests share (operator key = anvil account 1, deployer = account 0)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from web3 import Web3

from basis.chain.anvil import Anvil
from basis.chain.deploy import deploy
from tests.conftest import require_foundry

TOKENS = 10**18


@contextlib.contextmanager
def deployed_home(tmp_path: Path, **deploy_kw: Any) -> Iterator[tuple[Path, Anvil, Web3]]:
    """(home, anvil, w3): ``home`` holds the operator key and the deployment manifest."""
    require_foundry()
    home = tmp_path / "home"
    home.mkdir()
    with Anvil() as anvil:
        (home / "operator.key").write_text(anvil.keys[1] + "\n")
        w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
        deploy(w3, anvil.keys[0], operator=Web3.to_checksum_address(anvil.addresses[1]),
               manifest_path=home / "deployment.json", mint_to_deployer=10**6 * TOKENS, **deploy_kw)
        yield home, anvil, w3
