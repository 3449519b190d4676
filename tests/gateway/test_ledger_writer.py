"""The gateway's ledger writer process: killed under load, it is replaced and loses nothing."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import threading

import httpx

from basis.domain.receipt import receipt_hash, recompute_problems
from basis.domain.signing import recover_signer
from basis.gateway.runtime import GatewayOptions
from basis.ledger.audit import audit
from tests.gateway.harness import Gateway
from tests.gateway.test_api import CHAT, post, spent


def verify_receipt(receipt: dict, expected_signer: str) -> bool:
    core = receipt["core"]
    return (receipt["hash"] == receipt_hash(core) and not recompute_problems(core)
            and recover_signer(receipt["hash"], receipt["signature"]).lower() == expected_signer.lower())


def test_writer_process_killed_under_load_is_replaced_and_nothing_is_lost(gateway):
    """Hang, then SIGKILL, the writer mid-load: every request ends in a 200 with a durable receipt, or a
    503 ``ledger_unavailable`` that tells the client to retry and charges nothing; no job stays
    open, no reservation is left behind, and a replay of the log agrees with the live views."""
    gateway.start_worker(capacity=8)
    account_id, key = gateway.account("writer-crash", 10**21)
    body = {"model": "basis-default", "messages": CHAT, "max_tokens": 6}
    writer = gateway.runtime.job_writer
    first = writer._proc
    done = threading.Semaphore(0)

    def one(_: int) -> httpx.Response:
        r = post(gateway, key, body)
        done.release()
        return r

    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(80)]
        for _ in range(15):
            done.acquire()
        os.kill(first.pid, signal.SIGSTOP)  # hung first, so commands are surely in flight
        gateway.until(lambda: len(writer._pending) >= 4, what="commands to queue behind the stopped writer")
        os.kill(first.pid, signal.SIGKILL)
        responses = [f.result() for f in futures]

    gateway.until(lambda: writer._proc is not first and writer._proc.is_alive(), what="a new writer process")
    assert writer.restarts == 1 and writer.recovered >= 4
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, [r.text for r in responses if r.status_code not in (200, 503)]
    for r in responses:
        if r.status_code == 503:
            err = r.json()["error"]
            assert err["code"] == "ledger_unavailable" and r.headers["x-should-retry"] == "true"
    assert post(gateway, key, body).status_code == 200  # and it goes on serving
    ok = codes.count(200) + 1

    gateway.views_caught_up()
    reader = gateway.runtime.reader()
    assert reader.open_jobs(gateway.settings.node_id) == []
    receipts = reader.receipts(limit=1000, account_id=str(account_id))
    assert len(receipts) == ok  # one receipt per 200, none for the refused
    for rec in receipts:
        assert verify_receipt(rec, expected_signer=gateway.ledger.signer.address)
    acc = gateway.ledger.get(account_id)
    assert acc.reserved == 0 and not acc.reservations
    assert spent(gateway, account_id) == sum(int(r["core"]["charged"]) for r in receipts)
    report = audit(gateway.ledger.store, gateway.settings.views_path, signer=gateway.ledger.signer.address)
    assert report.ok, report.problems


def test_writer_thread_option_serves_the_same_api(tmp_path):
    """``ledger_writer="thread"`` (one process: embedding, the benchmarks' baseline) keeps the contract."""
    gw = Gateway(tmp_path / "home", GatewayOptions(heartbeat_interval=1.0, ledger_writer="thread"))
    try:
        gw.start_worker()
        account_id, key = gw.account("thread", 10**21)
        r = post(gw, key, {"model": "basis-default", "messages": CHAT, "max_tokens": 4})
        assert r.status_code == 200, r.text
        receipt = httpx.get(f"{gw.base}/v1/receipts/{r.json()['id'].removeprefix('chatcmpl-')}").json()
        assert verify_receipt(receipt, expected_signer=gw.ledger.signer.address)
        assert spent(gw, account_id) == int(receipt["core"]["charged"])
    finally:
        gw.close()
