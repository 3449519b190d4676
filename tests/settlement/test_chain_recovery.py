"""Settlement on a chain that fails or forgets, on a real anvil with the real contracts.

Regression tests of issue #17 items 3 and 4 (reproducers in ../shared/review/test_chain_review.py):
a web3 exception never ends the settlement thread, and a chain that lost a confirmed batch
(``evm_revert`` imitates the lost block) is never built upon, and is repaired by a re-post.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from typer.testing import CliRunner
from web3 import Web3

from basis.cli.main import app as cli_app
from basis.cli.status import settlement_line
from basis.domain import account_id as onchain
from basis.explorer.router import router as explorer_router
from basis.ledger.settlement import batch_aggregate_id
from basis.observability import metrics
from basis.observability.logging import JsonFormatter
from basis.settlement.chain import from_hex
from basis.settlement.consistency import ChainMismatch
from basis.settlement.deposits import ChainIndexer, ChainReorg
from basis.settlement.local_chain import ChainStateLost, LostBatches, check_ledger_matches_chain
from basis.settlement.scheduler import SettlementScheduler
from tests.settlement.conftest import TOKENS
from tests.settlement.helpers import app_for, run_job
from tests.settlement.test_settlement import full_audit, posted_batches, settler

pytestmark = pytest.mark.chain


def _gauge(gauge) -> float:
    return gauge.collect()[0].samples[0].value


def _wait(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_web3_exception_never_ends_the_settlement_thread(env, anvil):
    bob = env.ledger.open_account("bob")
    env.ledger.grant("bob", 10**20)
    job_id, _ = run_job(env.ledger, bob, worker="0x" + "cd" * 20)
    anvil.rpc("anvil_setBalance", [env.operator.address, "0x0"])  # the operator has no gas money
    sched = SettlementScheduler(env.ledger, env.w3, env.manifest, env.operator_key, reader=env.reader,
                                interval=0.1, max_backoff=0.4)
    uncaught: list[str] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda a: uncaught.append(a.exc_type.__name__)
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("basis.settlement.scheduler")
    logger.addHandler(handler)
    try:
        sched.start()
        assert _wait(lambda: sched.consecutive_failures >= 3), sched.state()
        assert sched._thread.is_alive() and uncaught == []
        state = sched.state()
        in_flight = settler(env).in_flight()
        assert state["status"] == "retrying" and state["thread_alive"]
        assert state["last_error"] and state["last_error_type"] and state["last_error_batch"] == in_flight
        assert state["next_attempt_at"] > state["last_error_at"]
        # the gauge follows the counter a moment later (set after the failure is logged)
        assert _wait(lambda: _gauge(metrics.SETTLEMENT_CONSECUTIVE_FAILURES) >= 3)
        logged = [json.loads(line) for line in lines.getvalue().splitlines()]
        failure = next(rec for rec in logged if rec["msg"].startswith("settlement failed"))
        assert failure["batch_id"] == in_flight and failure["level"] == "ERROR"
        assert failure["consecutive_failures"] >= 1 and failure["retry_in_s"] > 0 and failure["error_type"]

        # /v1/settlement/status shows it (the app's runtime gives the scheduler's state)
        app = app_for(env)
        app.state.runtime.settlement_status = lambda: {"settlement": sched.state(), "indexer": {"status": "ok"}}
        shown = TestClient(app).get("/v1/settlement/status").json()
        assert shown["settlement"]["status"] == "retrying" and shown["settlement"]["last_error_batch"] == in_flight
        line = settlement_line(shown["settlement"])
        assert "retrying" in line and in_flight in line and state["last_error_type"] in line

        anvil.rpc("anvil_setBalance", [env.operator.address, hex(10**20)])  # gas is back
        assert _wait(lambda: sched.last_batch is not None and sched.consecutive_failures == 0), sched.state()
        assert sched.last_batch["status"] == "confirmed" and sched.last_batch["batch_id"] == in_flight
        assert sched.state()["status"] == "ok" and sched._thread.is_alive() and uncaught == []
        assert _gauge(metrics.SETTLEMENT_CONSECUTIVE_FAILURES) == 0
        assert env.ledger.get(job_id).status == "settled" and len(posted_batches(env)) == 1
    finally:
        anvil.rpc("anvil_setBalance", [env.operator.address, hex(10**20)])  # the module's chain stays usable
        logger.removeHandler(handler)
        threading.excepthook = old_hook
        sched.stop()


def test_a_chain_that_lost_a_confirmed_batch_is_not_built_upon_and_a_repost_repairs_it(env, anvil):
    w3, c = env.w3, env.c
    wallet = c.sender(anvil.keys[2])
    worker = Web3.to_checksum_address(anvil.addresses[4]).lower()
    c.mint(env.deployer, wallet.address, 100 * TOKENS)
    alice, _ = env.ledger.create_api_key("alice")
    c.deposit(wallet, 50 * TOKENS, onchain.to_bytes32(alice))
    indexer = ChainIndexer(env.ledger, w3, env.manifest)
    indexer.sync()
    run_job(env.ledger, alice, worker=worker)
    assert settler(env).settle_once()["status"] == "confirmed"
    indexer.sync()
    snap = anvil.rpc("evm_snapshot", [])
    run_job(env.ledger, alice, worker=worker)
    b2 = settler(env).settle_once()
    assert b2["status"] == "confirmed"
    anvil.rpc("evm_revert", [snap])  # the block holding batch 2 is lost
    assert not c.distributor.functions.isBatchPosted(from_hex(b2["batch_id"])).call()

    # the start-up check names it
    runtime = SimpleNamespace(web3=w3, indexer=ChainIndexer(env.ledger, w3, env.manifest))
    with pytest.raises(LostBatches, match=b2["batch_id"]):
        check_ledger_matches_chain(runtime)

    # no settler builds on it: not a new one, not one that already checked, not the scheduler
    run_job(env.ledger, alice, worker=worker)
    dist_before, posts_before = c.balance_of(c.distributor.address), len(posted_batches(env))
    with pytest.raises(ChainMismatch) as lost:
        settler(env).settle_once()
    assert [b.batch_id for b in lost.value.lost] == [b2["batch_id"]] and lost.value.lost[0].problem == "not_posted"
    sched = SettlementScheduler(env.ledger, w3, env.manifest, env.operator_key, reader=env.reader, interval=60)
    sched.check_at_start()
    state = sched.state()
    assert state["status"] == "halted" and [b["batch_id"] for b in state["lost_batches"]] == [b2["batch_id"]]
    assert _gauge(metrics.SETTLEMENT_HALTED) == 1
    assert sched.tick() is None and sched.state()["status"] == "halted"
    # named wherever an operator looks: the status API, `basis status`, the explorer, /metrics
    app = app_for(env)
    app.include_router(explorer_router)
    app.state.runtime.settlement_status = lambda: {"settlement": sched.state(), "indexer": {"status": "ok"}}
    http = TestClient(app)
    shown = http.get("/v1/settlement/status").json()["settlement"]
    assert shown["status"] == "halted" and shown["lost_batches"][0]["batch_id"] == b2["batch_id"]
    line = settlement_line(shown)
    assert "halted" in line and b2["batch_id"] in line and "basis settle repost" in line
    page = http.get("/settlement")
    assert page.status_code == 200 and "Settlement stopped" in page.text and f"#{b2['seq']}" in page.text
    assert "basis_settlement_halted 1.0" in generate_latest(metrics.REGISTRY).decode()
    assert settler(env).in_flight() is None  # nothing was even proposed
    assert (c.balance_of(c.distributor.address), len(posted_batches(env))) == (dist_before, posts_before)

    # the operator's tools: `basis settle check` names it, `basis settle repost` sends it again
    env.ledger.close()  # the CLI is another process on the same files
    cli_env = {"BASIS_HOME": str(env.settings.home), "BASIS_RPC_URL": anvil.rpc_url}
    runner = CliRunner()
    out = runner.invoke(cli_app, ["settle"], env=cli_env)
    assert out.exit_code == 1 and b2["batch_id"] in out.output and "repost" in out.output
    out = runner.invoke(cli_app, ["settle", "check"], env=cli_env)
    assert out.exit_code == 1 and json.loads(out.output)["lost_batches"][0]["batch_id"] == b2["batch_id"]
    out = runner.invoke(cli_app, ["settle", "repost"], env=cli_env)
    assert out.exit_code == 0, out.output
    reposted = json.loads(out.output[out.output.index("{"):])["reposted"]
    # (the same signed transaction, when the operator's nonce went back with the chain)
    assert [r["batch_id"] for r in reposted] == [b2["batch_id"]] and reposted[0]["status"] == "confirmed"
    out = runner.invoke(cli_app, ["settle", "check"], env=cli_env)
    assert out.exit_code == 0 and json.loads(out.output)["ok"] is True
    env.reopen()

    assert c.distributor.functions.isBatchPosted(from_hex(b2["batch_id"])).call()
    batch2 = env.ledger.get(batch_aggregate_id(b2["batch_id"]))
    assert batch2.status == "confirmed" and batch2.tx_hash == reposted[0]["tx_hash"]
    sched.settler.ledger = env.ledger
    b3 = sched.tick()  # settlement resumes
    assert b3 is not None and b3["status"] == "confirmed" and sched.state()["status"] == "ok"
    assert _gauge(metrics.SETTLEMENT_HALTED) == 0
    cumulative = dict((w, int(v)) for w, v in env.ledger.get(batch_aggregate_id(b3["batch_id"])).rewards)[worker]
    assert cumulative == c.balance_of(c.distributor.address)  # nothing claimed yet: the distributor holds it all
    indexer = ChainIndexer(env.ledger, w3, env.manifest)
    indexer.sync()
    assert full_audit(env) == []


def test_a_reorg_of_indexed_deposit_blocks_is_named_and_nothing_is_credited_twice(env, anvil):
    c = env.c
    wallet = c.sender(anvil.keys[2])
    c.mint(env.deployer, wallet.address, 100 * TOKENS)
    carol = env.ledger.open_account("carol")
    c.approve(wallet, c.vault.address, 100 * TOKENS)

    # confirmations: a deposit in the last N blocks is not credited yet, so a shallow reorg moves nothing
    deep = ChainIndexer(env.ledger, env.w3, env.manifest, confirmations=2)
    deep.sync()
    snap = anvil.rpc("evm_snapshot", [])
    c.deposit(wallet, 5 * TOKENS, onchain.to_bytes32(carol), approve=False)
    assert sum(p.deposits for p in deep.sync()) == 0
    anvil.rpc("evm_revert", [snap])  # the deposit's block is lost ...
    c.deposit(wallet, 7 * TOKENS, onchain.to_bytes32(carol), approve=False)  # ... and another one is mined
    for _ in range(2):
        anvil.rpc("evm_mine")
    assert sum(p.deposits for p in deep.sync()) == 1
    assert env.ledger.get(carol).deposited == 7 * TOKENS

    # a reorg deeper than the confirmations: blocks already indexed changed; the indexer stops and names it
    fast = ChainIndexer(env.ledger, env.w3, env.manifest)
    fast.sync()
    snap = anvil.rpc("evm_snapshot", [])
    c.deposit(wallet, 3 * TOKENS, onchain.to_bytes32(carol), approve=False)
    assert sum(p.deposits for p in fast.sync()) == 1
    assert env.ledger.get(carol).deposited == 10 * TOKENS
    anvil.rpc("evm_revert", [snap])
    c.deposit(wallet, 3 * TOKENS + 1, onchain.to_bytes32(carol), approve=False)  # the same block height, re-filled
    with pytest.raises(ChainReorg, match="reorganised"):
        fast.run_once()
    assert fast.state()["status"] == "reorg" and "already indexed" in fast.state()["reorg"]
    assert _gauge(metrics.CHAIN_INDEXER_REORG) == 1
    with pytest.raises(ChainReorg):
        ChainIndexer(env.ledger, env.w3, env.manifest).sync()  # a restarted indexer too
    assert env.ledger.get(carol).deposited == 10 * TOKENS  # nothing from the new branch
    runtime = SimpleNamespace(web3=env.w3, indexer=fast)
    with pytest.raises(ChainStateLost, match="reorganised"):
        check_ledger_matches_chain(runtime)
