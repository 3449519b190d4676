"""Deposits -> jobs -> settlement batch on chain -> claims -> withdrawals -> audit, on a real anvil
with the real contracts and a real SQLite ledger."""

from __future__ import annotations

import json
import sqlite3
import uuid

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner
from web3 import Web3

from basis.chain.contracts import ChainRevert
from basis.chain.vouchers import Withdrawal
from basis.cli.main import app as cli_app
from basis.domain import account_id as onchain
from basis.domain.merkle import receipts_tree
from basis.domain.receipt import receipt_hash
from basis.ledger.audit import AuditReport, audit
from basis.ledger.settlement import batch_aggregate_id
from basis.settlement.audit import audit_chain
from basis.settlement.batches import Settler
from basis.settlement.chain import TOPICS, from_hex, hex32
from basis.settlement.deposits import ChainIndexer
from tests.settlement.conftest import TOKENS
from tests.settlement.helpers import Server, app_for, run_job, withdrawal_request

pytestmark = pytest.mark.chain
GAS: dict[str, list[int]] = {"settle": [], "claim": []}


def full_audit(env) -> list[str]:
    env.catch_up()
    report = audit(env.ledger.store, env.settings.views_path, signer=env.ledger.signer.address)
    audit_chain(env.settings, report, w3=env.w3, manifest=env.manifest)
    return report.problems


def posted_batches(env) -> list:
    return env.w3.eth.get_logs({"address": env.chain.distributor, "fromBlock": 0, "toBlock": "latest",
                                "topics": [hex32(TOPICS["RootPosted"])]})


def settler(env, **kw) -> Settler:
    return Settler(env.ledger, env.chain, env.operator_key, reader=env.reader, **kw)


