"""The rewards-root delay on a real anvil: a posted root is pending, accepted only after the
deployment's delay, revocable by the owner meanwhile; claims use the accepted root only."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner
from web3 import Web3

from basis.chain.contracts import ChainRevert
from basis.chain.deploy import deploy
from basis.chain.roots import root_history
from basis.cli.main import app as cli_app
from basis.domain.merkle import rewards_tree
from basis.ledger.audit import AuditReport
from basis.ledger.export import LedgerHeads
from basis.settlement.audit import audit_chain
from basis.settlement.batches import Settler
from basis.settlement.chain import Chain, from_hex, hex32
from basis.settlement.deposits import ChainIndexer
from basis.settlement.roots import RootAcceptor
from tests.settlement.conftest import TOKENS, Env
from tests.settlement.helpers import Server, app_for, run_job

pytestmark = pytest.mark.chain
DELAY = 600


class DelayedEnv(Env):
    def __init__(self, anvil, w3, settings):
        super().__init__(anvil, w3, settings)
        # Redeploy with a delay (the base fixture deploys without one).
        self.deployment = deploy(w3, anvil.keys[0], operator=Web3.to_checksum_address(anvil.addresses[1]),
                                 manifest_path=self.manifest_path, mint_to_deployer=1_000_000 * TOKENS,
                                 root_delay=DELAY)
        self.manifest = self.deployment.manifest
        self.chain = Chain(w3, self.manifest)
        self.c = self.chain.contracts


@pytest.fixture
def denv(anvil, w3, settings):
    e = DelayedEnv(anvil, w3, settings)
    yield e
    e.close()


def chain_problems(env) -> list[str]:
    env.catch_up()
    report = AuditReport()
    audit_chain(env.settings, report, w3=env.w3, manifest=env.manifest)
    return report.problems


def claim_cli(env, anvil, key_file) -> object:
    with Server(app_for(env)) as server:
        return CliRunner().invoke(cli_app, ["worker", "claim", "--gateway", server.url, "--key-file", str(key_file),
                                            "--rpc", anvil.rpc_url])


def test_pending_root_then_accepted_after_delay_and_short_root_revoked(denv, anvil):
    env, c = denv, denv.c
    assert env.manifest["root_delay"] == DELAY and c.root_delay() == DELAY
    worker = Web3.to_checksum_address(anvil.addresses[4]).lower()
    key_file = env.settings.home / "worker.key"
    key_file.write_text(anvil.keys[4] + "\n")
    env.ledger.grant("bob", 10**18)
    bob = env.ledger.open_account("bob")
    _, r1 = run_job(env.ledger, bob, worker=worker)
    settler = Settler(env.ledger, env.chain, env.operator_key, reader=env.reader)
    first = settler.settle_once()
    bid1 = first["batch_id"]

    # Pending: receipts root at once (evidence), rewards root not claimable, nothing to prove against.
    assert hex32(c.receipts_root_of(from_hex(bid1))) == first["receipts_root"]
    assert c.rewards_root() == b"\0" * 32
    assert [(r.batch_id, r.status) for r in root_history(c)] == [(bid1, "pending")]
    client = TestClient(app_for(env))
    assert client.get(f"/v1/settlement/proofs/{worker}").status_code == 404
    out = claim_cli(env, anvil, key_file)
    assert out.exit_code == 1 and "no settled rewards" in out.output
    assert chain_problems(env) == []

    acceptor = RootAcceptor(env.chain, env.operator)
    assert acceptor.tick() is None  # inside the delay
    with pytest.raises(ChainRevert) as exc:
        c.accept_root(env.operator, from_hex(bid1))
    assert exc.value.name == "RootNotYetValid"
    anvil.rpc("evm_increaseTime", [DELAY])
    anvil.rpc("evm_mine")
    assert acceptor.tick()["batch_id"] == bid1
    assert hex32(c.accepted_batch()) == bid1 and hex32(c.rewards_root()) == first["rewards_root"]
    out = claim_cli(env, anvil, key_file)
    assert out.exit_code == 0, out.output
    assert c.balance_of(worker) == int(r1["core"]["reward"])

    # The operator key posts a root that shorts the worker (outside the ledger): the owner revokes it.
    _, r2 = run_job(env.ledger, bob, worker=worker, output_tokens=30)
    earned = int(r1["core"]["reward"]) + int(r2["core"]["reward"])
    short_root = rewards_tree([(worker, earned - 1)]).root_hex
    bad_id = b"\x42" * 32
    anchor = LedgerHeads(env.ledger.store).latest()  # the vault wants an anchor; a real head keeps the audit's
    c.settle(env.operator, batch_id=bad_id, to_distributor=0, to_treasury=0, reward_top_up=0,
             rewards_root=from_hex(short_root), receipts_root=b"\x01" * 32,
             ledger_position=anchor.position, ledger_head=from_hex(anchor.head_hex))
    problems = chain_problems(env)
    # named as a root of no batch of this ledger (posted after its latest confirmed batch: "never proposed")
    assert any(hex32(bad_id) in p and ("no such confirmed batch" in p or "never proposed" in p) for p in problems), \
        problems
    out = CliRunner().invoke(cli_app, ["contracts", "revoke-root", hex32(bad_id), "--rpc", anvil.rpc_url,
                                       "--key-file", str(_owner_key(env, anvil)), "--manifest", str(env.manifest_path)])
    assert out.exit_code == 0, out.output
    anvil.rpc("evm_increaseTime", [DELAY])
    anvil.rpc("evm_mine")
    assert acceptor.tick() is None  # revoked: never accepted
    assert hex32(c.accepted_batch()) == bid1

    # The next honest batch (cumulative) pays the right amount once accepted.
    second = settler.settle_once()
    anvil.rpc("evm_increaseTime", [DELAY])
    anvil.rpc("evm_mine")
    assert acceptor.tick()["batch_id"] == second["batch_id"]
    out = claim_cli(env, anvil, key_file)
    assert out.exit_code == 0, out.output
    assert int(json.loads(out.output.strip().splitlines()[-1])["amount"]) == int(r2["core"]["reward"])
    assert c.balance_of(worker) == earned
    statuses = {r.batch_id: r.status for r in root_history(c)}
    assert statuses == {bid1: "superseded", hex32(bad_id): "revoked", second["batch_id"]: "accepted"}
    # The explorer's settlement page reads the same states from the chain.
    from types import SimpleNamespace

    from basis.explorer.router import _root_states

    delay, shown = _root_states(SimpleNamespace(web3=env.w3, deployment=env.manifest))
    assert delay == DELAY and {b: r.status for b, r in shown.items()} == statuses
    from tests.explorer.runtime import StandInRuntime, build_app

    env.catch_up()
    stand_in = StandInRuntime(env.ledger, env.settings.views_path)
    stand_in.web3, stand_in.deployment = env.w3, env.manifest
    try:
        page = TestClient(build_app(stand_in)).get("/settlement")
    finally:
        stand_in.close()
    assert page.status_code == 200
    assert f"pending</strong> for {DELAY} seconds" in page.text and "Root state" in page.text
    assert page.text.count('class="root-state">accepted') == 1
    assert page.text.count('class="root-state">superseded') == 1
    # The foreign post stays named (the operator key settled outside the ledger); nothing else.
    ChainIndexer(env.ledger, env.w3, env.manifest).sync()
    problems = chain_problems(env)
    assert len(problems) == 1 and hex32(bad_id) in problems[0], problems


def _owner_key(env, anvil):
    p = env.settings.home / "owner.key"
    p.write_text(anvil.keys[0] + "\n")
    return p


def test_cli_deploy_takes_a_root_delay(tmp_path, anvil):
    key = tmp_path / "k"
    key.write_text(anvil.keys[0])
    manifest = tmp_path / "m.json"
    out = CliRunner().invoke(cli_app, ["contracts", "deploy", "--rpc", anvil.rpc_url, "--key-file", str(key),
                                       "--manifest", str(manifest), "--root-delay", "30"])
    assert out.exit_code == 0, out.output
    m = json.loads(manifest.read_text())
    assert m["root_delay"] == 30
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    assert Chain(w3, m).contracts.root_delay() == 30
    out = CliRunner().invoke(cli_app, ["contracts", "deploy", "--rpc", anvil.rpc_url, "--key-file", str(key),
                                       "--manifest", str(manifest), "--root-delay", str(31 * 86400)])
    assert out.exit_code == 1 and "root delay" in out.output
