"""GET /v1/account, /v1/account/receipts, /v1/account/usage on a live gateway + instant worker:
balances by credit source and key info, one's own receipts paged, usage by day and model."""

from __future__ import annotations

import datetime as dt
import re

import httpx
import pytest

from basis.ledger.audit import audit
from tests.gateway.harness import Gateway
from tests.gateway.test_api import assert_error

DECIMAL = re.compile(r"^(0|[1-9][0-9]*)$")
CHAT = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    g = Gateway(tmp_path_factory.mktemp("account") / "home")
    g.start_worker(models=("basis-default", "basis-small"))
    yield g
    g.close()


def get(gw, key, path, **params):
    return httpx.get(f"{gw.base}{path}", params=params, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def chat(gw, key, model="basis-default", max_tokens=3):
    r = httpx.post(f"{gw.base}/v1/chat/completions", json={"model": model, "messages": CHAT, "max_tokens": max_tokens},
                   headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_account_shows_balance_by_source_and_key_info(gw):
    account_id, key = gw.account("acct-balance", 10**21)
    gw.ledger.grant("acct-balance", 5 * 10**20)
    chat(gw, key)
    r = httpx.post(f"{gw.base}/v1/completions", json={"model": "basis-small", "prompt": ["a", "b"], "max_tokens": 2},
                   headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert r.status_code == 200
    _, second_key = gw.ledger.create_api_key("acct-balance")
    gw.views_caught_up()
    body = get(gw, key, "/v1/account").json()
    acc = gw.ledger.get(account_id)
    assert body["object"] == "account" and body["id"] == str(account_id) and body["name"] == "acct-balance"
    bal = body["balance"]
    assert bal["available"] == str(acc.available) and bal["spent"] == str(acc.spent) and bal["reserved"] == "0"
    assert bal["credited"] == str(15 * 10**20) and bal["withdrawn"] == "0" and acc.spent > 0
    assert bal["by_source"] == {"grant": {"credited": str(15 * 10**20), "spent": str(acc.spent)},
                                "deposit": {"credited": "0", "spent": "0", "withdrawn": "0"}}
    for amount in [*(v for k, v in bal.items() if k != "by_source"),
                   *(v for src in bal["by_source"].values() for v in src.values())]:
        assert DECIMAL.match(amount), amount
    assert body["jobs"] == 3 and body["receipts"] == 3
    assert key.startswith(body["key"]["prefix"]) and len(body["key"]["prefix"]) < len(key) // 2
    assert abs(body["key"]["created"] - dt.datetime.now(dt.UTC).timestamp()) < 600
    assert len(body["keys"]) == 2 and all(k not in str(body) for k in (key, second_key))
    other = get(gw, second_key, "/v1/account").json()
    assert second_key.startswith(other["key"]["prefix"]) and other["balance"] == bal


def test_a_new_account_reads_before_its_views_catch_up(gw):
    _, key = gw.account("acct-fresh", 0)
    r = get(gw, key, "/v1/account")
    assert r.status_code == 200 and r.json()["balance"]["available"] == "0"


def test_summary_reads_the_aggregate_before_the_views_have_the_account(settings, tmp_path):
    from basis.gateway.account.service import account_summary
    from basis.ledger import ids
    from basis.ledger.projections import ViewReader
    from basis.ledger.service import Ledger

    ledger = Ledger(settings)
    try:
        account_id, key = ledger.create_api_key("unprojected")
        ledger.grant("unprojected", 123)
        empty = ViewReader(tmp_path / "empty-views.sqlite3")
        body = account_summary(empty, ledger, str(account_id), ids.hash_api_key(key), key[:13])
        empty.close()
    finally:
        ledger.close()
    assert body["balance"]["available"] == "123" and body["balance"]["credited"] == "123"
    assert body["balance"]["by_source"]["grant"] == {"credited": "123", "spent": "0"}
    assert body["key"] == {"prefix": key[:13], "created": None} and body["name"] == "unprojected"


def test_receipts_are_your_own_paged_newest_first(gw):
    _, key = gw.account("acct-pages", 10**21)
    _, stranger = gw.account("acct-stranger", 10**21)
    mine = [chat(gw, key)["id"].removeprefix("chatcmpl-") for _ in range(5)]
    chat(gw, stranger)
    gw.views_caught_up()
    seen, before = [], None
    while True:
        params = {"limit": 2, **({"before": before} if before else {})}
        page = get(gw, key, "/v1/account/receipts", **params).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        seen += [r["job_id"] for r in page["data"]]
        if not page["has_more"]:
            assert page["next_before"] is None
            break
        before = page["next_before"]
    assert seen == mine[::-1]
    full = get(gw, key, "/v1/account/receipts").json()["data"]
    assert [r["job_id"] for r in full] == seen and all(r["status"] == "issued" for r in full)
    assert full[0]["core"]["job_id"] == full[0]["job_id"] and full[0]["hash"].startswith("0x")
    assert get(gw, key, "/v1/account/receipts", status="settled").json()["data"] == []
    assert [r["job_id"] for r in get(gw, stranger, "/v1/account/receipts").json()["data"]] not in ([], seen)


def test_usage_by_day_and_model(gw):
    _, key = gw.account("acct-usage", 10**21)
    receipts = [chat(gw, key, "basis-default"), chat(gw, key, "basis-default", 4), chat(gw, key, "basis-small")]
    gw.views_caught_up()
    today = dt.datetime.now(dt.UTC).date()
    body = get(gw, key, "/v1/account/usage").json()
    assert body["object"] == "usage" and body["end"] == today.isoformat()
    assert body["start"] == (today - dt.timedelta(days=29)).isoformat()
    cores = {r["id"]: get(gw, key, f"/v1/receipts/{r['id'].removeprefix('chatcmpl-')}").json()["core"]
             for r in receipts}
    default = [c for c in cores.values() if c["model"] == "basis-default"]
    assert body["data"] == [
        {"day": today.isoformat(), "model": "basis-default", "requests": 2,
         "prompt_tokens": sum(c["prompt_tokens"] for c in default),
         "output_tokens": sum(c["output_tokens"] for c in default),
         "total_tokens": sum(c["prompt_tokens"] + c["output_tokens"] for c in default),
         "charged": str(sum(int(c["charged"]) for c in default))},
        {"day": today.isoformat(), "model": "basis-small", "requests": 1, **{
            k: v for k, v in body["by_model"][1].items() if k not in ("model", "requests")}},
    ]
    assert body["totals"]["charged"] == str(sum(int(c["charged"]) for c in cores.values()))
    assert body["totals"]["requests"] == 3 and [m["model"] for m in body["by_model"]] == ["basis-default",
                                                                                            "basis-small"]
    assert body["by_model"][1]["output_tokens"] == 3
    one_day = get(gw, key, "/v1/account/usage", start=today.isoformat(), end=today.isoformat()).json()
    assert one_day["totals"] == body["totals"]
    past = get(gw, key, "/v1/account/usage", start="2020-01-01", end="2020-12-31").json()
    assert past["data"] == [] and past["totals"]["charged"] == "0"


def test_views_of_accounts_replay_byte_for_byte(gw):
    gw.views_caught_up()
    report = audit(gw.ledger.store, gw.settings.views_path)
    assert report.ok, report.problems


def test_bad_input_gets_openai_errors(gw):
    _, key = gw.account("acct-bad", 10**21)
    for params, param in [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"limit": "ten"}, "limit"),
                          ({"limit": "9" * 5000}, "limit"), ({"before": -1}, "before"), ({"before": "1.5"}, "before"),
                          ({"status": "paid"}, "status")]:
        err = assert_error(get(gw, key, "/v1/account/receipts", **params), 400, "invalid_value")
        assert err["param"] == param
    for params, param in [({"start": "2026-13-01"}, "start"), ({"end": "2026-02-30"}, "end"),
                          ({"start": "yesterday"}, "start"), ({"start": "2026-1-1"}, "start"),
                          ({"start": "20261201"}, "start"), ({"start": "2026-12-02", "end": "2026-12-01"}, "start"),
                          ({"start": "2000-01-01", "end": "2026-12-01"}, "start")]:
        err = assert_error(get(gw, key, "/v1/account/usage", **params), 400, "invalid_value")
        assert err["param"] == param
    for path in ("/v1/account", "/v1/account/receipts", "/v1/account/usage"):
        assert_error(httpx.get(gw.base + path), 401, "missing_api_key")
        assert_error(get(gw, "sk-basis-wrong", path), 401, "invalid_api_key")
