"""The real forge test suite (ci profile), the shipped artifacts, anvil state and the CLI."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from typer.testing import CliRunner
from web3 import Web3

from basis.chain.anvil import Anvil
from basis.chain.compiler import compile_contracts, load_shipped
from basis.chain.paths import node_modules, repo_root
from basis.cli.contracts import app

pytestmark = pytest.mark.chain


def _forge():
    nm = node_modules()
    forge = nm / "@foundry-rs" / "forge-linux-amd64" / "bin" / "forge" if nm else None
    if forge is None or not forge.is_file():
        if os.environ.get("CI"):
            raise RuntimeError("forge absent in CI: `npm ci` did not run")
        pytest.skip("node_modules absent (run `npm ci`): the forge suite cannot run")
    return forge


def test_forge_suite_passes_with_ci_profile():
    forge = _forge()
    env = dict(os.environ, FOUNDRY_PROFILE="ci")
    # The real binary: node_modules/.bin/forge exits 0 even when tests fail.
    proc = subprocess.run(
        [str(forge), "test"], cwd=repo_root(), env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        print(proc.stdout[-8000:], proc.stderr[-4000:])
    assert proc.returncode == 0
    assert "0 failed" in proc.stdout


def test_shipped_artifacts_match_fresh_compile(tmp_path):
    _forge()
    fresh = compile_contracts(use_cache=False, cache_dir=tmp_path)
    shipped = load_shipped()
    for name, art in fresh.items():
        assert shipped[name].to_json() == art.to_json(), (
            f"{name}: shipped artifact is stale, run `basis contracts compile --write`"
        )


def test_anvil_state_survives_clean_restart(tmp_path):
    _forge()
    state = tmp_path / "anvil-state.json"
    with Anvil(state_path=state, chain_id=31337) as chain:
        w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
        a, b = chain.addresses[0], chain.addresses[1]
        tx = {
            "from": Web3.to_checksum_address(a),
            "to": Web3.to_checksum_address(b),
            "value": 12345,
            "nonce": 0,
            "gas": 21000,
            "gasPrice": w3.eth.gas_price,
            "chainId": 31337,
        }
        signed = w3.eth.account.sign_transaction(tx, chain.keys[0])
        w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction))
        height = w3.eth.block_number
    assert state.is_file()
    with Anvil(state_path=state, chain_id=31337) as chain:
        w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
        assert w3.eth.block_number == height
        assert w3.eth.get_transaction_count(Web3.to_checksum_address(a)) == 1


def test_cli_deploy_writes_manifest(tmp_path, anvil):
    key_file = tmp_path / "key"
    key_file.write_text(anvil.keys[5] + "\n")
    manifest = tmp_path / "deployment.json"
    result = CliRunner().invoke(
        app, ["deploy", "--rpc", anvil.rpc_url, "--key-file", str(key_file), "--manifest", str(manifest)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(manifest.read_text())
    assert data["chain_id"] == 31337
    assert data["deployer"] == Web3.to_checksum_address(anvil.addresses[5])
    # with an existing token address the stand-in is not deployed
    result = CliRunner().invoke(
        app,
        [
            "deploy",
            "--rpc",
            anvil.rpc_url,
            "--key-file",
            str(key_file),
            "--manifest",
            str(tmp_path / "m2.json"),
            "--token",
            data["contracts"]["token"]["address"],
        ],
    )
    assert result.exit_code == 0, result.output
    m2 = json.loads((tmp_path / "m2.json").read_text())
    assert m2["contracts"]["token"] == {"address": data["contracts"]["token"]["address"], "stand_in": False}


def test_cli_deploy_refuses_stand_in_token_on_non_local_chain(tmp_path):
    _forge()
    with Anvil(chain_id=8453) as chain:
        key_file = tmp_path / "key"
        key_file.write_text(chain.keys[0])
        result = CliRunner().invoke(
            app,
            [
                "deploy",
                "--rpc",
                chain.rpc_url,
                "--key-file",
                str(key_file),
                "--manifest",
                str(tmp_path / "m.json"),
            ],
        )
        assert result.exit_code == 1
        assert "--token" in result.output
