from __future__ import annotations

import pytest
from web3 import Web3

from basis.chain.contracts import BasisContracts
from basis.chain.deploy import deploy

TOKENS = 10**18


@pytest.fixture(scope="module")
def deployment(anvil, w3, tmp_path_factory):
    """Deployer = key 0 (owner, treasury), operator = key 1; 1M stand-in tokens to the deployer."""
    manifest = tmp_path_factory.mktemp("basis-home") / "deployment.json"
    operator = Web3.to_checksum_address(anvil.addresses[1])
    return deploy(
        w3, anvil.keys[0], operator=operator, manifest_path=manifest, mint_to_deployer=1_000_000 * TOKENS
    )


@pytest.fixture(scope="module")
def basis(w3, deployment):
    return BasisContracts.from_manifest(w3, deployment.manifest)
