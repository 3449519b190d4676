"""The event-sourced ledger on a real SQLite file: lifecycle, receipts, credits, idempotency, bad input."""

from __future__ import annotations

import uuid

import pytest

from basis.domain.pricing import PricingError
from basis.domain.receipt import receipt_hash, recompute_problems
from basis.domain.signing import recover_signer
from basis.ledger import ids
from basis.ledger.audit import audit
from basis.ledger.errors import (
    DuplicateCredit,
    IdempotencyConflict,
    IdempotentReplay,
    InsufficientCredit,
    InvalidTransition,
)
from basis.ledger.jobs import Job
from basis.ledger.projections import Projector, ViewReader
from basis.ledger.service import Ledger
from tests.ledger.helpers import WORKER, run_job


@pytest.fixture
def ledger(settings):
    ledger = Ledger(settings)
    yield ledger
    ledger.close()


def test_full_lifecycle_issues_a_signed_receipt_and_settles_the_reservation(ledger, settings):
    account_id, key = ledger.create_api_key("alice")
    assert ledger.authenticate(key) == account_id and ledger.authenticate("sk-basis-nope") is None
    ledger.grant("alice", 10**18)
    job_id, receipt = run_job(ledger, account_id, output_tokens=42)
    core = receipt["core"]
    assert core["output_tokens"] == 42 and core["worker"] == WORKER and core["served_by"] == "contributor"
    assert receipt["hash"] == receipt_hash(core) and not recompute_problems(core)
    assert recover_signer(receipt["hash"], receipt["signature"]) == ledger.signer.address
    acc = ledger.get(account_id)
    assert acc.reserved == 0 and acc.spent == int(core["charged"])
    assert acc.available == 10**18 - int(core["charged"])
    job: Job = ledger.get(job_id)
    assert [type(e).__name__ for e in ledger.store.events.get(job_id)] == [
        "Accepted", "Assigned", "Ended", "ReceiptIssued"]
    assert job.receipt["hash"] == receipt["hash"]

    projector = Projector(ledger.store, settings.views_path)
    projector.catch_up()
    reader = ViewReader(settings.views_path)
    view = reader.receipt(str(job_id))
    assert view["core"] == core and view["status"] == "issued" and reader.receipt(receipt["hash"]) == view
    assert reader.account(str(account_id))["spent"] == core["charged"]
    assert reader.rewards()[0]["accrued"] == core["reward"]
    report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
    assert report.ok, report.problems
    assert report.receipts == 1 and report.charged_total == int(core["charged"])


def test_a_job_ending_before_any_output_token_gets_no_receipt_and_is_not_charged(ledger):
    account_id, _ = ledger.create_api_key("bob")
    ledger.grant("bob", 10**18)
    for outcome in ("cancelled", "failed"):
        job_id, receipt = run_job(ledger, account_id, outcome=outcome, output_tokens=0)
        assert receipt is None
        assert ledger.get(job_id).outcome == outcome
    assert ledger.get(account_id).spent == 0 and ledger.get(account_id).reserved == 0
    _, receipt = run_job(ledger, account_id, outcome="completed", output_tokens=0)
    assert receipt is not None and receipt["core"]["output_tokens"] == 0


def test_failed_and_gateway_jobs_earn_no_reward(ledger):
    account_id, _ = ledger.create_api_key("carol")
    ledger.grant("carol", 10**18)
    _, failed = run_job(ledger, account_id, outcome="failed", output_tokens=5)
    _, gateway = run_job(ledger, account_id, served_by="gateway", output_tokens=5)
    assert failed["core"]["reward"] == "0" and failed["core"]["outcome"] == "failed"
    assert gateway["core"]["reward"] == "0" and gateway["core"]["worker"] is None
    assert int(failed["core"]["charged"]) > 0


def test_insufficient_credit_refuses_and_records_nothing(ledger):
    account_id, _ = ledger.create_api_key("dave")
    ledger.grant("dave", 1000)
    before = ledger.store.recorder.max_notification_id()
    with pytest.raises(InsufficientCredit):
        ledger.run(ledger.accept_job(job_id=uuid.uuid4(), account_id=account_id, model="basis-default",
                                     prompt_tokens=10, max_output_tokens=10))
    assert ledger.store.recorder.max_notification_id() == before


def test_credits_are_idempotent_on_their_external_id(ledger):
    account_id = ledger.open_account("erin")
    ledger.credit(account_id, "deposit", "0xtx:3", 500)
    with pytest.raises(DuplicateCredit):
        ledger.credit(account_id, "deposit", "0xtx:3", 500)
    ledger.credit(account_id, "grant", "0xtx:3", 7)  # another source, another id space
    acc = ledger.get(account_id)
    assert (acc.deposited, acc.granted) == (500, 7)


@pytest.mark.parametrize("amount", [0, -1, 1.5, "10", True])
def test_malformed_grant_amounts_are_refused(ledger, amount):
    ledger.open_account("frank")
    before = ledger.store.recorder.max_notification_id()
    with pytest.raises(PricingError):
        ledger.grant("frank", amount)
    assert ledger.store.recorder.max_notification_id() == before


