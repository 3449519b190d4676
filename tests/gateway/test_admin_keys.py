"""The admin key API on a real gateway (HTTP on loopback, real ledger, a real worker process):
create, list, cap, limit and revoke keys; what a capped, limited or revoked key then gets."""

from __future__ import annotations

import concurrent.futures as cf
from uuid import UUID

import httpx
import pytest

from basis.domain.pricing import worst_case_charge
from basis.ledger.audit import audit
from tests.gateway.harness import Gateway
from tests.gateway.test_api import CHAT, post

BODY = {"model": "basis-default", "messages": CHAT, "max_tokens": 8}


def admin(gw, method, path, admin_key, headers=None, **kw):
    headers = {"Authorization": f"Bearer {admin_key}", **(headers or {})}
    return httpx.request(method, f"{gw.base}/admin/keys{path}", headers=headers, timeout=30, **kw)


def _error(r, status, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


def _worst(gw):
    terms = gw.runtime.pricing.terms_for("basis-default")
    return worst_case_charge(len(gw.runtime.bindings["basis-default"].apply_chat_template(CHAT)), 8, terms)


@pytest.fixture
def served(gateway):
    gateway.start_worker(capacity=8)
    return gateway, gateway.settings.admin_key(create=True)


def test_admin_api_is_off_without_an_admin_key_and_refuses_inference_keys(gateway):
    _, key = gateway.account("alice", 10**18)
    _error(admin(gateway, "GET", "", "anything"), 404, "admin_api_off")
    admin_key = gateway.settings.admin_key(create=True)
    assert admin_key.startswith("basis-admin-") and (gateway.settings.admin_key_path.stat().st_mode & 0o777) == 0o600
    _error(admin(gateway, "GET", "", key), 401, "invalid_admin_key")  # an inference key is not an admin key
    _error(httpx.get(f"{gateway.base}/admin/keys", timeout=30), 401, "missing_admin_key")
    gateway.views_caught_up()  # every account's keys: the accounts come from the projected views
    assert admin(gateway, "GET", "", admin_key).json() == {"object": "list", "data": [
        {**admin(gateway, "GET", f"/{gateway.ledger.authenticate_key(key).key_id}", admin_key).json()}]}


def test_create_list_update_and_revoke_over_http(served):
    gw, admin_key = served
    gw.ledger.grant("bob", 10**18)
    r = admin(gw, "POST", "", admin_key, json={"account": "bob", "name": "ci", "cap": str(10**15),
                                               "requests_per_minute": 100})
    assert r.status_code == 201, r.text
    made = r.json()
    key, key_id = made["key"], made["id"]
    assert made["cap"] == str(10**15) and made["spent"] == "0" and made["requests_per_minute"] == 100
    assert made["account"] == "bob" and made["name"] == "ci" and made["revoked"] is False
    assert post(gw, key, BODY).status_code == 200
    mine = httpx.get(f"{gw.base}/v1/account", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()["key"]
    assert mine["cap"] == str(10**15) and int(mine["spent"]) > 0 and mine["requests_per_minute"] == 100
    assert int(mine["cap_left"]) == 10**15 - int(mine["spent"]) and mine["id"] == key_id
    completion = {"model": "basis-default", "prompt": "hello", "max_tokens": 4}
    assert httpx.post(f"{gw.base}/v1/completions", json=completion, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}).status_code == 200
    listed = admin(gw, "GET", "?account=bob", admin_key).json()["data"]
    assert [k["id"] for k in listed] == [key_id] and "key" not in listed[0]  # shown once, at creation
    assert int(listed[0]["spent"]) > 0 and listed[0]["reserved"] == "0"
    r = admin(gw, "PATCH", f"/{key_id}", admin_key, json={"cap": None, "tokens_per_minute": 10**6})
    assert r.status_code == 200 and r.json()["cap"] is None and r.json()["tokens_per_minute"] == 10**6
    assert r.json()["requests_per_minute"] == 100  # not sent: unchanged
    r = admin(gw, "POST", f"/{key_id}/revoke", admin_key, json={"reason": "leaked"})
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert admin(gw, "DELETE", f"/{key_id}", admin_key).json()["revoked"] is True  # a repeat is harmless
    _error(post(gw, key, BODY), 401, "invalid_api_key")  # at once, on the gateway that revoked
    _error(httpx.post(f"{gw.base}/v1/completions", json=completion, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}), 401, "invalid_api_key")
    _error(httpx.get(f"{gw.base}/v1/account", headers={"Authorization": f"Bearer {key}"}, timeout=30), 401)
    _error(admin(gw, "PATCH", f"/{key_id}", admin_key, json={"cap": "5"}), 409, "api_key_revoked")


