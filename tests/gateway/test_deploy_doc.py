"""docs/deploy.md, exercised: N gateways (here two `basis serve` processes) on one PostgreSQL, each
with its own BASIS_HOME and BASIS_NODE_ID, sharing the operator key file, the deployment manifest
(without an rpc_url: each gateway names the chain with BASIS_RPC_URL) and the store; a key made
with the CLI works on both; a worker connects to one gateway directly; each gateway serves a
request, and both receipts carry the one operator signer."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

import httpx
import pytest
from eth_account import Account
from web3 import Web3

from basis.chain.anvil import free_port
from basis.chain.deploy import deploy
from tests.conftest import require_foundry
from tests.gateway.harness import REPO
from tests.gateway.test_dies_with_gateway import wait_ready

pytestmark = [pytest.mark.postgres, pytest.mark.chain]


def basis(*args: str, env: dict[str, str], **kwargs) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "basis.cli.main", *args], env={**os.environ, **env}, cwd=REPO,
                            **kwargs)


def test_two_gateways_on_one_postgres_as_the_deploy_doc_shows(tmp_path, pg_dsn, anvil):
    require_foundry()
    shared = tmp_path / "etc-basis"
    shared.mkdir()
    key_file = shared / "operator.key"
    key_file.write_text("0x" + secrets.token_hex(32) + "\n")
    key_file.chmod(0o600)
    operator = Account.from_key(key_file.read_text().strip()).address
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    deploy(w3, anvil.keys[0], operator=operator, manifest_path=shared / "deployment.json", mint_to_deployer=10**24)
    manifest = json.loads((shared / "deployment.json").read_text())
    assert "rpc_url" not in manifest  # each gateway names its own RPC endpoint
    funder = Web3.to_checksum_address(anvil.addresses[0])
    w3.eth.send_transaction({"from": funder, "to": operator, "value": 10**18})  # gas to settle

    common = {"BASIS_DATABASE_URL": pg_dsn, "BASIS_OPERATOR_KEY_FILE": str(key_file),
              "BASIS_MANIFEST": str(shared / "deployment.json"), "BASIS_RPC_URL": anvil.rpc_url,
              "PYTHONPATH": str(REPO / "src")}
    created = subprocess.run([sys.executable, "-m", "basis.cli.main", "keys", "create", "--account", "acme"],
                             env={**os.environ, **common, "BASIS_HOME": str(tmp_path / "admin")}, cwd=REPO,
                             capture_output=True, text=True, timeout=120, check=True)
    api_key = created.stdout.strip().splitlines()[-1]
    subprocess.run([sys.executable, "-m", "basis.cli.main", "credits", "grant", "--account", "acme",
                    "--amount", str(10**21)], env={**os.environ, **common, "BASIS_HOME": str(tmp_path / "admin")},
                   cwd=REPO, capture_output=True, timeout=120, check=True)

    gateways, workers = [], []
    try:
        for n in (1, 2):
            port = free_port()
            env = {**common, "BASIS_HOME": str(tmp_path / f"gw-{n}"), "BASIS_NODE_ID": f"gw-{n}"}
            log = open(tmp_path / f"gw-{n}.log", "wb")  # noqa: SIM115 - closed with the process
            proc = basis("serve", "--host", "127.0.0.1", "--port", str(port), "--settle-interval", "60", env=env,
                         stdout=log, stderr=subprocess.STDOUT)
            gateways.append((proc, f"http://127.0.0.1:{port}", env))
        for proc, base, env in gateways:
            wait_ready(base, proc)
            worker_key = tmp_path / f"{env['BASIS_NODE_ID']}-worker.key"
            workers.append(basis("worker", "run", "--gateway", base.replace("http", "ws") + "/v1/workers/connect",
                                 "--key-file", str(worker_key), "--new-key", "--engine", "instant",
                                 "--model", "basis-default", "--capacity", "2", "--log-level", "warning",
                                 env={"BASIS_HOME": env["BASIS_HOME"]}, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL))
        signers = set()
        for _proc, base, _env in gateways:
            with httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {api_key}"}) as client:
                for _ in range(300):  # until this gateway's own worker has connected
                    if any(m["id"] == "basis-default" and m.get("status") == "live"
                           for m in client.get("/v1/models").json()["data"]):
                        break
                    time.sleep(0.1)
                r = client.post("/v1/chat/completions", json={"model": "basis-default", "max_tokens": 4,
                                                               "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200, r.text
                job_id = r.json()["id"].removeprefix("chatcmpl-")
                for _ in range(100):
                    receipt = client.get(f"/v1/receipts/{job_id}")
                    if receipt.status_code == 200:
                        break
                    time.sleep(0.1)
                assert receipt.status_code == 200, receipt.text
                signers.add(receipt.json()["signer"].lower())
        assert signers == {operator.lower()}  # one operator key signs for every gateway
    finally:
        for p in workers + [g[0] for g in gateways]:
            p.terminate()
        for p in workers + [g[0] for g in gateways]:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