def test_end_to_end_deposit_settle_claim_withdraw_audit(env, anvil):
    w3, c = env.w3, env.c
    alice_wallet = c.sender(anvil.keys[2])
    worker_key = anvil.keys[4]
    worker = Web3.to_checksum_address(anvil.addresses[4]).lower()
    worker2 = "0x" + "cd" * 20
    treasury = env.deployer.address
    c.mint(env.deployer, alice_wallet.address, 100 * TOKENS)

    alice, alice_key = env.ledger.create_api_key("alice")
    env.ledger.grant("bob", 10**18)
    bob = env.ledger.open_account("bob")

    # -- deposits: credited exactly once, whatever the re-reads -----------------------------------
    stranger = uuid.uuid4()
    c.deposit(alice_wallet, 50 * TOKENS, onchain.to_bytes32(alice))
    c.deposit(alice_wallet, 3 * TOKENS, onchain.to_bytes32(stranger))
    indexer = ChainIndexer(env.ledger, w3, env.manifest)
    assert indexer.status == "live"
    passes = indexer.sync()
    assert sum(p.deposits for p in passes) == 2
    again = ChainIndexer(env.ledger, w3, env.manifest).reindex(env.chain.deploy_block, indexer.cursor())
    assert (again.deposits, again.duplicates) == (0, 2)
    assert indexer.sync() == []
    assert env.ledger.get(alice).deposited == 50 * TOKENS
    stranger_acc = env.ledger.get(env.ledger.open_account(str(stranger)))
    assert stranger_acc.deposited == 3 * TOKENS  # unknown account id: credited to the account named by the UUID

    # -- jobs: deposit-backed (alice) and granted (bob), contributor- and gateway-served ----------
    jobs = [run_job(env.ledger, alice, worker=worker), run_job(env.ledger, alice, worker=None),
            run_job(env.ledger, bob, worker=worker2), run_job(env.ledger, bob, worker=worker, outcome="cancelled",
                                                              output_tokens=7)]
    receipts = dict(jobs)
    treasury_before = c.balance_of(treasury)

    result = settler(env).settle_once()
    assert result["status"] == "confirmed" and result["receipts"] == 4
    GAS["settle"].append(result["gas_used"])
    assert settler(env).settle_once() is None
    reward = {worker: 0, worker2: 0}
    from_deposit = 0
    for job_id, r in receipts.items():
        core = r["core"]
        if core["worker"]:
            reward[core["worker"]] += int(core["reward"])
        if env.ledger.get(job_id).account_id == alice:
            from_deposit += int(core["charged"])
        job = env.ledger.get(job_id)
        assert job.status == "settled" and job.receipt["hash"] == r["hash"] == receipt_hash(job.receipt["core"])
        assert job.settlement["batch_id"] == result["batch_id"] and job.settlement["tx_hash"] == result["tx_hash"]
    alice_charged = sum(int(r["core"]["charged"]) for j, r in receipts.items() if env.ledger.get(j).account_id == alice)
    alice_reward = sum(int(r["core"]["reward"]) for j, r in receipts.items() if env.ledger.get(j).account_id == alice)
    assert int(result["to_distributor"]) == alice_reward
    assert int(result["to_treasury"]) == alice_charged - alice_reward
    assert int(result["reward_top_up"]) == sum(reward.values()) - alice_reward  # bob's rewards: granted credit
    assert c.balance_of(c.distributor.address) == sum(reward.values())
    assert c.balance_of(treasury) - treasury_before == int(result["to_treasury"]) - int(result["reward_top_up"])

    # every receipt's inclusion proof verifies on chain (the router serves it)
    client = TestClient(app_for(env))
    for job_id, r in receipts.items():
        proof = client.get(f"/v1/settlement/receipts/{job_id}/proof").json()
        assert proof["hash"] == r["hash"]
        assert c.verify_receipt(from_hex(result["batch_id"]), from_hex(r["hash"]),
                                [from_hex(p) for p in proof["proof"]])
    listing = client.get("/v1/settlement/batches").json()
    assert [b["batch_id"] for b in listing["data"]] == [result["batch_id"]]
    assert listing["data"][0]["status"] == "confirmed" and listing["data"][0]["gas_used"] == result["gas_used"]
    missing = client.get("/v1/settlement/proofs/0x" + "11" * 20)
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}

    # -- claims: the worker claims with `basis worker claim`; the other through the proof API ------
    key_file = env.settings.home / "worker.key"
    key_file.write_text(worker_key + "\n")
    with Server(app_for(env)) as server:
        out = CliRunner().invoke(cli_app, ["worker", "claim", "--gateway", server.url, "--key-file", str(key_file),
                                           "--rpc", anvil.rpc_url])
    assert out.exit_code == 0, out.output
    claimed = json.loads(out.output.strip().splitlines()[-1])
    GAS["claim"].append(claimed["gas_used"])
    assert c.balance_of(worker) == reward[worker] == int(claimed["amount"])
    p2 = client.get(f"/v1/settlement/proofs/{worker2}").json()
    assert int(p2["cumulative"]) == reward[worker2] and p2["batch_id"] == result["batch_id"]
    c.claim(c.sender(anvil.keys[3]), worker=worker2, cumulative=int(p2["cumulative"]),
            proof=[from_hex(p) for p in p2["proof"]])
    assert c.balance_of(worker2) == reward[worker2]
    assert c.balance_of(c.distributor.address) == 0
    assert sum(p.claims for p in indexer.sync()) == 2
    assert {r["worker"]: r["claimed"] for r in env.reader().rewards()} == {w: str(v) for w, v in reward.items()}

    # -- second batch: cumulative rewards grow, repeat claim ---------------------------------------
    run_job(env.ledger, alice, worker=worker, output_tokens=11)
    second = settler(env).settle_once()
    GAS["settle"].append(second["gas_used"])
    with Server(app_for(env)) as server:
        out = CliRunner().invoke(cli_app, ["worker", "claim", "--gateway", server.url, "--key-file", str(key_file),
                                           "--rpc", anvil.rpc_url])
    assert out.exit_code == 0, out.output
    GAS["claim"].append(json.loads(out.output.strip().splitlines()[-1])["gas_used"])
    indexer.sync()

    # -- withdrawals: a voucher for unspent deposit-backed credit --------------------------------
    auth = {"authorization": f"Bearer {alice_key}"}
    acc = env.ledger.get(alice)
    withdrawable = acc.withdrawable
    assert withdrawable == 50 * TOKENS - acc.spent_deposited > 0
    # (a withdrawal is an EIP-712 request signed by alice's depositor wallet, issue #17 item 9)
    wallet_key = anvil.keys[2]
    too_much = client.post("/v1/withdrawals", headers=auth, json=withdrawal_request(
        env, wallet_key, alice, recipient=alice_wallet.address, amount=withdrawable + 1, nonce=1))
    assert too_much.status_code == 402 and too_much.json()["error"]["code"] == "insufficient_credit"
    assert client.post("/v1/withdrawals", json={"recipient": alice_wallet.address}).status_code == 401
    v = client.post("/v1/withdrawals", headers=auth, json=withdrawal_request(
        env, wallet_key, alice, recipient=alice_wallet.address, amount=10 * TOKENS, nonce=2)).json()
    assert env.ledger.get(alice).withdrawable == withdrawable - 10 * TOKENS
    voucher = Withdrawal(account=from_hex(v["account"]), recipient=v["recipient"], amount=int(v["amount"]),
                         nonce=int(v["nonce"]), expiry=v["expiry"])
    before = c.balance_of(alice_wallet.address)
    c.withdraw(alice_wallet, voucher, from_hex(v["signature"]))
    assert c.balance_of(alice_wallet.address) == before + 10 * TOKENS
    assert sum(p.withdrawals for p in indexer.sync()) == 1
    acc = env.ledger.get(alice)
    assert acc.withdrawn == 10 * TOKENS and not acc.vouchers

    # an unredeemed voucher is released only after CHAIN time passes its expiry
    rest = client.post("/v1/withdrawals", headers=auth, json=withdrawal_request(
        env, wallet_key, alice, recipient=alice_wallet.address, amount=env.ledger.get(alice).withdrawable, nonce=3,
        ttl=60)).json()
    assert int(rest["nonce"]) == int(v["nonce"]) + 1
    assert env.ledger.get(alice).withdrawable == 0
    indexer.sync()
    assert env.ledger.get(alice).vouchers  # chain time has not passed the expiry
    anvil.rpc("evm_increaseTime", [120])
    anvil.rpc("evm_mine")
    assert sum(p.released for p in indexer.sync()) == 1
    assert env.ledger.get(alice).withdrawable == withdrawable - 10 * TOKENS
    rows = client.get("/v1/withdrawals", headers=auth).json()["data"]
    assert [r["status"] for r in rows] == ["redeemed", "expired"]

    assert full_audit(env) == []
    assert len(posted_batches(env)) == 2
    print("\nsettlement gas:", json.dumps(GAS))


