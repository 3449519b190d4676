"""HTTP API contract on a live gateway + instant worker: errors, idempotency, reservations, status."""

from __future__ import annotations

import concurrent.futures as cf
import json

import httpx
import pytest

from basis.domain.pricing import worst_case_charge

CHAT = [{"role": "user", "content": "hello"}]


def post(gw, key, body, headers=None, raw=None):
    h = {"Authorization": f"Bearer {key}"} if key else {}
    h.update(headers or {})
    if raw is not None:
        h["content-type"] = "application/json"
        return httpx.post(f"{gw.base}/v1/chat/completions", content=raw, headers=h, timeout=60)
    return httpx.post(f"{gw.base}/v1/chat/completions", json=body, headers=h, timeout=60)


def assert_error(resp, status, code=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code
    return err


def spent(gw, account_id) -> int:
    return gw.ledger.get(account_id).spent


def test_bad_input_gets_openai_errors_and_charges_nothing(gateway):
    gateway.start_worker()
    account_id, key = gateway.account("bad-input", 10**21)
    ok = {"model": "basis-default", "messages": CHAT, "max_tokens": 4}
    assert_error(post(gateway, key, None, raw=b"{not json"), 400, "invalid_json")
    assert_error(post(gateway, key, {**ok, "max_tokens": "four"}), 400)
    assert_error(post(gateway, key, {**ok, "temperature": 9}), 400)
    assert_error(post(gateway, key, {**ok, "messages": []}), 400)
    assert_error(post(gateway, key, {**ok, "messages": [{"role": "tool", "content": "x"}]}), 400)
    assert_error(post(gateway, key, {**ok, "n": 2}), 400, "unsupported_parameter")
    assert_error(post(gateway, key, {**ok, "stop": ["a", "b", "c", "d", "e"]}), 400)
    err = assert_error(post(gateway, key, {**ok, "model": "gpt-4"}), 404, "model_not_found")
    assert err["param"] == "model"
    huge = [{"role": "user", "content": "word " * 9000}]
    assert_error(post(gateway, key, {**ok, "messages": huge}), 400, "context_length_exceeded")
    assert_error(post(gateway, key, {**ok, "max_tokens": 100_000}), 400)
    assert_error(post(gateway, key, None, raw=b"x" * (5 * 1024 * 1024)), 400, "request_too_large")
    assert_error(post(gateway, "sk-basis-wrong", ok), 401, "invalid_api_key")
    assert_error(post(gateway, None, ok), 401, "missing_api_key")
    assert_error(httpx.get(f"{gateway.base}/v1/receipts/00000000-0000-0000-0000-000000000000"), 404)
    assert spent(gateway, account_id) == 0 and gateway.ledger.get(account_id).reserved == 0


def test_idempotency_key_returns_the_same_completion_and_charges_once(gateway):
    gateway.start_worker()
    account_id, key = gateway.account("idem", 10**21)
    body = {"model": "basis-default", "messages": CHAT, "max_tokens": 5}
    first = post(gateway, key, body, {"Idempotency-Key": "abc"})
    assert first.status_code == 200
    once = spent(gateway, account_id)
    again = post(gateway, key, body, {"Idempotency-Key": "abc"})
    assert again.status_code == 200 and again.json() == first.json()
    stream = post(gateway, key, {**body, "stream": True}, {"Idempotency-Key": "abc-stream"})
    replay = post(gateway, key, {**body, "stream": True}, {"Idempotency-Key": "abc-stream"})
    assert replay.headers["basis-idempotent-replay"] == "true"
    text = lambda r: "".join(  # noqa: E731
        (json.loads(line[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for line in r.text.splitlines() if line.startswith("data: {"))
    assert text(replay) == text(stream) != ""
    conflict = post(gateway, key, {**body, "max_tokens": 6}, {"Idempotency-Key": "abc"})
    assert_error(conflict, 409, "idempotency_conflict")
    assert conflict.headers["x-should-retry"] == "false"
    assert spent(gateway, account_id) == once * 2


def test_concurrent_requests_never_overdraw(gateway):
    gateway.start_worker(capacity=16)
    terms = gateway.runtime.pricing.terms_for("basis-default")
    prompt = gateway.runtime.bindings["basis-default"].apply_chat_template(CHAT)
    worst = worst_case_charge(len(prompt), 8, terms)
    account_id, key = gateway.account("crowd", worst * 10)  # 50 requests x worst = 5x the credit
    body = {"model": "basis-default", "messages": CHAT, "max_tokens": 8}
    with cf.ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(lambda _: post(gateway, key, body), range(50)))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    for r in refused:
        assert_error(r, 402, "insufficient_credit")
        assert r.headers["x-should-retry"] == "false"
    assert 1 <= len(ok) <= 10
    acc = gateway.ledger.get(account_id)
    gateway.views_caught_up()
    receipts = gateway.runtime.reader().receipts(limit=100, account_id=str(account_id))
    assert len(receipts) == len(ok)
    assert acc.spent == sum(int(r["core"]["charged"]) for r in receipts) <= worst * 10
    assert acc.reserved == 0 and acc.available >= 0
    # Refused requests were dispatched while their reservation committed: the worker was told to
    # cancel, its slots are free, and no job of theirs exists in the ledger.
    gateway.until(lambda: sum(w.active_jobs for w in gateway.runtime.hub.workers()) == 0, what="slots freed")
    recorder = gateway.ledger.store.recorder
    accepted = [n for n in recorder.select_notifications(0, 100_000) if n.topic == "basis:Job.Accepted.v1"]
    assert len(accepted) == len(ok)


def test_long_prompts_tokenize_off_the_loop_with_the_same_count(gateway):
    """A prompt past INLINE_TOKENIZE_CHARS is tokenized in a thread: same ids, same charge."""
    from basis.gateway.chat.service import INLINE_TOKENIZE_CHARS

    gateway.start_worker()
    _, key = gateway.account("long", 10**22)
    binding = gateway.runtime.bindings["basis-default"]
    for words in (3, INLINE_TOKENIZE_CHARS // 5):  # inline, then threaded
        messages = [{"role": "user", "content": "Some words to count. " * words}]
        r = post(gateway, key, {"model": "basis-default", "messages": messages, "max_tokens": 2})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == len(binding.apply_chat_template(messages))
    assert len(binding.render_chat(messages)) > INLINE_TOKENIZE_CHARS


def test_busy_workers_queue_briefly_then_answer_503_retry(gateway):
    """All slots taken: a request waits for one (up to the hub's slot_wait), then gets a 503 that
    says to retry, charging nothing; a worker with no free slot is not 'no worker'."""
    gateway.start_worker(rogue="slow", capacity=1)  # one slot, ~20 ms a token
    account_id, key = gateway.account("busy", 10**22)
    body = {"model": "basis-default", "messages": CHAT, "max_tokens": 8}
    with cf.ThreadPoolExecutor(3) as pool:  # one runs, two queue for the slot
        assert [r.status_code for r in pool.map(lambda _: post(gateway, key, body), range(3))] == [200] * 3
    gateway.runtime.hub.slot_wait = 0.01
    with cf.ThreadPoolExecutor(1) as pool:
        long = pool.submit(post, gateway, key, {**body, "max_tokens": 100})  # ~2 s in the only slot
        gateway.until(lambda: sum(w.active_jobs for w in gateway.runtime.hub.workers()) == 1,
                      what="the long job to hold the slot")
        busy = post(gateway, key, body)
        assert long.result().status_code == 200
    assert_error(busy, 503, "workers_busy")
    assert busy.headers["x-should-retry"] == "true"
    gateway.views_caught_up()
    receipts = gateway.runtime.reader().receipts(limit=100, account_id=str(account_id))
    assert len(receipts) == 4
    assert spent(gateway, account_id) == sum(int(r["core"]["charged"]) for r in receipts)


def test_projector_process_killed_is_restarted_and_views_converge(gateway):
    """The views are projected in a process of their own: SIGKILL it, and the gateway starts it
    again, resuming from its tracked position; nothing is lost or counted twice."""
    import os
    import signal

    gateway.start_worker()
    account_id, key = gateway.account("views", 10**21)
    body = {"model": "basis-default", "messages": CHAT, "max_tokens": 3}
    assert post(gateway, key, body).status_code == 200
    gateway.views_caught_up()
    proc = gateway.runtime.projector_process
    first = proc._proc
    os.kill(first.pid, signal.SIGKILL)
    for _ in range(3):
        assert post(gateway, key, body).status_code == 200
    gateway.until(lambda: proc._proc is not first and proc._proc.is_alive(), what="the projector to restart")
    gateway.views_caught_up()
    receipts = gateway.runtime.reader().receipts(limit=100, account_id=str(account_id))
    assert len(receipts) == 4
    assert spent(gateway, account_id) == sum(int(r["core"]["charged"]) for r in receipts)


def test_stop_sequence_is_applied_by_the_gateway(gateway):
    gateway.start_worker()
    _, key = gateway.account("stops", 10**21)
    full = post(gateway, key, {"model": "basis-default", "messages": CHAT, "max_tokens": 30}).json()
    text = full["choices"][0]["message"]["content"]
    stop = text[10:14]
    cut = post(gateway, key, {"model": "basis-default", "messages": CHAT, "max_tokens": 30, "stop": [stop]}).json()
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["message"]["content"] == text[: text.index(stop)]
    assert 0 < cut["usage"]["completion_tokens"] < full["usage"]["completion_tokens"]


def test_no_worker_is_a_503_that_says_not_to_retry_and_models_go_planned(gateway):
    account_id, key = gateway.account("lonely", 10**21)
    models = httpx.get(f"{gateway.base}/v1/models").json()["data"]
    assert {m["status"] for m in models} == {"planned"}
    r = post(gateway, key, {"model": "basis-default", "messages": CHAT, "max_tokens": 4})
    assert_error(r, 503, "no_worker_available")
    assert r.headers["x-should-retry"] == "false"
    assert spent(gateway, account_id) == 0 and gateway.ledger.get(account_id).reserved == 0
    gateway.start_worker()
    live = {m["id"]: m["status"] for m in httpx.get(f"{gateway.base}/v1/models").json()["data"]}
    assert live == {"basis-default": "live", "basis-small": "planned", "basis-large": "planned"}
    gateway.kill_workers()
    assert {m["status"] for m in httpx.get(f"{gateway.base}/v1/models").json()["data"]} == {"planned"}


def test_health_metrics_and_network(gateway):
    gateway.start_worker()
    _, key = gateway.account("ops", 10**21)
    assert post(gateway, key, {"model": "basis-default", "messages": CHAT, "max_tokens": 3}).status_code == 200
    assert httpx.get(f"{gateway.base}/healthz").json()["status"] == "ok"
    metrics = httpx.get(f"{gateway.base}/metrics").text
    assert 'basis_jobs_total{model="basis-default",outcome="completed",served_by="contributor"}' in metrics
    assert "basis_active_workers 1.0" in metrics
    # The chat fast path is measured under its route like any other, and the route keeps its 405.
    assert 'basis_requests_total{route="/v1/chat/completions",status="200"}' in metrics
    assert_error(httpx.get(f"{gateway.base}/v1/chat/completions"), 405, "method_not_allowed")
    net = httpx.get(f"{gateway.base}/v1/network").json()
    assert net["runtime"]["status"] == "live" and net["vault"]["status"] == "pending"
    assert net["gateway_signer"] == gateway.ledger.signer.address


@pytest.mark.parametrize("path", ["/v1/receipts?limit=0", "/v1/receipts?status=bogus"])
def test_receipt_listing_validates_its_query(gateway, path):
    assert_error(httpx.get(gateway.base + path), 400)


def test_rate_limit_is_a_429_in_openai_shape(tmp_path):
    from basis.gateway.runtime import GatewayOptions
    from tests.gateway.harness import Gateway

    gw = Gateway(tmp_path / "home", GatewayOptions(heartbeat_interval=1.0, rate_per_second=0.01, rate_burst=2))
    try:
        gw.start_worker()
        account_id, key = gw.account("hasty", 10**21)
        body = {"model": "basis-default", "messages": CHAT, "max_tokens": 2}
        statuses = [post(gw, key, body).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]  # a burst of two, then about one request a 100 s
        limited = post(gw, key, body)
        assert_error(limited, 429, "rate_limit_exceeded")
        assert gw.ledger.get(account_id).reserved == 0
    finally:
        gw.close()
