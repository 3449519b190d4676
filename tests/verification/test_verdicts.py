"""Verdicts and their consequences as ledger events (DESIGN 1.6), on a real SQLite store:
selection after the job ends, refund and forfeit of a failed job (once, however often the verdict
is sent), suspension with evidence and forfeiture of everything unsettled, the operator's hand,
settlement holding unjudged jobs and carrying forfeited rewards as 0, and the audit agreeing."""

from __future__ import annotations

import json

import pytest

from basis.ledger import ids
from basis.ledger.audit import audit
from basis.ledger.errors import InvalidTransition
from basis.ledger.service import Ledger
from basis.ledger.settlement import SettlementBatch, batch_aggregate_id
from basis.ledger.verdicts import UnknownWorker, ids_digest, record_verdict, reinstate_worker, suspend_worker
from basis.settlement.batches import propose_batch
from tests.verification.helpers import CHEAT, HONEST, POLICY, caught_up_views, contributor_job, failing, passing

VAULT = "0x" + "ee" * 20
DIST = "0x" + "dd" * 20


@pytest.fixture
def ledger(settings):
    led = Ledger(settings, verification=POLICY)
    yield led
    led.close()


def judge(ledger: Ledger, job_id, stat, settings=None):
    job = ledger.get(job_id)
    unsettled = []
    if settings is not None:
        r = caught_up_views(ledger, settings.views_path)
        unsettled = r.unsettled_of(job.worker)
        r.close()
    return ledger.run(record_verdict(job_id, job.check["ids_sha256"], stat, POLICY, unsettled))


def test_probation_jobs_are_selected_and_held_out_of_settlement(ledger, settings):
    account_id = ledger.open_account("alice")
    ledger.grant("alice", 10**18)
    first, _ = contributor_job(ledger, account_id, HONEST)
    gateway_job = ledger.get(first)
    assert gateway_job.check["reason"] == "probation" and gateway_job.awaiting_verdict
    assert gateway_job.check["ids_sha256"] == ids_digest(range(100, 108))
    r = caught_up_views(ledger, settings.views_path)
    pending = r.pending_checks()
    assert [p["job_id"] for p in pending] == [str(first)]
    env = r.receipt(str(first))
    assert env["verification"] is None and env["reward_forfeited"] is False  # unchecked: null, nothing revealed
    # The views never hold the ids, only their hash.
    dump = b"".join(r.dump_rows("checks")).decode()
    assert "prompt_ids" not in dump and "100,101" not in dump
    # Settlement skips it while it awaits a verdict ...
    assert ledger.run(propose_batch(31337, VAULT, DIST, [str(first)])) is None
    r.close()
    # ... and takes it once judged.
    assert judge(ledger, first, passing())["verdict"] == "passed"
    batch_id = ledger.run(propose_batch(31337, VAULT, DIST, [str(first)]))
    batch: SettlementBatch = ledger.get(batch_aggregate_id(batch_id))
    assert batch.jobs[0]["reward"] == int(ledger.get(first).receipt["core"]["reward"]) > 0


def test_disabled_policy_and_gateway_jobs_are_never_selected(settings):
    led = Ledger(settings)  # verification off unless asked for
    try:
        account_id = led.open_account("bob")
        led.grant("bob", 10**18)
        job_id, _ = contributor_job(led, account_id, HONEST)
        assert led.get(job_id).check is None
    finally:
        led.close()


def test_a_failed_job_is_refunded_once_and_its_reward_forfeited(ledger, settings):
    account_id = ledger.open_account("carol")
    ledger.grant("carol", 10**18)
    before = ledger.get(account_id).available
    job_id, receipt = contributor_job(ledger, account_id, CHEAT)
    charged = int(receipt["core"]["charged"])
    assert ledger.get(account_id).available == before - charged
    out = judge(ledger, job_id, failing())
    assert out == {"verdict": "failed", "applied": True, "suspended": False}
    # Sent again (a verifier retrying after a crash, or a second verifier): nothing more happens.
    assert judge(ledger, job_id, failing())["applied"] is False
    assert judge(ledger, job_id, passing())["verdict"] == "failed"
    acc = ledger.get(account_id)
    assert acc.available == before and acc.refunded == charged
    job = ledger.get(job_id)
    assert job.verdict["verdict"] == "failed" and job.forfeit["reason"] == "failed verification"
    r = caught_up_views(ledger, settings.views_path)
    env = r.receipt(str(job_id))
    assert env["verification"]["verdict"] == "failed" and env["reward_forfeited"] is True
    assert env["verification"]["tokens"] == 8 and env["verification"]["method"] == POLICY.method
    assert env["core"] == receipt["core"]  # the core never changes
    refunds = r.db.execute("SELECT external_id, amount FROM credits WHERE source = 'refund'").fetchall()
    assert [tuple(x) for x in refunds] == [(str(job_id), str(charged))]
    assert r.account(str(account_id))["available"] == str(before)
    r.close()
    # A refunded, forfeited job settles moving nothing and paying no reward.
    batch_id = ledger.run(propose_batch(31337, VAULT, DIST, [str(job_id)]))
    batch = ledger.get(batch_aggregate_id(batch_id))
    assert batch.jobs[0]["reward"] == 0 and batch.rewards == [] and batch.to_distributor == batch.to_treasury == 0
    report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
    assert report.ok, report.problems


