"""A job's end names the side and worker that served it; the ledger refuses one that disagrees
with the job's last recorded attempt, so a receipt can never pay a worker that did not serve.

Regression for review item 1 (``../shared/review/repro_writer_reorder.py``), ledger side.
"""

from __future__ import annotations

import json
import sqlite3
import uuid

import pytest

from basis.ledger.errors import AttemptMismatch
from basis.ledger.service import Ledger

A = "0x" + "aa" * 20
B = "0x" + "bb" * 20


def _accepted(ledger: Ledger, account_id, assignment=("contributor", A)) -> uuid.UUID:
    job_id = uuid.uuid4()
    ledger.run(ledger.accept_job(job_id=job_id, account_id=account_id, model="basis-default", prompt_tokens=5,
                                 max_output_tokens=50, assignment=assignment))
    return job_id


def test_an_end_that_names_another_worker_than_the_last_attempt_is_refused(settings):
    ledger = Ledger(settings)
    try:
        account_id = ledger.open_account("alice")
        ledger.grant("alice", 10**24)
        job_id = _accepted(ledger, account_id)
        with pytest.raises(AttemptMismatch, match="last recorded assignment is contributor 0xaaaa"):
            ledger.run(ledger.finish_job(job_id, outcome="completed", output_tokens=7, served_by="contributor",
                                         worker=B))
        with pytest.raises(AttemptMismatch):
            ledger.run(ledger.finish_job(job_id, outcome="completed", output_tokens=7, served_by="gateway"))
        job = ledger.get(job_id)
        assert not job.is_ended and ledger.get(account_id).reservations  # refused: nothing recorded

        ledger.run(ledger.assign_job(job_id, "contributor", B))  # the retry's assignment lands
        receipt = ledger.run(ledger.finish_job(job_id, outcome="completed", output_tokens=7,
                                               served_by="contributor", worker=B.upper().replace("0X", "0x")))
        assert receipt["core"]["worker"] == B and int(receipt["core"]["reward"]) > 0
        acc = ledger.get(account_id)
        assert acc.spent == int(receipt["core"]["charged"]) and not acc.reservations

        gw = _accepted(ledger, account_id, assignment=("gateway", None))
        core = ledger.run(ledger.finish_job(gw, outcome="completed", output_tokens=3, served_by="gateway"))["core"]
        assert core["served_by"] == "gateway" and core["worker"] is None and core["reward"] == "0"
    finally:
        ledger.close()


def test_an_end_stored_before_it_named_its_worker_still_loads(settings):
    """Ended events stored before ``served_by``/``worker`` existed replay with their defaults."""
    ledger = Ledger(settings)
    account_id = ledger.open_account("old")
    ledger.grant("old", 10**24)
    job_id = _accepted(ledger, account_id)
    ledger.run(ledger.finish_job(job_id, outcome="completed", output_tokens=4, served_by="contributor", worker=A))
    ledger.close()
    with sqlite3.connect(settings.events_path) as db:  # rewrite it as an old gateway stored it
        rowid, state = db.execute("SELECT rowid, state FROM stored_events "
                                  "WHERE topic = 'basis:Job.Ended.v1'").fetchone()
        d = json.loads(state)
        assert d.pop("served_by") == "contributor" and d.pop("worker") == A
        db.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (json.dumps(d).encode(), rowid))
    reopened = Ledger(settings)
    try:
        job = reopened.get(job_id)
        assert job.outcome == "completed" and job.output_tokens == 4 and job.receipt["core"]["worker"] == A
    finally:
        reopened.close()
