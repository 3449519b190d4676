"""Two real ``basis serve`` processes (each with its ledger writer process) on one PostgreSQL, one
hot account funded for 60½ requests, 32 requests in flight across them for 3 s: exactly 60
served, every other request a 402, no 5xx, nothing overdrawn (issue #15 item 1, as the issue's
own reproduction ran it). Started by scripts/bench_cluster.py's own ``Cluster``."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import pytest
import uvloop

from basis.chain.anvil import free_port
from basis.domain.pricing import worst_case_charge
from basis.models import load_bindings
from tests.gateway.harness import REPO

pytestmark = pytest.mark.postgres


def _bench():
    spec = importlib.util.spec_from_file_location("bench_cluster", REPO / "scripts" / "bench_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_cluster", module)
    spec.loader.exec_module(module)
    return module


def test_two_serve_processes_on_one_hot_account_refuse_exactly(tmp_path, pg_dsn):
    bench = _bench()
    cluster = bench.Cluster(SimpleNamespace(dsn=pg_dsn), 2, free_port(), capacity=16, root=tmp_path)
    try:
        pricing = cluster.ledger.pricing
        binding = load_bindings(list(pricing.models.values()))["basis-default"]
        worst = worst_case_charge(len(binding.apply_chat_template(bench.MESSAGES)), bench.MAX_TOKENS,
                                  pricing.terms_for("basis-default"))
        _, ample = cluster.account("warm", 10**27)
        account_id, key = cluster.account("hot", worst * 60 + worst // 2)
        bases = [f"http://127.0.0.1:{p}" for p in cluster.ports]
        row = uvloop.run(bench.load(bases, [key], 32, 3.0, warm_keys=[ample]))
        assert row["5xx"] == 0 and not row["other"], row
        assert row["served"] == 60 and row["refused"] > 0, row
        acc = cluster.ledger.get(account_id)
        assert acc.reserved == 0 and acc.spent == worst * 60 and acc.available == worst // 2
    finally:
        cluster.close()