def test_evidence_suspends_the_cheat_and_forfeits_its_unsettled_rewards(ledger, settings):
    account_id = ledger.open_account("dave")
    ledger.grant("dave", 10**18)
    honest = [contributor_job(ledger, account_id, HONEST)[0] for _ in range(3)]
    cheat_jobs = [contributor_job(ledger, account_id, CHEAT)[0] for _ in range(12)]
    for j in honest:
        if ledger.get(j).check:
            judge(ledger, j, passing(), settings)
    checked = [j for j in cheat_jobs if ledger.get(j).check]
    assert len(checked) >= 2  # probation
    outcomes = [judge(ledger, j, failing(), settings) for j in checked[:2]]
    assert outcomes[-1]["suspended"] is True  # 6.5 + 6.5 crosses 12
    worker = ledger.get(ids.worker_id(CHEAT))
    assert worker.is_suspended and worker.suspended["by"] == "verifier"
    assert worker.suspended["evidence"] == [str(j) for j in checked[:2]]
    for j in cheat_jobs:
        job = ledger.get(j)
        if job.check is None:  # unchecked but unsettled: forfeited by the suspension, not refunded
            assert job.forfeit["reason"] == "worker suspended"
            assert job.forfeit["evidence"] == [str(x) for x in checked[:2]]
    assert ledger.get(ids.worker_id(HONEST)).suspended is None
    for j in honest:
        assert ledger.get(j).forfeit is None
    # Still-pending cheat jobs get their verdicts later; settlement carries none of the cheat's rewards.
    for j in checked[2:]:
        judge(ledger, j, failing(), settings)
    batch_id = ledger.run(propose_batch(31337, VAULT, DIST, [str(j) for j in honest + cheat_jobs]))
    batch = ledger.get(batch_aggregate_id(batch_id))
    rewards = dict(batch.rewards)
    assert CHEAT not in rewards and rewards[HONEST] == sum(
        int(ledger.get(j).receipt["core"]["reward"]) for j in honest)
    r = caught_up_views(ledger, settings.views_path)
    row = {w["address"]: w for w in r.workers()}
    assert row[CHEAT]["status"] == "suspended" and row[CHEAT]["failed"] == len(checked)
    assert row[HONEST]["status"] == "active" and row[HONEST]["failed"] == 0
    r.close()
    report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
    assert report.ok, report.problems


def test_the_operator_suspends_and_reinstates_by_hand(ledger, settings):
    account_id = ledger.open_account("erin")
    ledger.grant("erin", 10**18)
    job_id, _ = contributor_job(ledger, account_id, HONEST)
    judge(ledger, job_id, passing())
    later, _ = contributor_job(ledger, account_id, HONEST)
    judge(ledger, later, passing())
    third, _ = contributor_job(ledger, account_id, HONEST)
    with pytest.raises(UnknownWorker):
        ledger.run(suspend_worker("0x" + "99" * 20, "never seen"))
    with pytest.raises(InvalidTransition):
        ledger.run(reinstate_worker(HONEST, "not suspended"))
    r = caught_up_views(ledger, settings.views_path)
    forfeited = ledger.run(suspend_worker(HONEST, "abuse report 17", r.unsettled_of(HONEST)))
    r.close()
    assert forfeited >= 2  # every unsettled reward with one (the pending job's too)
    with pytest.raises(InvalidTransition):
        ledger.run(suspend_worker(HONEST, "twice"))
    w = ledger.get(ids.worker_id(HONEST))
    assert w.suspended == {"by": "operator", "reason": "abuse report 17", "evidence": []}
    ledger.run(reinstate_worker(HONEST, "appeal upheld"))
    assert ledger.get(ids.worker_id(HONEST)).suspended is None
    if ledger.get(third).awaiting_verdict:
        judge(ledger, third, passing())
    r = caught_up_views(ledger, settings.views_path)
    assert r.worker_status(HONEST)["status"] == "active"
    r.close()
    report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
    assert report.ok, report.problems