@pytest.mark.parametrize("stage", ["proposed", "submitted", "sent", "mined", "confirmed"])
def test_a_crash_at_any_settlement_step_never_posts_twice_nor_loses_the_batch(env, stage):
    alice = env.ledger.open_account("alice")
    env.ledger.grant("alice", 10**18)
    jobs = [run_job(env.ledger, alice, worker="0x" + "ab" * 20) for _ in range(3)]

    class Crash(Exception):
        pass

    def hook(at: str) -> None:
        if at == stage:
            raise Crash(at)

    with pytest.raises(Crash):
        settler(env, hook=hook).settle_once()
    env.reopen()  # a new process on the same files
    result = settler(env).settle_once()
    if stage == "confirmed":
        assert result is None  # it had finished; nothing left
    else:
        assert result["status"] == "confirmed" and result["receipts"] == 3
    assert settler(env).settle_once() is None
    assert len(posted_batches(env)) == 1
    for job_id, r in jobs:
        job = env.ledger.get(job_id)
        assert job.status == "settled" and job.receipt["hash"] == r["hash"]
    assert full_audit(env) == []


def test_a_resubmission_after_a_lost_transaction_posts_once(env):
    """The signed transaction was recorded but never reached the node: the restart resubmits it."""
    alice = env.ledger.open_account("alice")
    env.ledger.grant("alice", 10**18)
    run_job(env.ledger, alice, worker=None)
    s = settler(env)

    def hook(at: str) -> None:
        if at == "submitted":
            raise RuntimeError("lost before broadcast")

    s.hook = hook
    with pytest.raises(RuntimeError):
        s.settle_once()
    assert len(env.ledger.get(batch_aggregate_id(s.in_flight())).tx_hashes) == 1
    result = settler(env).settle_once()
    assert result["status"] == "confirmed"
    assert len(posted_batches(env)) == 1 and full_audit(env) == []