def test_unknown_model_is_refused(ledger):
    from basis.domain.pricing import UnknownModel

    account_id = ledger.open_account("gina")
    with pytest.raises(UnknownModel):
        ledger.accept_job(job_id=uuid.uuid4(), account_id=account_id, model="nope", prompt_tokens=1,
                          max_output_tokens=1)


def test_idempotency_key_replays_conflicts_and_retries(ledger):
    account_id = ledger.open_account("hank")
    ledger.grant("hank", 10**18)

    def accept(job_id, body="h1"):
        return ledger.run(ledger.accept_job(job_id=job_id, account_id=account_id, model="basis-default",
                                            prompt_tokens=5, max_output_tokens=10, idempotency_key="k1",
                                            request_hash=body))

    first = uuid.uuid4()
    accept(first)
    with pytest.raises(IdempotencyConflict, match="still running"):
        accept(uuid.uuid4())
    with pytest.raises(IdempotencyConflict, match="different request body"):
        accept(uuid.uuid4(), body="h2")
    ledger.run(ledger.assign_job(first, "gateway", None))
    ledger.run(ledger.finish_job(first, outcome="completed", output_tokens=3, output_text="abc"))
    with pytest.raises(IdempotentReplay) as replay:
        accept(uuid.uuid4())
    assert replay.value.job_id == str(first)
    assert ledger.get(account_id).spent == int(ledger.get(first).receipt["core"]["charged"])


def test_transitions_are_guarded(ledger):
    account_id = ledger.open_account("ivy")
    ledger.grant("ivy", 10**18)
    job_id, _ = run_job(ledger, account_id)
    with pytest.raises(InvalidTransition):
        ledger.run(ledger.finish_job(job_id, outcome="completed", output_tokens=1))
    with pytest.raises(InvalidTransition):
        ledger.run(ledger.assign_job(job_id, "gateway", None))
    job2 = uuid.uuid4()
    ledger.run(ledger.accept_job(job_id=job2, account_id=account_id, model="basis-default", prompt_tokens=1,
                                 max_output_tokens=5))
    with pytest.raises(InvalidTransition):  # more tokens than reserved for
        ledger.run(ledger.finish_job(job2, outcome="cancelled", output_tokens=6))


def test_interrupted_jobs_are_ended_on_restart_releasing_their_reservation(settings):
    ledger = Ledger(settings)
    account_id = ledger.open_account("jack")
    ledger.grant("jack", 10**18)
    job_id = uuid.uuid4()
    ledger.run(ledger.accept_job(job_id=job_id, account_id=account_id, model="basis-default", prompt_tokens=3,
                                 max_output_tokens=50))
    ledger.close()
    again = Ledger(settings)
    projector = Projector(again.store, settings.views_path)
    projector.catch_up()
    open_jobs = ViewReader(settings.views_path).open_jobs(settings.node_id)
    assert open_jobs == [str(job_id)]
    assert again.end_interrupted([uuid.UUID(j) for j in open_jobs]) == 1
    assert again.get(account_id).reserved == 0 and again.get(job_id).outcome == "failed"
    again.close()


def test_event_topics_are_pinned():
    """Stored events name these topics; renaming a class must not orphan them."""
    from basis.ledger.store import AGGREGATES

    topics = sorted(
        v.TOPIC for agg in AGGREGATES for v in vars(agg).values()
        if isinstance(v, type) and getattr(v, "TOPIC", None)
    )
    assert topics == sorted([
        "basis:Account.Created.v1", "basis:Account.Opened.v1", "basis:Account.ApiKeyAdded.v1",
        "basis:Account.Credited.v1", "basis:Account.Reserved.v1", "basis:Account.ReservationSettled.v1",
        "basis:ApiKey.Created.v1", "basis:ApiKey.Issued.v1", "basis:ApiKey.Revoked.v1", "basis:ApiKey.CapSet.v1",
        "basis:ApiKey.LimitsSet.v1", "basis:ApiKey.Reserved.v1", "basis:ApiKey.ReservationSettled.v1",
        "basis:CreditRef.Created.v1",
        "basis:CreditRef.Recorded.v1", "basis:Job.Created.v1", "basis:Job.Accepted.v1", "basis:Job.Assigned.v1",
        "basis:Job.Ended.v1", "basis:Job.ReceiptIssued.v1", "basis:Job.Settled.v1",
        "basis:Job.Batched.v1", "basis:Job.Unbatched.v1",
        "basis:IdempotencyRecord.Created.v1", "basis:IdempotencyRecord.Recorded.v1",
        "basis:IdempotencyRecord.Rebound.v1", "basis:Worker.Created.v1", "basis:Worker.Registered.v1",
        "basis:Worker.Advertised.v1",
        "basis:Account.DepositSpendSettled.v1", "basis:Account.WithdrawalReserved.v1",
        "basis:Account.WithdrawalRedeemed.v1", "basis:Account.WithdrawalReleased.v1",
        "basis:SettlementBatch.Created.v1", "basis:SettlementBatch.Proposed.v1", "basis:SettlementBatch.Submitted.v1",
        "basis:SettlementBatch.Confirmed.v1", "basis:SettlementBatch.Abandoned.v1",
        "basis:SettlementBatch.Reposted.v1",
        "basis:SettlementLog.Created.v1", "basis:SettlementLog.Opened.v1", "basis:SettlementLog.BatchOpened.v1",
        "basis:SettlementLog.BatchClosed.v1",
        "basis:VoucherBook.Created.v1", "basis:VoucherBook.Opened.v1", "basis:VoucherBook.Allocated.v1",
        "basis:VoucherBook.Closed.v1", "basis:VoucherBook.ForeignRedeemed.v1",
        "basis:ChainCursor.Created.v1", "basis:ChainCursor.Started.v1", "basis:ChainCursor.Advanced.v1",
        "basis:RewardClaims.Created.v1", "basis:RewardClaims.Opened.v1", "basis:RewardClaims.Claimed.v1",
        "basis:AccountOwners.Created.v1", "basis:AccountOwners.Opened.v1", "basis:AccountOwners.DepositorSeen.v1",
        "basis:AccountOwners.RequestHonoured.v1",
        "basis:Job.CheckRequested.v1", "basis:Job.Verified.v1", "basis:Job.RewardForfeited.v1",
        "basis:Worker.Checked.v1", "basis:Worker.Suspended.v1", "basis:Worker.Reinstated.v1",
        "basis:Worker.ProbationStarted.v1",
    ])
    assert ids.account_id("x") == ids.account_id("x") != ids.account_id("y")


