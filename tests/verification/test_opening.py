"""The opening evidence of policy v5 (stats.opening_z, stats.opening_evidence): the smallest z over a
job's first 24 and 48 output tokens, what the fast CUSUM counts. Another model's text shows in its
opening and thins after it, so a long job's whole z dilutes it; a job failed by a test counts -5 in u
whatever its z, and the fast CUSUM no longer counts that."""

from __future__ import annotations

import math

import pytest

from basis.engines.scoring import TokenScore
from basis.ledger import ids
from basis.ledger.audit import audit
from basis.verification.stats import Calibration, JobStatistic, job_statistic, judge_job, opening_evidence
from tests.ledger.test_audit import basis_audit
from tests.verification.helpers import CHEAT, HONEST, POLICY, caught_up_views, contributor_job
from tests.verification.test_e_detector_ledger import _edit_events, _judge
from tests.verification.test_unsuspended_crossing import new_ledger


def _scores(excess: list[float]) -> list[TokenScore]:
    """Positions whose log-probability is ``excess`` above its expectation, variance 1 each."""
    return [TokenScore(logprob=-2.0 + x, expected=-2.0, variance=1.0, rank=1, tail=0.5) for x in excess]


def test_the_opening_z_is_the_smallest_z_over_the_first_24_and_48_tokens():
    # an unlikely opening (24 tokens at -1) and a likely rest (+0.2): the whole z hides it
    stat = job_statistic(_scores([-1.0] * 24 + [0.2] * 104), 1.0)
    assert stat.z == pytest.approx((-24 + 104 * 0.2) / math.sqrt(128))  # -0.28
    assert stat.opening_z == pytest.approx(-24 / math.sqrt(24))  # -4.90, below z over 48 (-2.77)
    # the opening's second half worse than its first: the 48-token window is the smaller
    stat = job_statistic(_scores([-0.2] * 24 + [-1.5] * 24 + [0.5] * 80), 1.0)
    assert stat.opening_z == pytest.approx((-0.2 * 24 - 1.5 * 24) / math.sqrt(48))
    # a window past the end is the whole job: a 20-token job's opening z is its z; 30: min(z24, z30)
    short = job_statistic(_scores([-0.5] * 20), 1.0)
    assert short.opening_z == short.z
    mid = job_statistic(_scores([0.3] * 24 + [-2.0] * 6), 1.0)
    assert mid.opening_z == pytest.approx(mid.z) and mid.z < (0.3 * 24) / math.sqrt(24)
    # greedy jobs have none (their evidence is argmax agreement)
    assert job_statistic(_scores([0.0] * 8), 0.0).opening_z is None


def test_opening_evidence_is_standardised_like_z_and_absent_for_greedy_and_old_statistics():
    cal = Calibration(z_mean=0.1, z_sd=1.1)
    assert opening_evidence(JobStatistic(tokens=48, greedy=False, z=-1.0, opening_z=-4.5), cal) == pytest.approx(
        (-4.5 - 0.1) / 1.1)
    assert opening_evidence(JobStatistic(tokens=48, greedy=False, z=-1.0), cal) is None  # judged before v5
    assert opening_evidence(JobStatistic(tokens=8, greedy=True, agreement=0.5), cal) is None
    # it decides no job: the verdict and u are z's
    stat = JobStatistic(tokens=48, greedy=False, z=-1.0, opening_z=-9.0)
    assert judge_job(stat, cal, 5.0) == ("passed", pytest.approx((-1.0 - 0.1) / 1.1))


OPENING = (-4.6, -4.5, -4.7)  # fast CUSUM 3.1, 6.1, 9.3 >= 8
DILUTED = -1.5  # each job's whole z: v3's lower side 0.5 a job, u far inside the job threshold


def worker_evidence_jobs(ledger) -> list[str]:
    return list(ledger.get(ids.worker_id(CHEAT)).suspended["evidence"])


@pytest.fixture
def opening_suspended(settings):
    ledger, account_id = new_ledger(settings)
    jobs = [contributor_job(ledger, account_id, CHEAT, output_tokens=64)[0] for _ in range(16)]
    checked = [j for j in jobs if ledger.get(j).check]
    assert len(checked) >= 3
    out = [_judge(ledger, settings, j, JobStatistic(tokens=64, greedy=False, z=DILUTED, opening_z=o))
           for j, o in zip(checked[:3], OPENING, strict=True)]
    return ledger, checked[:3], out


