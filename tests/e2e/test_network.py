"""The loop the product exists for, end to end on a real anvil chain and real processes:

deposit through the vault -> chat completions through the OpenAI SDK (contributor-served on a
llama.cpp worker, gateway-served on the gateway's own engine) -> receipts -> settlement batch
on chain -> the worker claims -> a withdrawal voucher is redeemed -> `basis audit --chain`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from openai import OpenAI
from web3 import Web3

from basis.chain.vouchers import Withdrawal, WithdrawalRequest, sign_withdrawal_request
from basis.domain.account_id import to_bytes32
from basis.domain.receipt import receipt_hash
from basis.gateway.runtime import GatewayOptions
from basis.settlement.chain import from_hex
from tests.conftest import require_foundry
from tests.gateway.harness import REPO, Gateway
from tests.models.support import require_llama
from tests.support.chain_home import deployed_home

TOKENS = 10**18
pytestmark = [pytest.mark.chain, pytest.mark.llama]


@pytest.fixture
def network(tmp_path):
    require_foundry()
    require_llama()
    with deployed_home(tmp_path) as (home, anvil, w3):
        gw = Gateway(home, GatewayOptions(heartbeat_interval=1.0, engine="llama-cpp", engine_models=["basis-small"],
                                          n_threads=1), rpc_url=anvil.rpc_url)
        try:
            yield gw, anvil, w3
        finally:
            gw.close()


def test_deposit_serve_settle_claim_withdraw_audit(network):
    gw, anvil, _w3 = network
    runtime = gw.runtime
    chain = runtime.scheduler.settler.chain
    c = chain.contracts
    deployer, depositor = c.sender(anvil.keys[0]), c.sender(anvil.keys[2])
    treasury = chain.manifest["treasury"]

    # -- credit comes in through the vault -------------------------------------------------------
    account_id, key = gw.ledger.create_api_key("e2e")
    c.mint(deployer, depositor.address, 100 * TOKENS)
    c.deposit(depositor, 100 * TOKENS, to_bytes32(account_id))
    runtime.indexer.sync()
    assert gw.ledger.get(account_id).deposited == 100 * TOKENS

    # -- served: two contributor jobs on a llama.cpp worker, one gateway-served job --------------
    worker_proc = gw.start_worker(engine="llama-cpp", models=("basis-default",), capacity=2)
    worker_address = runtime.hub.workers()[0].address
    client = OpenAI(base_url=gw.base + "/v1", api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "Summarize this transaction."}]
    contributor = [client.chat.completions.create(model="basis-default", messages=messages, max_tokens=8)
                   for _ in range(2)]
    stream = client.chat.completions.create(model="basis-small", messages=messages, max_tokens=6, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    gw.views_caught_up()
    receipts = {cc.id[9:]: httpx.get(f"{gw.base}/v1/receipts/{cc.id[9:]}").json() for cc in contributor}
    gateway_job = chunks[0].id[9:]
    receipts[gateway_job] = httpx.get(f"{gw.base}/v1/receipts/{gateway_job}").json()
    assert {r["core"]["served_by"] for r in receipts.values()} == {"contributor", "gateway"}
    assert receipts[gateway_job]["core"]["worker"] is None and receipts[gateway_job]["core"]["reward"] == "0"
    assert receipts[gateway_job]["core"]["output_tokens"] == chunks[-1].usage.completion_tokens
    hashes = {j: r["hash"] for j, r in receipts.items()}

    # -- settle one batch on chain ----------------------------------------------------------------
    treasury_before = c.balance_of(treasury)
    batch = runtime.scheduler.tick()
    assert batch is not None and batch["receipts"] == 3
    status = httpx.get(f"{gw.base}/v1/settlement/status").json()
    assert status["settlement"]["status"] == "ok"
    assert status["settlement"]["last_batch"]["batch_id"] == batch["batch_id"]
    assert status["indexer"]["status"] == "ok"
    gw.views_caught_up()
    batches = httpx.get(f"{gw.base}/v1/settlement/batches").json()["data"]
    assert len(batches) == 1 and batches[0]["status"] == "confirmed"
    for job_id, h in hashes.items():
        r = httpx.get(f"{gw.base}/v1/receipts/{job_id}").json()
        assert r["status"] == "settled" and r["hash"] == h == receipt_hash(r["core"])
        proof = httpx.get(f"{gw.base}/v1/settlement/receipts/{job_id}/proof").json()
        assert c.distributor.functions.verifyReceipt(
            from_hex(proof["batch_id"]), from_hex(h), [from_hex(p) for p in proof["proof"]]).call()
    charged = sum(int(r["core"]["charged"]) for r in receipts.values())
    rewards = sum(int(r["core"]["reward"]) for r in receipts.values())
    assert c.balance_of(treasury) - treasury_before == charged - rewards  # the fees

    # -- the worker claims with its own key --------------------------------------------------------
    worker_key = gw.settings.home / "worker-0.key"
    anvil.rpc("anvil_setBalance", [Web3.to_checksum_address(worker_address), hex(10**20)])
    env = {**os.environ, "BASIS_HOME": str(gw.settings.home)}
    out = subprocess.run([sys.executable, "-m", "basis.cli.main", "worker", "claim", "--gateway", gw.base,
                          "--key-file", str(worker_key), "--rpc", anvil.rpc_url], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert c.balance_of(worker_address) == rewards > 0

    # -- withdraw unspent deposit-backed credit with a voucher ---------------------------------------
    # (signed by the address that deposited for the account: a bearer key alone never withdraws)
    request = WithdrawalRequest(account=to_bytes32(account_id), recipient=depositor.address, amount=10 * TOKENS,
                                nonce=1, expiry=int(_w3.eth.get_block("latest")["timestamp"]) + 600)
    signature = sign_withdrawal_request(anvil.keys[2], request, chain_id=chain.chain_id, vault=chain.vault)
    v = httpx.post(f"{gw.base}/v1/withdrawals", headers={"Authorization": f"Bearer {key}"},
                   json={"recipient": depositor.address, "amount": str(10 * TOKENS), "nonce": "1",
                         "expiry": request.expiry, "signature": "0x" + signature.hex()}).json()
    voucher = Withdrawal(account=from_hex(v["account"]), recipient=v["recipient"], amount=int(v["amount"]),
                         nonce=int(v["nonce"]), expiry=v["expiry"])
    before = c.balance_of(depositor.address)
    c.withdraw(depositor, voucher, from_hex(v["signature"]))
    assert c.balance_of(depositor.address) == before + 10 * TOKENS
    runtime.indexer.sync()
    assert gw.ledger.get(account_id).withdrawn == 10 * TOKENS

    # -- the auditor: replay + chain -----------------------------------------------------------------
    gw.views_caught_up()
    audit = subprocess.run([sys.executable, "-m", "basis.cli.main", "audit", "--chain", "--json"], cwd=REPO,
                           env={**env, "BASIS_RPC_URL": anvil.rpc_url}, capture_output=True, text=True, timeout=120)
    report = json.loads(audit.stdout)
    assert audit.returncode == 0 and report["ok"], report["problems"]
    assert report["receipts"] == 3
    worker_proc.kill()