def test_commands_sent_again_after_a_lost_writer_are_safe(ledger):
    """What a gateway resends when its writer process died before answering: a job's end again
    (``resume``) answers with the receipt already saved, never a second charge; ``abandon_job``
    ends a job that was accepted, charging nothing, and is a no-op for one that never was."""
    account_id, _ = ledger.create_api_key("resend")
    ledger.grant("resend", 10**18)
    job_id, receipt = run_job(ledger, account_id, output_tokens=7)
    spent = ledger.get(account_id).spent
    again = ledger.run(ledger.command("finish_job", {"job_id": job_id, "outcome": "completed",
                                                     "output_tokens": 7, "resume": True}))
    assert again == receipt and ledger.get(account_id).spent == spent
    with pytest.raises(InvalidTransition):  # without resume, a second end is still refused
        ledger.run(ledger.finish_job(job_id, outcome="completed", output_tokens=7))

    open_job = uuid.uuid4()
    ledger.run(ledger.accept_job(job_id=open_job, account_id=account_id, model="basis-default",
                                 prompt_tokens=10, max_output_tokens=100))
    assert ledger.get(account_id).reserved > 0
    ledger.run(ledger.command("abandon_job", {"job_id": open_job, "reason": "writer lost"}))
    job = ledger.get(open_job)
    assert job.outcome == "failed" and job.receipt is None
    assert ledger.get(account_id).reserved == 0 and ledger.get(account_id).spent == spent
    ledger.run(ledger.command("abandon_job", {"job_id": uuid.uuid4(), "reason": "never accepted"}))
    with pytest.raises(ValueError):
        ledger.command("grant", {})  # only job commands cross to a writer process


def test_ledger_errors_cross_a_process_boundary_intact():
    import pickle

    conflict = pickle.loads(pickle.dumps(IdempotencyConflict("another body", "job-1")))
    assert str(conflict) == "another body" and conflict.job_id == "job-1"
    replay = pickle.loads(pickle.dumps(IdempotentReplay("job-2")))
    assert replay.job_id == "job-2"


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_second_writer_never_reads_what_another_writer_changed_from_its_cache(store, request, tmp_path):
    """Two writers on one store (a gateway's writer process and its settlement thread): a
    command that only reads an aggregate another writer changed sees the new version. Optimistic
    concurrency alone would only catch it if the command wrote to it too. While a writer is
    alone, it looks no further than one MAX query: it knows the ids its own batches took."""
    from basis.config import Settings
    from basis.ledger.accounts import Account

    dsn = request.getfixturevalue("pg_dsn") if store == "postgresql" else None
    settings = Settings(home=tmp_path / "home", database_url=dsn)
    ledger, other = Ledger(settings), Ledger(settings)
    try:
        account_id, _ = ledger.create_api_key("two-writers")
        ledger.grant("two-writers", 10**18)
        run_job(ledger, account_id, output_tokens=0, outcome="cancelled")  # the account is now cached here
        assert ledger.writer._seen == ledger.store.recorder.max_notification_id()  # its own ids, no scan
        other.grant("two-writers", 5000)
        available = ledger.run(lambda uow: uow.find(Account, account_id).available)
        assert available == 10**18 + 5000
    finally:
        other.close()
        ledger.close()