def test_tampering_is_refused_on_chain_and_named_by_the_audit(env, anvil):
    alice = env.ledger.open_account("alice")
    env.ledger.grant("alice", 10**18)
    job_id, receipt = run_job(env.ledger, alice, worker="0x" + "ab" * 20)
    result = settler(env).settle_once()
    assert full_audit(env) == []

    # a wrong root from another key: the contracts refuse with named errors
    intruder = env.c.sender(anvil.keys[5])
    fake = receipts_tree(["0x" + "77" * 32]).root
    with pytest.raises(ChainRevert) as err:
        env.c.settle(intruder, batch_id=b"\x01" * 32, to_distributor=0, to_treasury=0, reward_top_up=0,
                     rewards_root=fake, receipts_root=fake, ledger_position=10**6, ledger_head=fake)
    assert err.value.name == "NotOperator"
    with pytest.raises(ChainRevert) as err:
        env.c.post_root(intruder, batch_id=b"\x01" * 32, rewards_root=fake, receipts_root=fake)
    assert err.value.name == "NotPoster"
    with pytest.raises(ChainRevert) as err:  # the operator cannot replay a posted batch id
        env.c.settle(env.operator, batch_id=from_hex(result["batch_id"]), to_distributor=0, to_treasury=0,
                     reward_top_up=0, rewards_root=fake, receipts_root=fake, ledger_position=10**6,
                     ledger_head=fake)
    assert err.value.name == "BatchAlreadyPosted"

    # edit one field of the stored receipt in the events table: both audits name it
    env.ledger.close()
    db = sqlite3.connect(env.settings.events_path)
    rows = db.execute("SELECT rowid, state FROM stored_events WHERE topic = 'basis:Job.ReceiptIssued.v1'").fetchall()
    assert len(rows) == 1
    state = rows[0][1]
    before = f'"output_tokens":{receipt["core"]["output_tokens"]}'.encode()
    assert before in state
    db.execute("UPDATE stored_events SET state = ? WHERE rowid = ?",
               (state.replace(before, b'"output_tokens":41'), rows[0][0]))
    db.commit()
    db.close()
    env.ledger = type(env.ledger)(env.settings)
    report = audit(env.ledger.store, env.settings.views_path, signer=env.ledger.signer.address)
    chain_report = AuditReport()
    audit_chain(env.settings, chain_report, w3=env.w3, manifest=env.manifest)
    assert any(str(job_id) in p and "hash" in p for p in report.problems), report.problems
    assert any(str(job_id) in p and "does not include" in p for p in chain_report.problems), chain_report.problems
    # ... and the ledger head the settlement anchored no longer matches the store
    assert any(p.startswith("ledger position") and "anchored head on chain" in p for p in chain_report.problems), \
        chain_report.problems


