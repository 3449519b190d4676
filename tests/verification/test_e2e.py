"""End to end on the local chain (issue #11): a cheating worker beside an honest one, under load.

Real anvil chain and contracts, a real gateway (uvicorn on loopback, SQLite ledger) with its
verifier pool on, real worker processes speaking the public protocol. The cheat serves its first
jobs honestly (and is paid for them in a settled batch), then sends random ordinary tokens whose
text matches their ids. It is suspended, refused on reconnect, its clients' failed jobs refunded,
its unsettled rewards absent from the next rewards root; its claim pays only what it earned
before; the honest worker keeps every reward; `basis audit --chain` passes.

The reference scorer here is the test double ``tests.verification.doubles:canned`` (the honest
workers run the InstantEngine, whose output it knows); the gateway's default scorer, llama.cpp
over the binding's GGUF, is injected the same way (``BASIS_VERIFIER_SCORER`` unset).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from web3 import Web3

from basis.chain.anvil import Anvil
from basis.domain.account_id import to_bytes32
from basis.gateway.runtime import GatewayOptions
from basis.models import load_bindings
from basis.worker import Worker, load_key, make_offers
from basis.worker.client import WorkerRejected
from tests.conftest import require_foundry
from tests.gateway.harness import REPO, Gateway
from tests.support.chain_home import deployed_home

TOKENS = 10**18
pytestmark = [pytest.mark.chain]


@pytest.fixture
def network(tmp_path, monkeypatch):
    require_foundry()
    monkeypatch.setenv("BASIS_VERIFIER_SCORER", "tests.verification.doubles:canned")
    with deployed_home(tmp_path) as (home, anvil, _w3):
        gw = Gateway(home, GatewayOptions(heartbeat_interval=1.0, verifier="pool"), rpc_url=anvil.rpc_url)
        try:
            yield gw, anvil
        finally:
            gw.close()


def start_cheat(gw: Gateway, honest_first: int):
    from basis.worker import new_key_file

    key_file = gw.settings.home / "cheat.key"
    if not key_file.exists():
        new_key_file(key_file)
    before = {w.address for w in gw.runtime.hub.workers()}
    env = {**os.environ, "BASIS_HOME": str(gw.settings.home)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.verification.cheat_worker", "--gateway", gw.ws,
                             "--key-file", str(key_file), "--honest-first", str(honest_first)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw.workers.append(proc)
    gw.until(lambda: {w.address for w in gw.runtime.hub.workers()} - before, what="the cheat to connect", timeout=90)
    return proc, key_file, ({w.address for w in gw.runtime.hub.workers()} - before).pop().lower()


def chat(gw: Gateway, key: str, n: int) -> list[str]:
    def one(_):
        r = httpx.post(f"{gw.base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                       json={"model": "basis-default", "max_tokens": 12, "temperature": 0.7,
                             "messages": [{"role": "user", "content": "Say something."}]})
        assert r.status_code == 200, r.text
        return r.json()["id"].removeprefix("chatcmpl-")

    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(one, range(n)))


def judged(gw: Gateway) -> None:
    gw.views_caught_up()
    gw.until(lambda: not gw.runtime.reader().pending_checks(), what="every checked job judged", timeout=120)
    gw.views_caught_up()


def claim(gw: Gateway, anvil: Anvil, key_file, address: str) -> subprocess.CompletedProcess:
    anvil.rpc("anvil_setBalance", [Web3.to_checksum_address(address), hex(10**20)])
    env = {**os.environ, "BASIS_HOME": str(gw.settings.home)}
    return subprocess.run([sys.executable, "-m", "basis.cli.main", "worker", "claim", "--gateway", gw.base,
                           "--key-file", str(key_file), "--rpc", anvil.rpc_url], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cheat_is_suspended_refunded_and_unpaid_while_the_honest_worker_keeps_every_reward(network):
    gw, anvil = network
    runtime = gw.runtime
    assert runtime.verification.enabled, "verification is on by default where the reference is installed"
    published = httpx.get(f"{gw.base}/v1/network").json()["verification"]
    assert published["enabled"] is True and published["sample_bps"] == runtime.verification.sample_bps
    assert published["probation_jobs"] >= 4 and "basis-default" in published["models"]
    chain = runtime.scheduler.settler.chain
    c = chain.contracts
    deployer, depositor = c.sender(anvil.keys[0]), c.sender(anvil.keys[2])
    account_id, key = gw.ledger.create_api_key("client")
    c.mint(deployer, depositor.address, 100 * TOKENS)
    c.deposit(depositor, 100 * TOKENS, to_bytes32(account_id))
    runtime.indexer.sync()

    # -- the cheat joins alone and earns honestly: three jobs, checked (probation), settled --------
    cheat_proc, cheat_key, cheat = start_cheat(gw, honest_first=3)
    early = chat(gw, key, 3)
    judged(gw)
    reader = runtime.reader()
    assert all(reader.receipt(j)["verification"]["verdict"] == "passed" for j in early)
    earned_before = sum(int(reader.receipt(j)["core"]["reward"]) for j in early)
    first = runtime.scheduler.tick()
    assert first is not None and first["status"] == "confirmed" and first["receipts"] == 3

    # -- then an honest worker joins and both serve under load; the cheat turns to random ids --------
    honest_key = gw.settings.home / f"worker-{len(gw.workers)}.key"  # where the harness puts its key
    gw.start_worker(engine="instant", capacity=4)
    honest = next(w.address.lower() for w in runtime.hub.workers() if w.address.lower() != cheat)
    jobs = chat(gw, key, 16)
    judged(gw)
    gw.until(lambda: runtime.reader().worker_status(cheat) is not None
             and runtime.reader().worker_status(cheat)["status"] == "suspended", what="the cheat suspended")
    reader = runtime.reader()
    by_worker: dict[str, list[dict]] = {cheat: [], honest: []}
    for j in jobs:
        r = reader.receipt(j)
        by_worker[r["core"]["worker"]].append(r)
    cheat_late, honest_jobs = by_worker[cheat], by_worker[honest]
    assert cheat_late, "the cheat served none of the jobs under load"
    assert honest_jobs, "the honest worker served none of the jobs under load"
    status = reader.worker_status(cheat)
    assert status["suspended_by"] == "verifier" and status["failed"] >= 1
    # Its clients' failed jobs are refunded (one refund credit each, equal to the charge) ...
    refunds = {r["external_id"]: int(r["amount"]) for r in reader.db.execute(
        "SELECT external_id, amount FROM credits WHERE source = 'refund'")}
    failed = [r for r in cheat_late if r["verification"] and r["verification"]["verdict"] == "failed"]
    assert failed and {r["core"]["job_id"]: int(r["core"]["charged"]) for r in failed} == refunds
    # ... and every reward of it not yet settled is forfeited; none of the honest worker's.
    assert all(r["reward_forfeited"] for r in cheat_late)
    assert not any(r["reward_forfeited"] for r in honest_jobs)
    assert all(r["verification"] is None or r["verification"]["verdict"] == "passed" for r in honest_jobs)
    api = httpx.get(f"{gw.base}/v1/receipts/{failed[0]['core']['job_id']}").json()  # the public envelope
    assert api["verification"]["verdict"] == "failed" and api["reward_forfeited"] is True
    assert api["core"] == failed[0]["core"] and "ids" not in json.dumps(api["verification"])
    scraped = httpx.get(f"{gw.base}/metrics").text
    assert 'basis_verdicts_total{model="basis-default",verdict="failed"}' in scraped
    page = httpx.get(f"{gw.base}/workers").text  # the explorer: suspended visibly, with its counts
    row = page[page.index(f'id="worker-{cheat}"'):]
    row = row[:row.index("</tr>")]
    assert "suspended" in row and "by the verifier" in row
    receipt_page = httpx.get(f"{gw.base}/receipts/{failed[0]['core']['job_id']}").text
    assert 'id="receipt-verification"' in receipt_page and ">failed</span>" in receipt_page
    assert "yes: the reward went to the treasury" in receipt_page
    gw.until(lambda: "basis_verifier_lag_seconds 0.0" in httpx.get(f"{gw.base}/metrics").text,
             what="the verifier's lag back to 0 once nothing is pending", timeout=30)

    # -- refused on reconnect ----------------------------------------------------------------------
    cheat_proc.kill()
    cheat_proc.wait(10)
    gw.until(lambda: cheat not in runtime.online_workers(), what="the cheat to drop")
    binding = {"basis-default": load_bindings()["basis-default"]}
    again = Worker(gateway_url=gw.ws, private_key=load_key(cheat_key), engine=None,
                   offers=make_offers(binding, ["basis-default"], 1))
    with pytest.raises(WorkerRejected) as rejected:
        asyncio.run(again.run_once())
    assert rejected.value.code == "suspended"

    # -- the next batch: the cheat's unsettled rewards are absent from the rewards root --------------
    gw.views_caught_up()
    batch = runtime.scheduler.tick()
    assert batch is not None and batch["status"] == "confirmed"
    gw.views_caught_up()  # the batch's events are recorded; the public endpoint reads them from the views
    full = httpx.get(f"{gw.base}/v1/settlement/batches/{batch['batch_id']}").json()
    cumulative = {w.lower(): int(v) for w, v in full["rewards"]}
    assert cumulative[cheat] == earned_before  # only what it earned before
    assert cumulative[honest] == sum(int(r["core"]["reward"]) for r in honest_jobs)  # every honest reward

    # -- the cheat's claim pays only what it earned before; the honest worker's pays everything ---------
    out = claim(gw, anvil, cheat_key, cheat)
    assert out.returncode == 0, out.stderr
    assert c.balance_of(Web3.to_checksum_address(cheat)) == earned_before
    out = claim(gw, anvil, honest_key, honest)
    assert out.returncode == 0, out.stderr
    assert c.balance_of(Web3.to_checksum_address(honest)) == cumulative[honest] > 0

    # -- the operator suspends the honest worker by hand while it is connected: no new jobs go to it --
    env = {**os.environ, "BASIS_HOME": str(gw.settings.home)}
    out = subprocess.run([sys.executable, "-m", "basis.cli.main", "workers", "suspend", honest, "--reason",
                          "test of the operator's hand"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "suspended", out.stderr
    gw.until(lambda: honest in runtime.hub.suspended, what="the gateway to stop routing to it", timeout=60)
    r = httpx.post(f"{gw.base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                   json={"model": "basis-default", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503, r.text

    # -- the account: refunds came back as credit; the auditor agrees with ledger and chain ------------
    acc = gw.ledger.get(account_id)
    assert acc.refunded == sum(refunds.values()) and acc.available >= 0
    runtime.indexer.sync()
    gw.views_caught_up()
    env = {**os.environ, "BASIS_HOME": str(gw.settings.home), "BASIS_RPC_URL": anvil.rpc_url}
    audit = subprocess.run([sys.executable, "-m", "basis.cli.main", "audit", "--chain", "--json"], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=180)
    report = json.loads(audit.stdout)
    assert audit.returncode == 0 and report["ok"], report["problems"]
