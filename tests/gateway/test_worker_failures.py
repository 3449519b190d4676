"""Workers that lie, disagree with themselves, stall or die: the gateway's count is what counts."""

from __future__ import annotations

import json
import signal
import threading

import httpx

from tests.gateway.test_api import CHAT, post


def receipt_for(gw, job_id: str) -> dict | None:
    gw.views_caught_up()
    return gw.runtime.reader().receipt(job_id)


def test_a_lying_usage_report_does_not_change_the_receipt(gateway):
    gateway.start_worker(rogue="lie-usage")
    _, key = gateway.account("liar", 10**21)
    r = post(gateway, key, {"model": "basis-default", "messages": CHAT, "max_tokens": 7})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 7
    job_id = r.headers["basis-job-id"]
    core = receipt_for(gateway, job_id)["core"]
    assert core["output_tokens"] == 7 and core["outcome"] == "completed"
    row = gateway.runtime.reader().job(job_id)
    assert json.loads(row["worker_usage"])["completion_tokens"] == 1007  # recorded for audit only


def test_ids_and_text_that_disagree_fail_the_job_without_reward(gateway):
    gateway.start_worker(rogue="bad-text")
    account_id, key = gateway.account("garbled", 10**21)
    r = post(gateway, key, {"model": "basis-default", "messages": CHAT, "max_tokens": 8, "stream": True})
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert "error" in events[-1] and events[-1]["error"]["code"] == "worker_failed"
    core = receipt_for(gateway, r.headers["basis-job-id"])["core"]
    assert core["outcome"] == "failed" and core["reward"] == "0" and core["reward_bps"] == 0
    assert core["output_tokens"] == 2  # the two frames before the bad one
    assert gateway.ledger.get(account_id).spent == int(core["charged"])


def _stream_in_background(gw, key, body):
    out: dict = {}

    def go():
        with httpx.stream("POST", f"{gw.base}/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {key}"}, timeout=60) as r:
            out["status"] = r.status_code
            out["headers"] = r.headers
            out["lines"] = [line for line in r.iter_lines() if line.startswith("data: ")]

    t = threading.Thread(target=go)
    t.start()
    return t, out


def test_worker_killed_before_its_first_token_is_replaced(gateway):
    staller = gateway.start_worker(rogue="stall-before")
    account_id, key = gateway.account("retry", 10**21)
    t, out = _stream_in_background(gateway, key, {"model": "basis-default", "messages": CHAT, "max_tokens": 6,
                                                  "stream": True})
    gateway.until(lambda: any(w.active_jobs for w in gateway.runtime.hub.workers()), what="dispatch")
    gateway.start_worker()
    staller.send_signal(signal.SIGKILL)
    t.join(60)
    assert out["status"] == 200
    assert out["lines"][-1] == "data: [DONE]"
    core = receipt_for(gateway, out["headers"]["basis-job-id"])["core"]
    assert core["outcome"] == "completed" and core["output_tokens"] == 6
    job = gateway.ledger.get(__import__("uuid").UUID(out["headers"]["basis-job-id"]))
    assert len(job.attempts) == 2 and job.attempts[0]["worker"] != job.attempts[1]["worker"]
    assert gateway.ledger.get(account_id).spent == int(core["charged"])


def test_worker_killed_mid_stream_sends_an_error_and_charges_accepted_tokens(gateway):
    staller = gateway.start_worker(rogue="stall-after")
    account_id, key = gateway.account("midway", 10**21)
    t, out = _stream_in_background(gateway, key, {"model": "basis-default", "messages": CHAT, "max_tokens": 20,
                                                  "stream": True})
    gateway.until(lambda: any(w.active_jobs for w in gateway.runtime.hub.workers()), what="dispatch")
    gateway.until(lambda: gateway.runtime.hub._job_conn and
                  all(ch.tokens_seen >= 5 for c in gateway.runtime.hub._conns.values() for ch in c.jobs.values()),
                  what="five tokens")
    staller.send_signal(signal.SIGKILL)
    t.join(60)
    last = json.loads(out["lines"][-1][6:])
    assert last["error"]["code"] == "worker_failed"
    core = receipt_for(gateway, out["headers"]["basis-job-id"])["core"]
    assert core["outcome"] == "failed" and core["output_tokens"] == 5 and core["reward"] == "0"
    acc = gateway.ledger.get(account_id)
    assert acc.spent == int(core["charged"]) and acc.reserved == 0


def test_client_disconnect_cancels_and_charges_what_was_relayed(gateway):
    gateway.start_worker(rogue="stall-after")
    account_id, key = gateway.account("quitter", 10**21)
    with httpx.stream("POST", f"{gateway.base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "basis-default", "messages": CHAT, "max_tokens": 20, "stream": True},
                      timeout=60) as r:
        job_id = r.headers["basis-job-id"]
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                seen += 1
            if seen >= 3:
                break
    gateway.until(lambda: gateway.ledger.get(account_id).reserved == 0, what="the job to end")
    core = receipt_for(gateway, job_id)["core"]
    # Charged: the tokens accepted until the gateway noticed (at least the 3 the client read, at
    # most the 5 the worker sent before it stalled).
    assert core["outcome"] == "cancelled" and 3 <= core["output_tokens"] <= 5
    assert core["reward_bps"] > 0 and int(core["reward"]) > 0
    assert gateway.ledger.get(account_id).spent == int(core["charged"])
    assert gateway.runtime.hub.workers()[0].active_jobs == 0