def test_without_a_vault_everything_is_pending(settings):
    from types import SimpleNamespace

    from fastapi import FastAPI

    from basis.gateway.settlement.router import router
    from basis.ledger.projections import ViewReader
    from basis.ledger.service import Ledger

    ledger = Ledger(settings)
    try:
        indexer = ChainIndexer(ledger, None, None)
        assert indexer.status == "pending" and indexer.run_once() is None
        _, key = ledger.create_api_key("carol")
        app = FastAPI()
        app.include_router(router)
        app.state.runtime = SimpleNamespace(settings=settings, ledger=ledger,
                                            reader=lambda: ViewReader(settings.views_path), deployment=None, web3=None)
        client = TestClient(app)
        r = client.post("/v1/withdrawals", headers={"authorization": f"Bearer {key}"},
                        json={"recipient": "0x" + "12" * 20})
        assert r.status_code == 503 and r.json()["error"]["code"] == "vault_pending"
        assert client.get("/v1/settlement/batches").json()["data"] == []
        report = AuditReport()
        audit_chain(settings, report)
        assert report.problems and "pending" in report.problems[0]
    finally:
        ledger.close()


def test_cli_deposits_sync_settle_and_audit_chain(env, anvil):
    alice = env.ledger.open_account("alice")
    wallet = env.c.sender(anvil.keys[2])
    env.c.mint(env.deployer, wallet.address, 10 * TOKENS)
    env.c.deposit(wallet, 5 * TOKENS, onchain.to_bytes32(alice))
    env.ledger.grant("alice", 10**18)
    run_job(env.ledger, alice, worker=None)
    env.ledger.close()  # the CLI is another process on the same files
    cli_env = {"BASIS_HOME": str(env.settings.home), "BASIS_RPC_URL": anvil.rpc_url}
    runner = CliRunner()
    out = runner.invoke(cli_app, ["deposits", "sync"], env=cli_env)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["passes"][0]["deposits"] == 1
    out = runner.invoke(cli_app, ["settle"], env=cli_env)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output[out.output.index("{"):])["status"] == "confirmed"
    out = runner.invoke(cli_app, ["audit", "--chain", "--json"], env=cli_env)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["ok"] is True
    env.ledger = type(env.ledger)(env.settings)


_KILLED_SETTLER = """
import os, signal, sys
from basis.config import Settings
from basis.ledger.projections import Projector, ViewReader
from basis.ledger.service import Ledger
from basis.settlement.batches import Settler
from basis.settlement.chain import Chain, connect, load_manifest

settings = Settings()
ledger = Ledger(settings)
Projector(ledger.store, settings.views_path).catch_up()
reader = ViewReader(settings.views_path)
chain = Chain(connect(sys.argv[1]), load_manifest(None, settings.home))

def hook(stage):
    if stage == sys.argv[2]:
        os.kill(os.getpid(), signal.SIGKILL)

Settler(ledger, chain, settings.operator_key(), reader=lambda: reader, hook=hook).settle_once()
"""


@pytest.mark.parametrize("stage", ["submitted", "sent"])
def test_sigkill_mid_settlement_then_restart_posts_exactly_once(env, anvil, stage):
    import os
    import subprocess
    import sys

    alice = env.ledger.open_account("alice")
    env.ledger.grant("alice", 10**18)
    jobs = [run_job(env.ledger, alice, worker="0x" + "ab" * 20) for _ in range(2)]
    env.ledger.close()
    proc = subprocess.run([sys.executable, "-c", _KILLED_SETTLER, anvil.rpc_url, stage],
                          env={**os.environ, "BASIS_HOME": str(env.settings.home)}, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    env.ledger = type(env.ledger)(env.settings)
    result = settler(env).settle_once()
    assert result["status"] == "confirmed" and result["receipts"] == 2
    assert len(posted_batches(env)) == 1
    assert all(env.ledger.get(j).status == "settled" for j, _ in jobs)
    assert full_audit(env) == []
