"""A verdict or a forfeit edited inside the events table is named by `basis audit` (the real CLI,
on a real SQLite store), whether the live views were built before or after the edit."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest

from basis.ledger.projections import Projector
from basis.ledger.service import Ledger
from basis.ledger.verdicts import record_verdict
from basis.verification.stats import JobStatistic
from tests.ledger.test_audit import basis_audit
from tests.verification.helpers import CHEAT, HONEST, POLICY, contributor_job, failing, passing


@pytest.fixture
def judged(settings):
    """One failed (refunded, forfeited) job of a cheat and one passed job of an honest worker."""
    ledger = Ledger(settings, verification=POLICY)
    account_id = ledger.open_account("alice")
    ledger.grant("alice", 10**18)
    failed, _ = contributor_job(ledger, account_id, CHEAT)
    passed, _ = contributor_job(ledger, account_id, HONEST)
    for job_id, stat in ((failed, failing()), (passed, passing())):
        ledger.run(record_verdict(job_id, ledger.get(job_id).check["ids_sha256"], stat, POLICY))
    Projector(ledger.store, settings.views_path).catch_up()
    ledger.close()
    return settings, str(failed), str(passed)


def _edit_event(settings, job_id: str, topic: str, edit) -> None:
    db = sqlite3.connect(settings.events_path)
    row = db.execute("SELECT rowid, state FROM stored_events WHERE originator_id = ? AND topic = ?",
                     (uuid.UUID(job_id).hex, topic)).fetchone()
    assert row is not None, f"no {topic} event to tamper with"
    state = json.loads(row[1])
    edit(state)
    db.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (json.dumps(state).encode(), row[0]))
    db.commit()
    db.close()


def _drop_views(settings) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(settings.views_path) + suffix).unlink(missing_ok=True)


def test_untouched_verdicts_pass_the_audit(judged):
    settings, _, _ = judged
    rc, report = basis_audit(settings.home)
    assert rc == 0 and report["ok"], report["problems"]


@pytest.mark.parametrize("views_after", [False, True], ids=["views-before", "views-after"])
def test_a_failed_verdict_edited_to_passed_is_named(judged, views_after):
    settings, failed, _ = judged
    if views_after:
        _drop_views(settings)
    _edit_event(settings, failed, "basis:Job.Verified.v1", lambda s: s.update(verdict="passed"))
    rc, report = basis_audit(settings.home)
    problems = report["problems"]
    assert rc != 0 and not report["ok"]
    assert any(p.startswith(f"job {failed}: verdict 'passed' but its statistic decides 'failed'") for p in problems), \
        problems
    assert any(p.startswith(f"refund {failed}") and "no failed verdict" in p for p in problems), problems
    assert any(p.startswith(f"job {failed}: reward forfeited for failed verification without") for p in problems)


def test_a_passed_statistic_rewritten_is_named(judged):
    """Someone who edits the statistic so that it no longer decides the recorded verdict."""
    settings, _, passed = judged
    _edit_event(settings, passed, "basis:Job.Verified.v1", lambda s: s["statistic"].update(z=-40.0))
    rc, report = basis_audit(settings.home)
    assert rc != 0
    assert any(p.startswith(f"job {passed}: verdict 'passed' but its statistic decides 'failed'")
               for p in report["problems"]), report["problems"]


@pytest.mark.parametrize("views_after", [False, True], ids=["views-before", "views-after"])
def test_an_edited_forfeit_is_named(judged, views_after):
    settings, failed, _ = judged
    if views_after:
        _drop_views(settings)
    _edit_event(settings, failed, "basis:Job.RewardForfeited.v1", lambda s: s.update(amount=1))
    rc, report = basis_audit(settings.home)
    assert rc != 0
    assert any(p.startswith(f"job {failed}: forfeit of 1 is not its receipt's reward") for p in report["problems"]), \
        report["problems"]


def test_an_edited_suspension_evidence_is_named(settings):
    ledger = Ledger(settings, verification=POLICY)
    account_id = ledger.open_account("bob")
    ledger.grant("bob", 10**18)
    honest, _ = contributor_job(ledger, account_id, HONEST)
    ledger.run(record_verdict(honest, ledger.get(honest).check["ids_sha256"], passing(), POLICY))
    for _ in range(2):  # two failed jobs: the cheat's evidence crosses the threshold
        job_id, _ = contributor_job(ledger, account_id, CHEAT)
        ledger.run(record_verdict(job_id, ledger.get(job_id).check["ids_sha256"], failing(), POLICY))
    from basis.ledger import ids

    assert ledger.get(ids.worker_id(CHEAT)).is_suspended
    Projector(ledger.store, settings.views_path).catch_up()
    ledger.close()
    rc, report = basis_audit(settings.home)
    assert rc == 0, report["problems"]
    _edit_event(settings, str(ids.worker_id(CHEAT)), "basis:Worker.Suspended.v1",
                lambda s: s.update(evidence=[str(honest)]))
    rc, report = basis_audit(settings.home)
    assert rc != 0
    assert any(p == f"worker {CHEAT}: suspension cites job {honest}, not a checked job of it"
               for p in report["problems"]), report["problems"]


def test_an_edited_probation_is_named(settings):
    """A reinstated worker goes back on probation (Worker.ProbationStarted, right after its
    Reinstated event, from its checked count then); a start moved in the log is named."""
    from basis.ledger import ids
    from basis.ledger.verdicts import reinstate_worker, suspend_worker

    ledger = Ledger(settings, verification=POLICY)
    account_id = ledger.open_account("cy")
    ledger.grant("cy", 10**18)
    job_id, _ = contributor_job(ledger, account_id, HONEST)
    ledger.run(record_verdict(job_id, ledger.get(job_id).check["ids_sha256"], passing(), POLICY))
    ledger.run(suspend_worker(HONEST, "abuse report"))
    ledger.run(reinstate_worker(HONEST, "appeal upheld"))
    Projector(ledger.store, settings.views_path).catch_up()
    ledger.close()
    rc, report = basis_audit(settings.home)
    assert rc == 0, report["problems"]
    _edit_event(settings, str(ids.worker_id(HONEST)), "basis:Worker.ProbationStarted.v1",
                lambda s: s.update(from_checked=7))
    rc, report = basis_audit(settings.home)
    assert rc != 0
    assert f"worker {HONEST}: probation from 7 checked jobs, its verdicts say 1" in report["problems"], \
        report["problems"]


@pytest.fixture
def judged_by_temperature(settings):
    """A job failed by its temperature test alone (z unremarkable, p below temperature_alpha, a colder
    ratio won), one passed with a temperature p-value, and one judged the v2 way (no temperature)."""
    ledger = Ledger(settings, verification=POLICY)
    account_id = ledger.open_account("dee")
    ledger.grant("dee", 10**18)
    jobs = {}
    stats = {"greedy": JobStatistic(tokens=8, greedy=False, z=1.8, temperature=1e-6, temperature_ratio=0.25),
             "passed": JobStatistic(tokens=8, greedy=False, z=0.3, temperature=0.4, temperature_ratio=1.5),
             "v2": passing()}
    for name, stat in stats.items():
        job_id, _ = contributor_job(ledger, account_id, CHEAT if name == "greedy" else HONEST)
        out = ledger.run(record_verdict(job_id, ledger.get(job_id).check["ids_sha256"], stat, POLICY))
        assert out["verdict"] == ("failed" if name == "greedy" else "passed")
        jobs[name] = str(job_id)
    Projector(ledger.store, settings.views_path).catch_up()
    ledger.close()
    rc, report = basis_audit(settings.home)
    assert rc == 0 and report["ok"], report["problems"]
    return settings, jobs


def test_a_verdict_of_the_old_shape_still_re_decides_equal(judged_by_temperature):
    """A v2 verdict event: no temperature in its statistic and no temperature_alpha beside it."""
    settings, jobs = judged_by_temperature

    def to_v2(state):
        state.pop("temperature_alpha")
        for key in ("temperature", "temperature_ratio"):
            state["statistic"].pop(key)
        state["method"] = "teacher-forced-z/v2"

    _edit_event(settings, jobs["v2"], "basis:Job.Verified.v1", to_v2)
    _drop_views(settings)
    rc, report = basis_audit(settings.home)
    assert rc == 0 and report["ok"], report["problems"]
    ledger = Ledger(settings, verification=POLICY)  # the job replays from the old-shape event
    verdict = ledger.get(uuid.UUID(jobs["v2"])).verdict
    ledger.close()
    assert verdict["temperature_alpha"] is None and "temperature" not in verdict["statistic"]


def test_a_tampered_temperature_p_value_is_named(judged_by_temperature):
    settings, jobs = judged_by_temperature
    _edit_event(settings, jobs["passed"], "basis:Job.Verified.v1", lambda s: s["statistic"].update(temperature=1e-9))
    _edit_event(settings, jobs["greedy"], "basis:Job.Verified.v1", lambda s: s["statistic"].update(temperature=0.3))
    rc, report = basis_audit(settings.home)
    problems = report["problems"]
    assert rc != 0
    assert any(p.startswith(f"job {jobs['passed']}: verdict 'passed' but its statistic decides 'failed'")
               for p in problems), problems
    assert any(p.startswith(f"job {jobs['greedy']}: verdict 'failed' but its statistic decides 'passed'")
               for p in problems), problems


def test_the_audit_re_decides_with_the_recorded_temperature_alpha(judged_by_temperature):
    """The alpha travels with the verdict: lowered in the event below the job's p-value, the
    recorded failure no longer follows from it."""
    settings, jobs = judged_by_temperature
    _edit_event(settings, jobs["greedy"], "basis:Job.Verified.v1", lambda s: s.update(temperature_alpha=1e-9))
    rc, report = basis_audit(settings.home)
    assert rc != 0
    assert any(p.startswith(f"job {jobs['greedy']}: verdict 'failed' but its statistic decides 'passed'")
               for p in report["problems"]), report["problems"]