def test_a_reinstated_worker_is_on_probation_again(ledger, settings):
    """After reinstatement its next ``probation_jobs`` jobs are all checked (reason probation), as
    a new worker's are; then it is back to the keyed sample. One ProbationStarted event records it."""
    account_id = ledger.open_account("ivy")
    ledger.grant("ivy", 10**18)
    for _ in range(POLICY.probation_jobs):
        job_id, _ = contributor_job(ledger, account_id, HONEST)
        assert ledger.get(job_id).check["reason"] == "probation"
        judge(ledger, job_id, passing())
    reasons = []
    for _ in range(12):  # probation over: 1 job in 2 sampled, some not checked at all
        job_id, _ = contributor_job(ledger, account_id, HONEST)
        job = ledger.get(job_id)
        reasons.append(job.check["reason"] if job.check else None)
        if job.check:
            judge(ledger, job_id, passing())
    assert None in reasons and "probation" not in reasons
    checked = ledger.get(ids.worker_id(HONEST)).evidence.checked
    ledger.run(suspend_worker(HONEST, "abuse report 18"))
    with pytest.raises(InvalidTransition):  # probation only for a worker in service
        ledger.get(ids.worker_id(HONEST)).start_probation(from_checked=checked, reason="x")
    ledger.run(reinstate_worker(HONEST, "appeal upheld"))
    worker = ledger.get(ids.worker_id(HONEST))
    assert worker.probation_from == checked and worker.on_probation(POLICY.probation_jobs)
    again = []
    for _ in range(POLICY.probation_jobs):
        job_id, _ = contributor_job(ledger, account_id, HONEST)
        again.append(ledger.get(job_id).check["reason"] if ledger.get(job_id).check else None)
        judge(ledger, job_id, passing())
    assert again == ["probation"] * POLICY.probation_jobs
    assert not ledger.get(ids.worker_id(HONEST)).on_probation(POLICY.probation_jobs)
    topics = [e.topic for e in ledger.store.recorder.select_events(ids.worker_id(HONEST))]
    assert topics.count("basis:Worker.ProbationStarted.v1") == 1
    assert topics.index("basis:Worker.ProbationStarted.v1") == topics.index("basis:Worker.Reinstated.v1") + 1
    r = caught_up_views(ledger, settings.views_path)
    assert r.worker_status(HONEST)["probation_from"] == checked and r.worker_status(HONEST)["status"] == "active"
    r.close()
    report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
    assert report.ok, report.problems


def test_verdict_for_other_ids_is_refused(ledger):
    account_id = ledger.open_account("fay")
    ledger.grant("fay", 10**18)
    job_id, _ = contributor_job(ledger, account_id, HONEST)
    with pytest.raises(InvalidTransition):
        ledger.run(record_verdict(job_id, ids_digest([1, 2, 3]), passing(), POLICY))
    assert ledger.get(job_id).verdict is None


def test_statistics_round_trip_as_json(ledger, settings):
    account_id = ledger.open_account("gus")
    ledger.grant("gus", 10**18)
    job_id, _ = contributor_job(ledger, account_id, HONEST, temperature=0.0)
    from basis.verification.stats import JobStatistic

    judge(ledger, job_id, JobStatistic(tokens=8, greedy=True, agreement=0.875))
    r = caught_up_views(ledger, settings.views_path)
    stat = r.receipt(str(job_id))["verification"]["statistic"]
    assert {k: stat[k] for k in ("tokens", "greedy", "z", "agreement")} == {
        "tokens": 8, "greedy": True, "z": None, "agreement": 0.875}
    assert json.loads(json.dumps(stat)) == stat
    r.close()


def test_settlement_forfeits_what_the_views_had_not_shown_at_suspension(ledger, settings):
    """A job of a worker that finished after its suspension (in flight then), or that the views had
    not caught up with: the batch proposal forfeits its reward instead of paying it."""
    account_id = ledger.open_account("hal")
    ledger.grant("hal", 10**18)
    ledger.run(ledger.register_worker(CHEAT, ["basis-default"]))
    done = []
    for _ in range(POLICY.probation_jobs):  # past probation, so later jobs are only sampled
        j, _ = contributor_job(ledger, account_id, CHEAT)
        judge(ledger, j, passing())
        done.append(j)
    ledger.run(suspend_worker(CHEAT, "abuse report", unsettled=[]))  # the views showed nothing
    late = [contributor_job(ledger, account_id, CHEAT)[0] for _ in range(4)]  # in-flight jobs finishing
    for j in late:
        if ledger.get(j).awaiting_verdict:
            judge(ledger, j, passing())
    batch_id = ledger.run(propose_batch(31337, VAULT, DIST, [str(j) for j in done + late]))
    batch = ledger.get(batch_aggregate_id(batch_id))
    assert all(e["reward"] == 0 for e in batch.jobs) and batch.rewards == []
    assert all(ledger.get(j).forfeit["reason"] == "worker suspended" for j in done + late)
    caught_up_views(ledger, settings.views_path).close()
    report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
    assert report.ok, report.problems


