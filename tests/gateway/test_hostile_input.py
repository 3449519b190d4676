"""Hostile input, from a client or a worker, never gets a 500 (review reproducers
adversarial_worker.py and http_edge.py, issue 17 item 7)."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.gateway.scripted_worker import ScriptedWorker, done, tokens
from tests.gateway.test_api import CHAT, assert_error, post


@pytest.fixture
def scripted(gateway):
    b = gateway.runtime.bindings
    worker = ScriptedWorker(gateway.ws, {m: b[m].binding_hash for m in b})
    gateway.until(lambda: gateway.runtime.hub.workers(), what="the scripted worker")
    yield worker
    worker.close()


def _ids(gw, text: str) -> list[int]:
    return gw.runtime.bindings["basis-default"].tokenize(text)


def _job(gw, resp):
    return gw.ledger.get(uuid.UUID(resp.headers["basis-job-id"]))


@pytest.mark.parametrize("bad", ["beyond the vocabulary", "far beyond", "negative"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_token_id_outside_the_vocabulary_fails_the_job_with_502(gateway, scripted, bad, stream):
    account_id, key = gateway.account("victim", 10**21)
    n_vocab = gateway.runtime.bindings["basis-default"].n_vocab
    hello = _ids(gateway, "Hello")
    bad_id = {"beyond the vocabulary": n_vocab, "far beyond": 10**9, "negative": -1}[bad]
    scripted.scripts[40] = [tokens(hello, "Hello"), tokens([bad_id], "x")]  # and then it would go on
    r = post(gateway, key, {"model": "basis-default", "messages": CHAT, "max_tokens": 40, "stream": stream})
    if stream:
        assert r.status_code == 200
        last = json.loads([line for line in r.text.splitlines() if line.startswith("data: {")][-1][6:])
        assert last["error"]["code"] == "worker_failed" and "token id" in last["error"]["message"]
    else:
        err = assert_error(r, 502, "worker_failed")
        assert "token id" in err["message"] and err["type"] == "server_error"
    job = _job(gateway, r)
    core = job.receipt["core"]
    assert job.outcome == "failed" and core["output_tokens"] == len(hello) and core["reward"] == "0"
    acc = gateway.ledger.get(account_id)
    assert acc.spent == int(core["charged"]) > 0 and acc.reserved == 0
    gateway.until(lambda: scripted.cancels() == [str(job.id)], what="the worker told to cancel")


def test_seed_beyond_2_53_with_an_idempotency_key_is_a_clear_400(gateway, scripted):
    account_id, key = gateway.account("seeds", 10**21)
    hi = _ids(gateway, "Hi")
    scripted.scripts[4] = [tokens(hi, "Hi"), done()]
    body = {"model": "basis-default", "messages": CHAT, "max_tokens": 4, "seed": 2**60}
    err = assert_error(post(gateway, key, body, headers={"Idempotency-Key": "k1"}), 400, "invalid_value")
    assert err["param"] == "seed" and "2^53" in err["message"]
    # a NaN in an ignored parameter cannot be canonicalized either: a 400 that says so
    raw = json.dumps({**body, "seed": 7, "x_extra": float("nan")})
    err = assert_error(post(gateway, key, None, raw=raw, headers={"Idempotency-Key": "k2"}), 400, "invalid_value")
    assert "Idempotency-Key" in err["message"]
    assert gateway.ledger.get(account_id).spent == 0
    # without a key the seed is only passed on: served as before
    r = post(gateway, key, body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hi"
    assert gateway.ledger.get(account_id).reserved == 0


def test_a_lone_surrogate_anywhere_in_the_request_is_a_400(gateway, scripted):
    account_id, key = gateway.account("surrogates", 10**21)
    head = '{"model":"basis-default","max_tokens":4,'
    cases = {
        "messages.0.content": head + '"messages":[{"role":"user","content":"a\\ud800"}]}',
        "stop.0": head + '"stop":["\\ud800"],"messages":[{"role":"user","content":"hi"}]}',
        "messages.0.content.0.text": head + '"messages":[{"role":"user","content":[{"type":"text",'
                                            '"text":"\\udfff b"}]}]}',
        "user": head + '"user":"\\ud83d","messages":[{"role":"user","content":"hi"}]}',
    }
    for param, raw in cases.items():
        for headers in ({}, {"Idempotency-Key": "k-" + param}):
            err = assert_error(post(gateway, key, None, raw=raw, headers=headers), 400, "invalid_value")
            assert err["type"] == "invalid_request_error" and err["param"] == param
            assert "surrogate" in err["message"]
    # a well-formed pair (an emoji written as two escapes) is fine
    hi = _ids(gateway, "Hi")
    scripted.scripts[4] = [tokens(hi, "Hi"), done()]
    ok = '{"model":"basis-default","max_tokens":4,"messages":[{"role":"user","content":"\\ud83d\\ude00"}]}'
    assert post(gateway, key, None, raw=ok).status_code == 200
    acc = gateway.ledger.get(account_id)
    assert acc.reserved == 0 and len(acc.reservations) == 0


def test_a_receipt_cursor_beyond_64_bits_is_a_400(gateway):
    for before in ("1352071147553539013738496", str(2**63)):
        r = httpx.get(f"{gateway.base}/v1/receipts", params={"before": before}, timeout=30)
        assert_error(r, 400)
    r = httpx.get(f"{gateway.base}/v1/receipts", params={"before": str(2**63 - 1)}, timeout=30)
    assert r.status_code == 200 and r.json()["data"] == []
    # the explorer's page cursor too: a 400 page, not a 500
    for before in ("99999999999999999999", "\u00b2"):
        r = httpx.get(f"{gateway.base}/receipts", params={"before": before}, timeout=30)
        assert r.status_code == 400 and "cursor" in r.text
