"""The fast lower-side CUSUM (sequential.py; policy v4, over each job's opening evidence since v5):
its fold and crossing, a worker suspended by it on a run of jobs that each pass alone and that v3's
CUSUM would not suspend within 5 checked jobs, its forfeits, views and audit, reinstatement clearing
it, and tampering named by the audit. The opening evidence itself: tests/verification/test_opening.py."""

from __future__ import annotations

import numpy as np
import pytest

from basis.ledger import ids
from basis.ledger.audit import audit
from basis.ledger.verdicts import reinstate_worker
from basis.verification.policy import VerificationPolicy
from basis.verification.sequential import FAST_DRIFT, FAST_THRESHOLD, WorkerEvidence
from basis.verification.stats import JobStatistic
from tests.ledger.test_audit import basis_audit
from tests.verification.helpers import CHEAT, POLICY, caught_up_views, contributor_job
from tests.verification.test_e_detector_ledger import _edit_events, _judge
from tests.verification.test_unsuspended_crossing import delete_suspension, new_ledger

# Another model's text at claimed T 1.0 (docs/verification.md): z about -4.9 per 48-token job, each
# inside the job threshold; the test binding is uncalibrated (z_sd 1), so u = z (and a 48-token job's
# opening z is at most its z: here equal).
RUN = (-4.9, -4.4, -4.6)  # fast CUSUM 3.4, 6.3, 9.4 >= 8; v3's lower side 3.9, 7.3, 10.9 < 12
AFTER = (-0.5, -0.8)  # two unremarkable jobs: v3's lower side 10.4, 10.2, still < 12 at the 5th


def _fold(us, **kw) -> list[WorkerEvidence]:
    out, ev = [], WorkerEvidence()
    for u in us:
        ev = ev.update(u, failed=False, drift=1.0, **kw)
        out.append(ev)
    return out


def test_fast_level_folds_the_lower_side_only_and_old_checks_leave_it():
    assert (FAST_DRIFT, FAST_THRESHOLD) == (1.5, 8.0)
    public = VerificationPolicy().public()
    assert (public["fast_drift"], public["fast_threshold"], public["fast_windows"]) == (1.5, 8.0, [24, 48])
    levels = [ev.fast for ev in _fold((-4.0, 3.0, -2.0, -6.5), fast_drift=1.5)]
    assert levels == pytest.approx([2.5, 0.0, 0.5, 5.5])  # output too likely never counts, floor 0
    # a check judged before the fast CUSUM (no fast_drift) leaves it where it was, the rest as before
    old = _fold((-7.5, -7.5))
    assert [ev.fast for ev in old] == [0.0, 0.0] and old[-1].lower == 13.0 and old[-1].crossed(12.0)
    assert not WorkerEvidence(fast=7.99).fast_crossed(8.0) and WorkerEvidence(fast=8.0).fast_crossed(8.0)
    # v5: the fast CUSUM counts the opening evidence when given, u otherwise (greedy, checks before v5)
    ev = WorkerEvidence().update(-5.0, failed=True, drift=1.0, fast_drift=1.5, fast_evidence=0.2)
    assert (ev.fast, ev.lower) == (0.0, 4.0)
    ev = ev.update(-1.0, failed=False, drift=1.0, fast_drift=1.5, fast_evidence=-6.0)
    assert (ev.fast, ev.lower) == (4.5, 4.0)
    assert ev.update(-6.0, failed=True, drift=1.0, fast_drift=1.5).fast == 9.0


def test_the_run_crosses_the_fast_cusum_at_the_third_job_and_v3_not_within_five():
    fast = _fold(RUN + AFTER, fast_drift=FAST_DRIFT)
    assert [ev.fast_crossed(FAST_THRESHOLD) for ev in fast] == [False, False, True, True, False]
    assert [ev.fast for ev in fast] == pytest.approx([3.4, 6.3, 9.4, 8.4, 7.7])
    assert not any(ev.crossed(POLICY.worker_threshold) for ev in _fold(RUN + AFTER))  # v3: 10.9 at most