def test_network_publishes_the_policy_and_disabled_when_off(tmp_path):
    import httpx

    from basis.gateway.runtime import GatewayOptions
    from tests.gateway.harness import Gateway

    gw = Gateway(tmp_path / "home", GatewayOptions(heartbeat_interval=1.0, ledger_writer="thread"))
    try:
        published = httpx.get(f"{gw.base}/v1/network").json()["verification"]
        assert published["enabled"] is False and published["models"] == []
        for key in ("method", "sample_bps", "probation_jobs", "job_threshold", "worker_threshold"):
            assert key in published
        # v3: the temperature test's alpha, alternatives and floor (fields beyond §1.6's)
        assert published["method"] == "teacher-forced-z/v3" and published["temperature_alpha"] == 2e-4
        assert published["temperature_ratios"] == [0.25, 0.5, 1.5, 2.0]
        assert published["temperature_prob_floor"] == 1e-6
        assert published["worker_e_alpha"] == 1e-8  # the e-detector's level, beside worker_threshold
    finally:
        gw.close()
    with pytest.raises(ValueError, match="unknown verifier mode"):
        Gateway(tmp_path / "home2", GatewayOptions(verifier="sometimes", ledger_writer="thread"))


def test_a_malformed_check_never_costs_the_job_its_end(ledger):
    import uuid

    account_id = ledger.open_account("ivy")
    ledger.grant("ivy", 10**18)
    job_id = uuid.uuid4()
    ledger.run(ledger.accept_job(job_id=job_id, account_id=account_id, model="basis-default", prompt_tokens=5,
                                 max_output_tokens=64, assignment=("contributor", HONEST)))
    receipt = ledger.run(ledger.finish_job(job_id, outcome="completed", output_tokens=3,
                                           check={"prompt_ids": [1], "output_ids": ["x", "y", "z"]}))
    assert receipt is not None and ledger.get(job_id).outcome == "completed" and ledger.get(job_id).check is None


def test_a_deposit_backed_refund_stays_withdrawable_and_settles_nothing(ledger, settings):
    """The refund of a job paid from deposited credit gives back vault-backed credit: its tokens
    never left the vault (the job was held until judged), so the batch moves nothing for it."""
    account_id = ledger.open_account("jan")
    ledger.credit(account_id, "deposit", "0xdeposit-1", 10**15)
    before = ledger.get(account_id)
    assert before.withdrawable == 10**15
    job_id, receipt = contributor_job(ledger, account_id, CHEAT)
    charged = int(receipt["core"]["charged"])
    acc = ledger.get(account_id)
    assert acc.unsettled_deposit_spend == {str(job_id): charged} and acc.withdrawable == 10**15 - charged
    judge(ledger, job_id, failing())
    acc = ledger.get(account_id)
    assert acc.refund_backed == acc.refunded == charged and acc.unsettled_deposit_spend == {}
    assert acc.withdrawable == 10**15 and acc.available == 10**15
    batch_id = ledger.run(propose_batch(31337, VAULT, DIST, [str(job_id)]))
    batch = ledger.get(batch_aggregate_id(batch_id))
    assert batch.jobs[0]["from_deposit"] == 0 and (batch.to_distributor, batch.to_treasury, batch.reward_top_up) \
        == (0, 0, 0)
    # The next job spends the refunded, vault-backed credit as deposit (moved on chain when settled).
    second, receipt2 = contributor_job(ledger, account_id, HONEST)
    assert ledger.get(account_id).unsettled_deposit_spend == {str(second): int(receipt2["core"]["charged"])}
    caught_up_views(ledger, settings.views_path).close()
    report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
    assert report.ok, report.problems