def test_bad_admin_input_gets_a_clear_400_and_records_nothing(served):
    gw, admin_key = served
    _, key = gw.account("carol", 10**18)
    key_id = gw.ledger.authenticate_key(key).key_id
    events_before = gw.ledger.store.recorder.max_notification_id()
    for body in ({"account": "carol", "cap": 5}, {"account": "carol", "cap": "-5"}, {"account": "carol", "cap": "1.5"},
                 {"account": "carol", "cap": "007"}, {"account": "carol", "requests_per_minute": 0},
                 {"account": "carol", "tokens_per_minute": "10"}, {"account": "carol", "rpm": 5}, {"account": ""},
                 {"name": "no account"}):
        _error(admin(gw, "POST", "", admin_key, json=body), 400)
    _error(admin(gw, "POST", "", admin_key, content=b"{not json", headers={"content-type": "application/json"}), 400)
    _error(admin(gw, "PATCH", f"/{key_id}", admin_key, json={}), 400, "invalid_value")
    _error(admin(gw, "PATCH", f"/{key_id}", admin_key, json={"cap": 10}), 400)
    _error(admin(gw, "PATCH", "/not-a-uuid", admin_key, json={"cap": "10"}), 400, "invalid_value")
    _error(admin(gw, "GET", "/00000000-0000-0000-0000-000000000000", admin_key), 404, "api_key_not_found")
    assert gw.ledger.store.recorder.max_notification_id() == events_before


def test_a_capped_key_gets_402_naming_its_cap_and_is_never_charged_past_it(served):
    gw, admin_key = served
    worst = _worst(gw)
    gw.ledger.grant("dave", 10**18)
    made = admin(gw, "POST", "", admin_key, json={"account": "dave", "cap": str(worst * 3 + 1)}).json()
    with cf.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: post(gw, made["key"], BODY), range(12)))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert 1 <= len(ok) <= 3 and refused
    for r in refused:
        assert "spend cap" in _error(r, 402, "key_spend_cap_reached")["message"]
    completion = {"model": "basis-default", "prompt": ["one", "two"], "max_tokens": 8}  # the same reservation path
    _error(httpx.post(f"{gw.base}/v1/completions", json=completion, timeout=30,
                      headers={"Authorization": f"Bearer {made['key']}"}), 402, "key_spend_cap_reached")
    spent = int(admin(gw, "GET", f"/{made['id']}", admin_key).json()["spent"])
    assert spent == sum(int(gw.ledger.get(UUID(r.json()["id"].removeprefix("chatcmpl-"))).receipt["core"]["charged"])
                        for r in ok) <= worst * 3 + 1
    acc = gw.ledger.get(gw.ledger.authenticate(made["key"]))
    assert acc.spent == spent and acc.reserved == 0  # refused requests charged nothing
    gw.views_caught_up()
    report = audit(gw.ledger.store, gw.settings.views_path, signer=None)
    assert report.ok, report.problems


def test_request_and_token_rate_limits_per_key(served):
    gw, admin_key = served
    gw.ledger.grant("erin", 10**18)
    by_requests = admin(gw, "POST", "", admin_key, json={"account": "erin", "requests_per_minute": 2}).json()
    codes = [post(gw, by_requests["key"], BODY).status_code for _ in range(3)]
    assert codes[:2] == [200, 200] and codes[2] == 429
    by_tokens = admin(gw, "POST", "", admin_key, json={"account": "erin", "tokens_per_minute": 5}).json()
    assert post(gw, by_tokens["key"], BODY).status_code == 200  # the request that empties the bucket runs
    err = _error(post(gw, by_tokens["key"], BODY), 429, "rate_limit_exceeded")
    assert "tokens" in err["message"]
    assert post(gw, gw.account("erin", 0)[1], BODY).status_code == 200  # another key of the account is not limited


@pytest.mark.postgres
def test_revocation_and_a_cap_hold_across_two_gateways_sharing_postgresql(tmp_path, pg_dsn, monkeypatch):
    admin_key = "basis-admin-shared-by-both-gateways"
    monkeypatch.setenv("BASIS_ADMIN_KEY", admin_key)  # several gateways: one admin secret in their environment
    a = Gateway(tmp_path / "a", database_url=pg_dsn)
    b = Gateway(tmp_path / "b", database_url=pg_dsn)
    try:
        a.start_worker(capacity=8)
        b.start_worker(capacity=8)
        worst = _worst(a)
        a.ledger.grant("shared", 10**18)
        made = admin(a, "POST", "", admin_key, json={"account": "shared", "cap": str(worst * 6)}).json()
        key = made["key"]
        assert post(a, key, BODY).status_code == 200 and post(b, key, BODY).status_code == 200  # both know it
        admin(a, "POST", f"/{made['id']}/revoke", admin_key)
        _error(post(a, key, BODY), 401)
        _error(post(b, key, BODY), 401)  # B still holds the key in its cache: its acceptance refuses it

        capped = admin(a, "POST", "", admin_key, json={"account": "shared", "cap": str(worst * 5)}).json()
        with cf.ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda i: post(a if i % 2 else b, capped["key"], BODY), range(30)))
        ok = [r for r in responses if r.status_code == 200]
        assert {r.status_code for r in responses} <= {200, 402} and 1 <= len(ok) <= 5
        described = admin(b, "GET", f"/{capped['id']}", admin_key).json()
        assert int(described["spent"]) <= worst * 5 and described["reserved"] == "0"
        for gw in (a, b):
            gw.views_caught_up()
            report = audit(gw.ledger.store, gw.settings.views_path, signer=None)
            assert report.ok, report.problems
    finally:
        a.close()
        b.close()
