"""A contributor audits the operator (DESIGN 1.7), end to end: a real gateway and real worker
process on loopback, a real anvil chain with the real contracts, protocol v2 receipts into the
worker's own store, settlement, `basis worker audit` and `basis receipts verify`, and the
dishonesty cases the audit must name."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from typer.testing import CliRunner

from basis.chain.inclusion import GatewayData
from basis.chain.roots import root_history
from basis.cli.main import app as cli_app
from basis.domain.merkle import rewards_tree
from basis.ledger.export import LedgerHeads
from basis.settlement.chain import from_hex, hex32
from basis.worker.audit import audit_worker
from basis.worker.store import read_records
from tests.conftest import require_foundry
from tests.gateway.harness import Gateway
from tests.support.chain_home import deployed_home

pytestmark = pytest.mark.chain
TOKENS = 10**18
DELAY = 600


@pytest.fixture(params=[0], ids=["no-delay"])
def network(request, tmp_path):
    yield from _network(tmp_path, request.param)


@pytest.fixture
def delayed_network(tmp_path):
    yield from _network(tmp_path, DELAY)


def _network(tmp_path, delay):
    require_foundry()
    with deployed_home(tmp_path, root_delay=delay) as (home, anvil, w3):
        gw = Gateway(home, rpc_url=anvil.rpc_url)
        try:
            yield gw, anvil, w3
        finally:
            gw.close()


def serve(gw, key: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        r = httpx.post(f"{gw.base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                       json={"model": "basis-default", "max_tokens": 4,
                             "messages": [{"role": "user", "content": f"hi {uuid.uuid4()}"}]})
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"].removeprefix("chatcmpl-"))
    return ids


def worker_files(gw, n: int = 0):
    address = gw.runtime.hub.workers()[0].address
    key_file = gw.settings.home / f"worker-{n}.key"
    store = gw.settings.home / "worker" / "receipts" / f"{address.lower()}.jsonl"
    return address, key_file, store


def all_acked(gw, address, hashes) -> None:
    gw.until(lambda: not gw.runtime.hub.outbox.pending(address), what="every receipt acknowledged")


def receipt_hashes(gw, job_ids) -> dict[str, str]:
    return {j: httpx.get(f"{gw.base}/v1/receipts/{j}").json()["hash"] for j in job_ids}


def cli_audit(gw, anvil, key_file, *extra):
    out = CliRunner().invoke(cli_app, ["worker", "audit", "--gateway", gw.base, "--rpc", anvil.rpc_url,
                                       "--key-file", str(key_file), "--home", str(gw.settings.home / "worker"),
                                       "--json", *extra])
    return out, (json.loads(out.stdout) if out.stdout.strip().startswith("{") else None)


def test_worker_receives_every_receipt_and_audit_passes_after_settlement(network, tmp_path):
    gw, anvil, _w3 = network
    _, key = gw.account("client", 10**18)
    gw.start_worker(capacity=2)
    address, key_file, store = worker_files(gw)
    jobs = serve(gw, key, 4)
    hashes = receipt_hashes(gw, jobs)
    all_acked(gw, address, hashes)
    gw.views_caught_up()
    stored = {r["hash"] for r in read_records(store) if r["kind"] == "receipt"}
    assert stored == set(hashes.values())  # every receipt, verified and stored by the worker

    # Before settlement: all pending, nothing omitted, nothing wrong.
    out, report = cli_audit(gw, anvil, key_file)
    assert out.exit_code == 0, out.output
    assert {r["status"] for r in report["receipts"]} == {"pending"}

    assert gw.runtime.scheduler.tick()["receipts"] == 4
    gw.views_caught_up()
    evidence = tmp_path / "evidence"
    out, report = cli_audit(gw, anvil, key_file, "--evidence", str(evidence))
    assert out.exit_code == 0, out.output
    assert report["ok"] and {r["status"] for r in report["receipts"]} == {"settled"}
    earned = sum(int(r["reward"]) for r in report["receipts"])
    assert [(r["state"], r["cumulative"], r["expected"]) for r in report["rewards"]] == [
        ("accepted", str(earned), str(earned))]
    assert {p.name for p in evidence.iterdir()} == {"receipts.jsonl", "verdicts.jsonl", "report.json", "README.txt"}
    assert len((evidence / "receipts.jsonl").read_text().splitlines()) == 4

    # `basis receipts verify`: anyone, from API responses, against the chain.
    api = tmp_path / "api.jsonl"
    api.write_text("".join(json.dumps(httpx.get(f"{gw.base}/v1/receipts/{j}").json()) + "\n" for j in jobs))
    out = CliRunner().invoke(cli_app, ["receipts", "verify", str(api), "--rpc", anvil.rpc_url, "--gateway",
                                       gw.base, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["settled"] == 4
    lines = api.read_text().splitlines()
    bad = json.loads(lines[1])
    bad["core"]["output_tokens"] += 1  # tampered: hash and arithmetic no longer hold
    forged = json.loads(lines[2])
    forged["settlement"]["batch_id"] = "0x" + "77" * 32  # claims a batch that was never posted
    api.write_text("\n".join([lines[0], json.dumps(bad), json.dumps(forged), "not json"]) + "\n")
    out = CliRunner().invoke(cli_app, ["receipts", "verify", str(api), "--rpc", anvil.rpc_url, "--gateway", gw.base])
    assert out.exit_code == 1
    assert "line 2" in out.output and "not the hash of its core" in out.output
    assert "line 3" in out.output and "never posted on chain" in out.output
    assert "line 4: not a receipt" in out.output


def test_sigkill_after_receipts_loses_nothing_acknowledged(network):
    gw, _anvil, _w3 = network
    _, key = gw.account("client", 10**18)
    gw.start_worker(capacity=1)
    address, _key_file, store = worker_files(gw)
    jobs = serve(gw, key, 3)
    hashes = receipt_hashes(gw, jobs)
    all_acked(gw, address, hashes)
    gw.kill_workers()  # SIGKILL between a receipt and the next job
    stored = {r["hash"] for r in read_records(store) if r["kind"] == "receipt"}
    assert stored == set(hashes.values())
    assert store.read_bytes().endswith(b"\n")  # whole records only


def test_audit_names_a_receipt_the_gateway_drops_from_its_batches(network):
    gw, anvil, _w3 = network
    _, key = gw.account("client", 10**18)
    gw.start_worker(capacity=1)
    address, key_file, _store = worker_files(gw)
    dropped = serve(gw, key, 2)[0]
    all_acked(gw, address, None)
    gw.views_caught_up()
    settler = gw.runtime.scheduler.settler
    honest_reader = settler.reader

    class Dishonest:  # the operator's settlement leaves one receipt out of every batch
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def unsettled_receipts(self, *a, **kw):
            return [r for r in self.inner.unsettled_receipts(*a, **kw) if r["job_id"] != dropped]

    settler.reader = lambda: Dishonest(honest_reader())
    assert gw.runtime.scheduler.tick()["receipts"] == 1
    serve(gw, key, 1)
    gw.views_caught_up()
    assert gw.runtime.scheduler.tick()["receipts"] == 1
    gw.views_caught_up()
    all_acked(gw, address, None)
    out, report = cli_audit(gw, anvil, key_file)
    assert out.exit_code == 1
    dropped_hash = receipt_hashes(gw, [dropped])[dropped]
    assert [r["status"] for r in report["receipts"] if r["hash"] == dropped_hash] == ["omitted"]
    assert f"DISCREPANCY: receipt {dropped_hash} (job {dropped}): omitted" in out.output
    # The root is still right for what was settled: only the omission is named.
    assert len(report["discrepancies"]) == 1


class ForfeitingGateway(GatewayData):
    """The gateway's published data, with one receipt marked forfeited and no verdict published
    (a test double for the verification branch's envelope, which this branch does not have)."""

    def __init__(self, base, job_id):
        super().__init__(base)
        self.job_id = job_id

    def receipt(self, job_id):
        env = super().receipt(job_id)
        if env is not None and job_id == self.job_id:
            env = {**env, "reward_forfeited": True, "verification": None}
        return env


class ShortRootGateway(GatewayData):
    """The gateway's data plus its proof for a root the operator key posted outside the ledger."""

    def __init__(self, base, batch_id, tree, worker, cumulative):
        super().__init__(base)
        self.extra = (batch_id, tree, worker, cumulative)

    def reward_proof(self, worker, batch_id=None):
        bid, tree, w, cumulative = self.extra
        if batch_id == bid and worker.lower() == w:
            return {"cumulative": str(cumulative), "proof": tree.proof_hex((w, cumulative)),
                    "rewards_root": tree.root_hex}
        return super().reward_proof(worker, batch_id)


def test_audit_names_a_forfeit_without_a_published_failed_verdict(network):
    gw, _anvil, w3 = network
    _, key = gw.account("client", 10**18)
    gw.start_worker(capacity=1)
    address, _key_file, store = worker_files(gw)
    jobs = serve(gw, key, 2)
    all_acked(gw, address, None)
    gw.views_caught_up()
    gw.runtime.scheduler.tick()
    gw.views_caught_up()
    data = ForfeitingGateway(gw.base, jobs[0])
    result = audit_worker(read_records(store), address, data, w3)
    h = receipt_hashes(gw, [jobs[0]])[jobs[0]]
    assert any(d.startswith(f"receipt {h}") and "forfeited without a published failed verdict" in d
               for d in result.discrepancies), result.discrepancies


def test_short_rewards_root_is_named_revoked_during_the_delay_then_the_claim_pays_right(delayed_network, tmp_path):
    gw, anvil, w3 = delayed_network
    c = gw.runtime.scheduler.settler.contracts
    _, key = gw.account("client", 10**18)
    gw.start_worker(capacity=1)
    address, key_file, store = worker_files(gw)
    worker = address.lower()
    anvil.rpc("anvil_setBalance", [address, hex(10**20)])
    serve(gw, key, 2)
    all_acked(gw, address, None)
    gw.views_caught_up()
    first = gw.runtime.scheduler.tick()
    anvil.rpc("evm_increaseTime", [DELAY])
    anvil.rpc("evm_mine")
    gw.runtime.scheduler.tick()  # accepts the due root
    assert hex32(c.accepted_batch()) == first["batch_id"]
    gw.views_caught_up()
    out, report = cli_audit(gw, anvil, key_file)
    assert out.exit_code == 0, out.output
    earned = int(report["rewards"][0]["cumulative"])

    # The operator key posts a root that shorts the worker; it is pending for the delay.
    short = rewards_tree([(worker, earned - 1)])
    bad_id = "0x" + "5a" * 32
    anchor = LedgerHeads(gw.runtime.ledger.store).latest()  # the vault wants an anchor: a real head
    c.settle(c.sender(anvil.keys[1]), batch_id=from_hex(bad_id), to_distributor=0, to_treasury=0, reward_top_up=0,
             rewards_root=short.root, receipts_root=b"\x01" * 32,
             ledger_position=anchor.position, ledger_head=from_hex(anchor.head_hex))
    data = ShortRootGateway(gw.base, bad_id, short, worker, earned - 1)
    result = audit_worker(read_records(store), address, data, w3)
    assert any(f"pending rewards root of batch {bad_id} shorts this worker" in d and "short by 1" in d
               for d in result.discrepancies), result.discrepancies
    # Against the real gateway too: it cannot prove any leaf in that root.
    out, _ = cli_audit(gw, anvil, key_file)
    assert out.exit_code == 1 and f"pending rewards root of batch {bad_id}" in out.output

    # The owner revokes it during the delay; the next honest batch pays exactly what is owed.
    owner_key = tmp_path / "owner.key"
    owner_key.write_text(anvil.keys[0])
    out = CliRunner().invoke(cli_app, ["contracts", "revoke-root", bad_id, "--rpc", anvil.rpc_url, "--key-file",
                                       str(owner_key), "--manifest", str(gw.settings.home / "deployment.json")])
    assert out.exit_code == 0, out.output
    serve(gw, key, 1)
    all_acked(gw, address, None)
    gw.views_caught_up()
    gw.runtime.scheduler.tick()
    anvil.rpc("evm_increaseTime", [DELAY])
    anvil.rpc("evm_mine")
    gw.runtime.scheduler.tick()
    gw.views_caught_up()
    assert {r.batch_id: r.status for r in root_history(c)}[bad_id] == "revoked"
    out, report = cli_audit(gw, anvil, key_file)
    assert out.exit_code == 0, out.output
    total = int(report["rewards"][0]["cumulative"])
    assert total == sum(int(r["reward"]) for r in report["receipts"]) > earned
    claim = CliRunner().invoke(cli_app, ["worker", "claim", "--gateway", gw.base, "--key-file", str(key_file),
                                         "--rpc", anvil.rpc_url])
    assert claim.exit_code == 0, claim.output
    assert c.balance_of(address) == total
