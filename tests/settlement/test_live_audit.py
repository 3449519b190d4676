"""``basis audit --chain`` on a live system (issue #15 item 4): while a gateway serves load, the
vault takes deposits and batches settle on chain, the audit checks one snapshot (one log
position, the blocks it had indexed) and passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import httpx
import pytest

from basis.domain.account_id import to_bytes32
from tests.conftest import require_foundry
from tests.gateway.harness import REPO, Gateway
from tests.gateway.test_api import CHAT
from tests.support.chain_home import deployed_home

pytestmark = pytest.mark.chain
TOKENS = 10**18


def test_audit_chain_passes_while_load_deposits_and_settlement_run(tmp_path):
    require_foundry()
    with deployed_home(tmp_path) as (home, anvil, _w3):
        gw = Gateway(home, rpc_url=anvil.rpc_url)
        try:
            runtime = gw.runtime
            c = runtime.scheduler.settler.chain.contracts
            deployer, depositor = c.sender(anvil.keys[0]), c.sender(anvil.keys[2])
            c.mint(deployer, depositor.address, 1000 * TOKENS)
            account_id, key = gw.ledger.create_api_key("live")
            c.deposit(depositor, 10 * TOKENS, to_bytes32(account_id))
            runtime.indexer.sync()
            gw.start_worker(capacity=8)
            stop = threading.Event()
            served, failures, batches = [0], [], []

            def load() -> None:
                body = {"model": "basis-default", "messages": CHAT, "max_tokens": 8}
                while not stop.is_set():
                    r = httpx.post(f"{gw.base}/v1/chat/completions", json=body,
                                   headers={"Authorization": f"Bearer {key}"}, timeout=60)
                    if r.status_code == 200:
                        served[0] += 1
                    else:
                        failures.append(r.text[:200])

            def chain_work() -> None:  # deposits indexed and batches settled while the audit runs
                while not stop.is_set():
                    try:
                        c.deposit(depositor, TOKENS, to_bytes32(account_id))
                        runtime.indexer.sync()
                        batch = runtime.scheduler.tick()
                        if batch is not None:
                            batches.append(batch)
                    except Exception as exc:
                        failures.append(f"chain work: {exc!r}")
                    stop.wait(0.2)

            threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
            threads.append(threading.Thread(target=chain_work, daemon=True))
            for t in threads:
                t.start()
            reports = []
            try:
                gw.until(lambda: served[0] >= 5 and batches, what="load served and a batch settled", timeout=120)
                env = {**os.environ, "BASIS_HOME": str(home), "BASIS_RPC_URL": anvil.rpc_url,
                       "PYTHONPATH": str(REPO / "src")}
                for _ in range(2):
                    before = (served[0], len(batches))
                    out = subprocess.run([sys.executable, "-m", "basis.cli.main", "audit", "--chain", "--json"],
                                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
                    assert out.stdout, out.stderr[-2000:]
                    reports.append((json.loads(out.stdout), out.returncode))
                    assert served[0] > before[0], "the load stopped while the audit ran"
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=60)
            assert not failures, failures[:3]
            for report, rc in reports:
                assert rc == 0 and report["ok"], report["problems"]
                assert report["receipts"] > 0
        finally:
            gw.close()
