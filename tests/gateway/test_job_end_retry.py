"""A job's end that fails to record is retried until it lands (review item 10).

Before: a ``finish_job`` that failed (e.g. version conflicts exhausted) was only logged; the client
got a 500, the reservation stayed held until a restart, and the restart then ended the job failed
with 0 tokens, dropping its real charge and reward.
"""

from __future__ import annotations

import logging

import httpx
from eventsourcing.persistence import IntegrityError

from basis.gateway.runtime import GatewayOptions
from tests.gateway.harness import Gateway
from tests.gateway.test_api import CHAT, post, spent
from tests.gateway.test_ledger_writer import verify_receipt


def test_a_failed_job_end_is_retried_until_it_lands(tmp_path, caplog):
    # The thread writer runs the ledger's commands in this process, where the failure is injected.
    gw = Gateway(tmp_path / "home", GatewayOptions(heartbeat_interval=1.0, ledger_writer="thread"))
    try:
        gw.start_worker()
        account_id, key = gw.account("end-retry", 10**21)
        real_finish = gw.ledger.finish_job
        calls: list[dict] = []

        def failing_finish(job_id, **kwargs):
            calls.append(kwargs)
            command = real_finish(job_id, **kwargs)
            if len(calls) > 2:
                return command

            def cmd(uow):  # what GroupCommitter answers after MAX_ATTEMPTS version conflicts
                raise IntegrityError("too many concurrent writers on one aggregate")

            return cmd

        gw.ledger.finish_job = failing_finish
        with caplog.at_level(logging.WARNING, logger="basis.gateway.chat"):
            r = post(gw, key, {"model": "basis-default", "messages": CHAT, "max_tokens": 4})
        assert r.status_code == 200, r.text
        assert [c.get("resume", False) for c in calls] == [False, True, True]  # retries are idempotent
        assert all(c["served_by"] == "contributor" and c["worker"] for c in calls)
        assert caplog.text.count("recording the end of job") == 2

        job_id = r.json()["id"].removeprefix("chatcmpl-")
        assert r.headers["basis-receipt-hash"] == r.json()["receipt"]["hash"]
        receipt = httpx.get(f"{gw.base}/v1/receipts/{job_id}").json()
        assert verify_receipt(receipt, expected_signer=gw.ledger.signer.address)
        acc = gw.ledger.get(account_id)
        assert acc.reserved == 0 and not acc.reservations  # the reservation was settled, not left held
        assert spent(gw, account_id) == int(receipt["core"]["charged"]) > 0
    finally:
        gw.close()
