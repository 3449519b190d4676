"""One hot account served by two gateways on one PostgreSQL (issue #15 items 1 and 4).

Both gateways reserve against the same account at full concurrency, well past its credit: no
overdraft, no 500, and every 402 exact at the boundary (a request is refused only when the
account, across both gateways, cannot cover it). And ``basis audit`` passes on the live system
while that load runs."""

from __future__ import annotations

import concurrent.futures as cf
import re
import threading
import time

import httpx
import pytest

from basis.domain.pricing import worst_case_charge
from basis.ledger.audit import audit
from tests.gateway.harness import Gateway
from tests.gateway.test_api import CHAT

pytestmark = pytest.mark.postgres
BODY = {"model": "basis-default", "messages": CHAT, "max_tokens": 8}


def _post(gw: Gateway, key: str) -> httpx.Response:
    return httpx.post(f"{gw.base}/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"},
                      timeout=120)


@pytest.fixture
def two_gateways(tmp_path, pg_dsn, monkeypatch):
    monkeypatch.setenv("BASIS_NODE_ID", "gateway-a")  # each gateway its own node (its own recovery)
    a = Gateway(tmp_path / "a", database_url=pg_dsn)
    monkeypatch.setenv("BASIS_NODE_ID", "gateway-b")
    b = Gateway(tmp_path / "b", database_url=pg_dsn)
    try:
        assert (a.settings.node_id, b.settings.node_id) == ("gateway-a", "gateway-b")
        a.start_worker(capacity=16)
        b.start_worker(capacity=16)
        yield a, b
    finally:
        a.close()
        b.close()


def _worst(gw: Gateway) -> int:
    terms = gw.runtime.pricing.terms_for("basis-default")
    return worst_case_charge(len(gw.runtime.bindings["basis-default"].apply_chat_template(CHAT)), 8, terms)


def test_hot_account_on_two_gateways_refuses_exactly_and_never_overdraws(two_gateways):
    a, b = two_gateways
    worst = _worst(a)
    served_at_most = 40
    account_id, key = a.account("hot", worst * served_at_most + worst // 2)  # half a request short of 41
    with cf.ThreadPoolExecutor(32) as pool:  # 16 in flight on each gateway
        responses = list(pool.map(lambda i: _post(a if i % 2 else b, key), range(120)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 402}, [r.text for r in responses if r.status_code not in (200, 402)][:3]
    served = [r for r in responses if r.status_code == 200]
    # Each job spends its whole reservation (the instant engine writes max_tokens), so a refusal
    # is exact only if the account had served everything it could: exactly 40, not one fewer.
    assert len(served) == served_at_most
    assert {r.json()["usage"]["completion_tokens"] for r in served} == {8}
    for r in responses:
        if r.status_code == 402:
            available = int(re.search(r"the account has (\d+) available", r.json()["error"]["message"]).group(1))
            assert available < worst, r.text  # refused only when the whole account could not cover it
    acc = a.ledger.get(account_id)
    assert acc.reserved == 0 and acc.spent == worst * served_at_most and acc.available == worst // 2
    served_by_side = [sum(1 for i, r in enumerate(responses) if i % 2 == side and r.status_code == 200)
                      for side in (0, 1)]
    assert min(served_by_side) > 0, served_by_side  # both gateways served the one account
    for gw in (a, b):
        gw.views_caught_up()
        report = audit(gw.ledger.store, gw.settings.views_path, signer=None)
        assert report.ok, report.problems
        assert report.receipts == served_at_most


def test_audit_passes_while_load_runs(two_gateways):
    a, b = two_gateways
    _, key = a.account("busy", 10**24)
    stop = threading.Event()
    counts = {"ok": 0, "other": []}

    def load(gw: Gateway) -> None:
        while not stop.is_set():
            r = _post(gw, key)
            if r.status_code == 200:
                counts["ok"] += 1
            else:
                counts["other"].append((r.status_code, r.text[:200]))

    threads = [threading.Thread(target=load, args=(gw,), daemon=True) for gw in (a, b) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        reports = []
        a.until(lambda: counts["ok"] >= 5, what="the load to be served", timeout=60)
        before = counts["ok"]
        for _ in range(3):
            reports.append(audit(a.ledger.store, a.settings.views_path, signer=None))
            time.sleep(0.3)
        assert counts["ok"] > before, "the load stopped while the audits ran"
        # The log went on past each audited snapshot: the gateways wrote while it was audited.
        assert a.ledger.store.recorder.max_notification_id() > max(r.position for r in reports)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not counts["other"], counts["other"][:3]
    for report in reports:
        assert report.ok, report.problems
        assert report.receipts > 0
