"""Two gateways sharing one PostgreSQL event store: one account's credit is never overdrawn
across them, and the audit of the shared log passes."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

from basis.domain.pricing import worst_case_charge
from basis.ledger.audit import audit
from tests.gateway.harness import Gateway
from tests.gateway.test_api import CHAT, post

pytestmark = pytest.mark.postgres


def test_two_gateways_on_one_postgres_store(tmp_path, pg_dsn):
    a = Gateway(tmp_path / "a", database_url=pg_dsn)
    b = Gateway(tmp_path / "b", database_url=pg_dsn)
    try:
        a.start_worker(capacity=8)
        b.start_worker(capacity=8)
        terms = a.runtime.pricing.terms_for("basis-default")
        worst = worst_case_charge(len(a.runtime.bindings["basis-default"].apply_chat_template(CHAT)), 8, terms)
        account_id, key = a.account("shared", worst * 12)  # room for 12 of the 40 requests
        assert b.ledger.authenticate(key) == account_id  # one store: a key made on A works on B
        body = {"model": "basis-default", "messages": CHAT, "max_tokens": 8}
        with cf.ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda i: post(a if i % 2 else b, key, body), range(40)))
        ok = [r for r in responses if r.status_code == 200]
        assert {r.status_code for r in responses} <= {200, 402} and 1 <= len(ok) <= 12
        acc = a.ledger.get(account_id)
        assert acc.reserved == 0 and acc.spent == worst * len(ok) <= worst * 12
        for gw in (a, b):
            gw.views_caught_up()
            report = audit(gw.ledger.store, gw.settings.views_path, signer=None)
            assert report.ok, report.problems
            assert report.receipts == len(ok)
    finally:
        a.close()
        b.close()