def test_honest_workers_whose_jobs_fail_tests_at_their_nominal_rate_do_not_cross_8():
    """Honest z ~ N(0, 0.95) (measured sd 0.93-0.95 at top_p 1), 4,000 workers x 2,000 checked jobs
    (seeded). v5's fast CUSUM counts the opening z, min(z over the first 24 tokens, z over 48:
    correlation sqrt(24 / 48)), and not the -5 a job failed by its tests counts in u: none crosses the
    published 8 (docs/benchmarks.md "Policy v5": the real honest jobs reach 3.07 at most)."""
    rng = np.random.default_rng(11)
    workers, checks = 4000, 2000
    opening, top = np.zeros(workers), np.zeros(workers)
    rho = np.sqrt(24 / 48)
    for _ in range(checks):
        z24 = rng.normal(0.0, 1.0, workers)
        z48 = rho * z24 + np.sqrt(1 - rho**2) * rng.normal(0.0, 1.0, workers)
        opening = np.maximum(0.0, opening - 0.95 * np.minimum(z24, z48) - FAST_DRIFT)
        top = np.maximum(top, opening)
    assert top.max() < FAST_THRESHOLD


@pytest.fixture
def fast_suspended(settings):
    ledger, account_id = new_ledger(settings)
    jobs = [contributor_job(ledger, account_id, CHEAT)[0] for _ in range(16)]
    checked = [j for j in jobs if ledger.get(j).check]
    assert len(checked) >= 3
    out = [_judge(ledger, settings, j, JobStatistic(tokens=48, greedy=False, z=z, opening_z=z))
           for j, z in zip(checked[:3], RUN, strict=True)]
    return ledger, jobs, checked[:3], out


def test_the_fast_cusum_suspends_forfeits_and_the_audit_agrees(fast_suspended, settings):
    ledger, jobs, checked, out = fast_suspended
    assert [o["verdict"] for o in out] == ["passed"] * 3  # no job fails alone: nothing refunded
    assert [o["suspended"] for o in out] == [False, False, True]
    worker = ledger.get(ids.worker_id(CHEAT))
    assert worker.evidence.fast == pytest.approx(9.4) and worker.evidence.lower == pytest.approx(10.9)
    assert worker.suspended == {"by": "verifier", "reason": "fast CUSUM 9.40 crossed fast_threshold 8.0 "
                                "(fast_drift 1.5)", "evidence": [str(j) for j in checked]}
    for j in jobs:  # every unsettled reward but the suspending job's (settlement forfeits that one)
        if j != checked[2]:
            assert ledger.get(j).forfeit["reason"] == "worker suspended"
    r = caught_up_views(ledger, settings.views_path)
    status = r.worker_status(CHEAT)
    assert status["status"] == "suspended" and status["fast"] == pytest.approx(9.4)
    r.close()
    report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
    assert report.ok, report.problems
    ledger.run(reinstate_worker(CHEAT, "appeal upheld"))
    worker = ledger.get(ids.worker_id(CHEAT))
    assert worker.evidence.fast == 0.0 and worker.fast_evidence_jobs == [] and worker.evidence.checked == 3
    r = caught_up_views(ledger, settings.views_path)
    assert r.worker_status(CHEAT)["fast"] == 0.0
    r.close()
    report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
    assert report.ok, report.problems
    ledger.close()


def test_a_fast_crossing_whose_suspension_was_removed_is_named(fast_suspended, settings):
    ledger, _, checked, _ = fast_suspended
    ledger.close()
    delete_suspension(settings, CHEAT)
    rc, report = basis_audit(settings.home)
    assert rc != 0
    assert (f"worker {CHEAT}: its fast CUSUM level 9.4000 crossed fast_threshold 8 at job {checked[2]}, but it was "
            "not suspended") in report["problems"], report["problems"]


def test_a_fast_suspension_below_its_recorded_threshold_is_named(fast_suspended, settings):
    ledger, _, _, _ = fast_suspended
    ledger.close()
    assert _edit_events(settings, str(ids.worker_id(CHEAT)), "basis:Worker.Checked.v1",
                        lambda s: s.update(fast_threshold=20.0)) == 3
    rc, report = basis_audit(settings.home)
    assert rc != 0
    assert (f"worker {CHEAT}: suspended by the fast CUSUM at level 9.4000, below its recorded fast_threshold 20.0"
            in report["problems"]), report["problems"]
    # its drift edited instead: the refolded level differs from the views' and misses the threshold
    assert _edit_events(settings, str(ids.worker_id(CHEAT)), "basis:Worker.Checked.v1",
                        lambda s: s.update(fast_threshold=8.0, fast_drift=2.0)) == 3
    rc, report = basis_audit(settings.home)
    assert rc != 0
    assert any(p.startswith(f"worker {CHEAT}: suspended by the fast CUSUM at level 7.9000, below")
               for p in report["problems"]), report["problems"]
