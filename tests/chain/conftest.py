from __future__ import annotations

import pytest
from web3 import Web3

from basis.chain.anvil import Anvil
from basis.chain.contracts import BasisContracts
from basis.chain.deploy import deploy
from basis.chain.paths import node_modules

TOKENS = 10**18


def _require_toolchain() -> None:
    nm = node_modules()
    if nm is None or not (nm / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil").is_file():
        pytest.skip("node_modules with @foundry-rs/anvil absent: run `npm ci` at the repository root")


@pytest.fixture(scope="module")
def anvil():
    _require_toolchain()
    with Anvil() as chain:
        yield chain


@pytest.fixture(scope="module")
def w3(anvil):
    return Web3(Web3.HTTPProvider(anvil.rpc_url))


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