def test_rewards_a_suspension_did_not_reach_are_forfeited_by_the_sweep(ledger, settings):
    """The suspending command forfeits the receipts the views held then; a receipt they had not seen
    yet (the views lag the ledger) and a job finished in flight after the suspension are forfeited by
    the verifier's sweep, once, and not at all for a worker reinstated meanwhile."""
    from basis.verifier.service import forfeit_sweep

    account_id = ledger.open_account("gina")
    ledger.grant("gina", 10**18)
    before = [contributor_job(ledger, account_id, HONEST)[0] for _ in range(2)]
    judge(ledger, before[0], passing())  # the network knows the worker from its first check
    ledger.run(suspend_worker(HONEST, "abuse report 18", []))  # the views had seen none of them
    after, _ = contributor_job(ledger, account_id, HONEST)  # in flight at the suspension, finished after
    r = caught_up_views(ledger, settings.views_path)
    due = [str(j) for j in [*before, after] if int(r.receipt(str(j))["core"]["reward"]) > 0]
    assert due and all(not r.receipt(j)["reward_forfeited"] for j in due)
    assert forfeit_sweep(ledger, r) == len(due)
    r.close()
    r = caught_up_views(ledger, settings.views_path)
    assert all(r.receipt(j)["reward_forfeited"] for j in due)
    assert forfeit_sweep(ledger, r) == 0  # once
    r.close()
    ledger.run(reinstate_worker(HONEST, "appeal upheld"))
    later, _ = contributor_job(ledger, account_id, HONEST)
    r = caught_up_views(ledger, settings.views_path)
    assert forfeit_sweep(ledger, r) == 0 and not r.receipt(str(later))["reward_forfeited"]
    r.close()
    report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
    assert report.ok, report.problems


def test_a_suspension_leaves_the_rewards_of_a_batch_in_flight_to_it(ledger, settings):
    """Regression (review after session 7): a worker suspended while a settlement batch holding its
    rewards is in flight (proposed or submitted, not yet confirmed). That batch's rewards root is
    already posted or about to be, so the suspension must not forfeit those rewards: the batch pays
    them. Before the fix they were forfeited, the batch still paid them, and the audit named the
    batch ("carries reward …, expected 0 (forfeited)"). If the batch is abandoned instead, the
    rewards are the suspended worker's unsettled ones again and the sweep forfeits them."""
    from basis.settlement.batches import abandon_batch, confirm_batch, record_submitted
    from basis.verifier.service import forfeit_sweep

    account_id = ledger.open_account("ivy")
    ledger.grant("ivy", 10**18)
    paid, _ = contributor_job(ledger, account_id, HONEST)
    judge(ledger, paid, passing())
    batch_id = ledger.run(propose_batch(31337, VAULT, DIST, [str(paid)]))
    ledger.run(record_submitted(batch_id, "0x" + "ab" * 32, 7))
    r = caught_up_views(ledger, settings.views_path)
    assert ledger.run(suspend_worker(HONEST, "abuse report 31", r.unsettled_of(HONEST))) == 0
    assert forfeit_sweep(ledger, r) == 0
    r.close()
    with pytest.raises(InvalidTransition):  # the aggregate itself refuses it
        ledger.run(lambda uow: uow.find(type(ledger.get(paid)), paid).forfeit_reward(
            reason="worker suspended", evidence=[], amount=int(ledger.get(paid).receipt["core"]["reward"])))
    assert ledger.run(confirm_batch(batch_id, "0x" + "ab" * 32, 10, 100000, None))
    assert ledger.get(paid).forfeit is None and ledger.get(paid).settlement["batch_id"] == batch_id

    # the same, but the batch is abandoned: the suspended worker's reward goes back to the sweep
    ledger.run(reinstate_worker(HONEST, "appeal upheld"))
    again, _ = contributor_job(ledger, account_id, HONEST)
    if ledger.get(again).awaiting_verdict:
        judge(ledger, again, passing())
    second = ledger.run(propose_batch(31337, VAULT, DIST, [str(again)]))
    assert ledger.get(batch_aggregate_id(second)).rewards
    ledger.run(suspend_worker(HONEST, "abuse report 32", [str(again)]))
    assert ledger.get(again).forfeit is None
    ledger.run(abandon_batch(second, "the vault refused the batch"))
    r = caught_up_views(ledger, settings.views_path)
    assert forfeit_sweep(ledger, r) == 1 and ledger.get(again).forfeit["reason"] == "worker suspended"
    r.close()
    third = ledger.run(propose_batch(31337, VAULT, DIST, [str(again)]))
    paid_before = ledger.get(batch_aggregate_id(batch_id)).rewards  # cumulative: nothing added for `again`
    assert ledger.get(batch_aggregate_id(third)).rewards == paid_before
    caught_up_views(ledger, settings.views_path).close()
    report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
    assert report.ok, report.problems