def test_long_jobs_whose_opening_is_another_models_suspend_by_the_fast_cusum(opening_suspended, settings):
    ledger, checked, out = opening_suspended
    assert [o["verdict"] for o in out] == ["passed"] * 3
    assert [o["suspended"] for o in out] == [False, False, True]
    assert worker_evidence_jobs(ledger) == [str(j) for j in checked]
    worker = ledger.get(ids.worker_id(CHEAT))
    assert worker.evidence.fast == pytest.approx(9.3) and worker.evidence.lower == pytest.approx(1.5)
    assert worker.suspended["reason"] == "fast CUSUM 9.30 crossed fast_threshold 8.0 (fast_drift 1.5)"
    r = caught_up_views(ledger, settings.views_path)
    assert r.worker_status(CHEAT)["fast"] == pytest.approx(9.3)
    r.close()
    report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
    assert report.ok, report.problems
    ledger.close()


def test_a_check_whose_fast_evidence_is_not_its_verdicts_opening_is_named(opening_suspended, settings):
    ledger, checked, _ = opening_suspended
    ledger.close()
    rc, report = basis_audit(settings.home)
    assert rc == 0, report["problems"]
    # the recorded opening evidence swapped for the (milder) u: the fold no longer crosses either
    assert _edit_events(settings, str(ids.worker_id(CHEAT)), "basis:Worker.Checked.v1",
                        lambda s: s.update(fast_evidence=DILUTED)) == 3
    rc, report = basis_audit(settings.home)
    assert rc != 0
    for job, opening in zip(checked, OPENING, strict=True):
        assert (f"worker {CHEAT}: check of job {job} counts fast CUSUM evidence {DILUTED}, the job's verdict "
                f"statistic gives {opening}") in report["problems"], report["problems"]
    assert any("suspended by the fast CUSUM at level 0.0000, below" in p for p in report["problems"])
    # the checks restored, and one verdict's opening z edited instead: named at its check
    recorded = dict(zip(map(str, checked), OPENING, strict=True))
    _edit_events(settings, str(ids.worker_id(CHEAT)), "basis:Worker.Checked.v1",
                 lambda s: s.update(fast_evidence=recorded[s["job_id"]]))
    _edit_events(settings, str(checked[0]), "basis:Job.Verified.v1",
                 lambda s: s["statistic"].update(opening_z=-0.5))
    rc, report = basis_audit(settings.home)
    assert rc != 0
    assert (f"worker {CHEAT}: check of job {checked[0]} counts fast CUSUM evidence -4.6, the job's verdict "
            "statistic gives -0.5") in report["problems"], report["problems"]


def test_an_honest_job_failed_by_its_tail_test_does_not_move_the_fast_cusum(settings):
    ledger, account_id = new_ledger(settings)
    jobs = [contributor_job(ledger, account_id, HONEST, output_tokens=40)[0] for _ in range(6)]
    checked = [j for j in jobs if ledger.get(j).check][:2]
    # two honest-looking jobs, each failed by its tail test (two absurd tokens): u = -6 (the job
    # threshold) each, so v3's lower side moves; the opening z is the job's own, 0.1
    tail_failed = JobStatistic(tokens=40, greedy=False, z=0.1, tail=1e-9, opening_z=0.1)
    out = [_judge(ledger, settings, j, tail_failed) for j in checked]
    assert [o["verdict"] for o in out] == ["failed", "failed"]
    worker = ledger.get(ids.worker_id(HONEST))
    assert worker.evidence.fast == 0.0 and worker.evidence.lower == pytest.approx(10.0)
    assert not worker.is_suspended
    report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
    assert report.ok, report.problems
    ledger.close()


def test_greedy_jobs_and_statistics_from_before_v5_count_u_in_the_fast_cusum(settings):
    ledger, account_id = new_ledger(settings)
    jobs = [contributor_job(ledger, account_id, HONEST, output_tokens=40)[0] for _ in range(6)]
    checked = [j for j in jobs if ledger.get(j).check][:2]
    old = JobStatistic(tokens=40, greedy=False, z=-4.0)  # no opening z: judged as before v5
    greedy = JobStatistic(tokens=40, greedy=True, agreement=0.9)
    cal = POLICY.calibration_for("basis-default")
    u = [judge_job(stat, cal, POLICY.job_threshold)[1] for stat in (old, greedy)]
    for job, stat in zip(checked, (old, greedy), strict=True):
        _judge(ledger, settings, job, stat)
    worker = ledger.get(ids.worker_id(HONEST))
    expected = max(0.0, max(0.0, -u[0] - 1.5) - u[1] - 1.5)
    assert u[0] == -4.0 and u[1] < 0 and worker.evidence.fast == pytest.approx(expected)
    report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
    assert report.ok, report.problems
    ledger.close()
