"""On PostgreSQL, a connection lost during a commit that the server completed (review item 10).

eventsourcing retries the insert on the lost connection; the retry met its own rows and raised
``IntegrityError``, so the group committer ran the command again on the stored state: a job's end
was refused ("job already completed") after it had been charged, and an acceptance or a credit
answered with an error although it was recorded. The ledger's recorder now recognises its own
committed batch and answers as if it had heard the commit: one charge, one answer, no error.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest
from eventsourcing.persistence import StoredEvent

from basis.config import Settings
from basis.ledger.service import Ledger
from tests.support.pg_cut_proxy import CommitCuttingProxy

A = "0x" + "aa" * 20


@pytest.fixture
def cut_ledger(pg_dsn, tmp_path, monkeypatch):
    monkeypatch.setenv("PGSSLMODE", "disable")  # plain protocol messages through the proxy
    monkeypatch.setenv("PGGSSENCMODE", "disable")
    u = urlsplit(pg_dsn)
    proxy = CommitCuttingProxy(u.hostname or "127.0.0.1", u.port or 5432)
    dsn = f"postgresql://{u.username or 'postgres'}@127.0.0.1:{proxy.port}{u.path}"
    ledger = Ledger(Settings(home=tmp_path, database_url=dsn))
    yield ledger, proxy
    ledger.close()
    proxy.close()


def _events(ledger: Ledger, aggregate_id) -> list[str]:
    return [type(e).__name__ for e in ledger.store.events.get(aggregate_id)]


def test_a_commit_whose_answer_was_lost_is_answered_once_and_charged_once(cut_ledger):
    ledger, proxy = cut_ledger
    account_id = ledger.open_account("alice")

    proxy.arm()
    ledger.credit(account_id, "grant", "g-1", 10**24)  # no DuplicateCredit for its own credit
    assert proxy.cuts == 1 and ledger.get(account_id).granted == 10**24

    job_id = uuid.uuid4()
    proxy.arm()
    reserved = ledger.run(ledger.accept_job(job_id=job_id, account_id=account_id, model="basis-default",
                                            prompt_tokens=5, max_output_tokens=50, assignment=("contributor", A)))
    assert proxy.cuts == 2 and ledger.get(account_id).reservations == {str(job_id): reserved}

    proxy.arm()
    receipt = ledger.run(ledger.finish_job(job_id, outcome="completed", output_tokens=7, served_by="contributor",
                                           worker=A))
    assert proxy.cuts == 3
    job, acc = ledger.get(job_id), ledger.get(account_id)
    assert receipt == job.receipt and receipt["core"]["output_tokens"] == 7
    assert acc.spent == int(receipt["core"]["charged"]) > 0 and not acc.reservations and acc.reserved == 0
    assert _events(ledger, job_id).count("Ended") == 1 and _events(ledger, job_id).count("ReceiptIssued") == 1


def test_a_conflict_then_a_lost_commit_applies_once_and_other_rows_are_not_taken_for_ours(cut_ledger):
    ledger, proxy = cut_ledger
    account_id = ledger.open_account("bob")
    other = Ledger(ledger.settings)  # another writer on the same store
    try:
        ledger.grant("bob", 100)  # cached in ledger's writer
        other.credit(account_id, "grant", "other", 5)  # bob moves on behind its back
        proxy.arm()
        ledger.credit(account_id, "grant", "mine", 7)  # conflict, re-read, commit: its answer lost
        assert proxy.cuts == 1 and ledger.get(account_id).granted == 112

        recorder = ledger.store.recorder
        stored = ledger.store.mapper.to_stored_event(list(ledger.store.events.get(account_id))[-1])
        assert recorder._committed([stored]) is not None  # this very event: stored
        forged = StoredEvent(stored.originator_id, stored.originator_version, stored.topic, stored.state + b" ")
        assert recorder._committed([forged]) is None  # same place, other bytes: not ours
        absent = StoredEvent(stored.originator_id, stored.originator_version + 1, stored.topic, stored.state)
        assert recorder._committed([absent]) is None
    finally:
        other.close()
