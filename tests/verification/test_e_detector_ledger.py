"""The e-detector in the ledger (DESIGN 1.6): a worker whose checked jobs each pass on their own but
carry temperature log E ~ 4 is suspended once M reaches log(1 / worker_e_alpha), with a reason that
names the e-detector and the jobs since M was last at zero; its unsettled rewards are forfeited;
reinstatement clears M; events of the old shape replay and audit unchanged; tampering is named."""

from __future__ import annotations

import json
import math
import sqlite3
import uuid

import pytest

from basis.ledger import ids
from basis.ledger.audit import audit
from basis.ledger.projections import Projector
from basis.ledger.service import Ledger
from basis.ledger.verdicts import record_verdict, reinstate_worker
from basis.verification.stats import JobStatistic
from tests.ledger.test_audit import basis_audit
from tests.verification.helpers import CHEAT, HONEST, POLICY, caught_up_views, contributor_job

LOG_E = 4.0  # about what Gemma greedy claiming T 0.7 gives per job (docs/verification.md)


def _greedyish(log_e: float = LOG_E) -> JobStatistic:
    """A job that passes alone (z unremarkable, temperature p above temperature_alpha) but is e-evidence."""
    return JobStatistic(tokens=8, greedy=False, z=0.5, temperature=min(1.0, math.exp(-log_e)),
                        temperature_ratio=0.25, temperature_log_e=log_e)


def _judge(ledger: Ledger, settings, job_id, stat: JobStatistic) -> dict:
    job = ledger.get(job_id)
    r = caught_up_views(ledger, settings.views_path)
    unsettled = r.unsettled_of(job.worker)
    r.close()
    return ledger.run(record_verdict(job_id, job.check["ids_sha256"], stat, POLICY, unsettled))


@pytest.fixture
def e_suspended(settings):
    """A cheat whose checked jobs pass one by one: one honest-looking job (log E -2) first, then
    log E 4 each; M = 4k crosses log(1e8) = 18.4 on the 5th such job."""
    ledger = Ledger(settings, verification=POLICY)
    account_id = ledger.open_account("eve")
    ledger.grant("eve", 10**18)
    jobs = [contributor_job(ledger, account_id, CHEAT)[0] for _ in range(24)]
    checked = [j for j in jobs if ledger.get(j).check]
    assert len(checked) >= 7
    out = [_judge(ledger, settings, checked[0], _greedyish(-2.0))]
    out += [_judge(ledger, settings, j, _greedyish()) for j in checked[1:6]]
    return ledger, jobs, checked, out


def test_the_e_detector_suspends_after_the_expected_checks_and_forfeits(e_suspended, settings):
    ledger, jobs, checked, out = e_suspended
    assert [o["verdict"] for o in out] == ["passed"] * 6  # no job fails alone
    assert [o["suspended"] for o in out] == [False] * 5 + [True]  # 20 >= 18.4 at the 5th
    worker = ledger.get(ids.worker_id(CHEAT))
    assert worker.evidence.level == 0.0 and worker.evidence.e_level == pytest.approx(5 * LOG_E)
    assert worker.suspended["by"] == "verifier"
    assert worker.suspended["reason"] == ("e-detector log E 20.00 crossed log(1/worker_e_alpha) 18.42 "
                                          "(worker_e_alpha 1e-08)")
    # the jobs since M was last at zero (the -2 job left it at 0), not the CUSUM's (empty)
    assert worker.suspended["evidence"] == [str(j) for j in checked[1:6]]
    # every unsettled reward of it is forfeited, passed jobs included, citing the e-detector's jobs
    # (the suspending job's own is left to settlement, which forfeits it while it stays suspended)
    for j in jobs:
        if j != checked[5]:
            assert ledger.get(j).forfeit == {"reason": "worker suspended", "evidence": [str(x) for x in checked[1:6]],
                                             "amount": int(ledger.get(j).receipt["core"]["reward"])}
    r = caught_up_views(ledger, settings.views_path)
    status = r.worker_status(CHEAT)
    assert status["status"] == "suspended" and status["e_level"] == pytest.approx(20.0)
    assert status["reason"].startswith("e-detector")
    r.close()
    report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
    assert report.ok, report.problems
    # reinstated: M cleared in the aggregate and the views, and the audit agrees
    ledger.run(reinstate_worker(CHEAT, "appeal upheld"))
    worker = ledger.get(ids.worker_id(CHEAT))
    assert worker.evidence.e_level == 0.0 and worker.e_evidence_jobs == [] and worker.evidence.checked == 6
    r = caught_up_views(ledger, settings.views_path)
    assert r.worker_status(CHEAT)["e_level"] == 0.0
    r.close()
    report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
    assert report.ok, report.problems
    ledger.close()


def _edit_events(settings, originator: str, topic: str, edit) -> int:
    db = sqlite3.connect(settings.events_path)
    rows = db.execute("SELECT rowid, state FROM stored_events WHERE originator_id = ? AND topic = ?",
                      (uuid.UUID(originator).hex, topic)).fetchall()
    for rowid, raw in rows:
        state = json.loads(raw)
        edit(state)
        db.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (json.dumps(state).encode(), rowid))
    db.commit()
    db.close()
    return len(rows)


def test_tampered_log_e_and_alpha_are_named(e_suspended, settings):
    ledger, _, checked, _ = e_suspended
    Projector(ledger.store, settings.views_path).catch_up()
    ledger.close()
    rc, report = basis_audit(settings.home)
    assert rc == 0, report["problems"]
    target = str(checked[2])
    _edit_events(settings, target, "basis:Job.Verified.v1", lambda s: s["statistic"].update(temperature_log_e=9.0))
    rc, report = basis_audit(settings.home)
    problems = report["problems"]
    assert rc != 0
    assert any(p.startswith(f"job {target}: temperature log E 9.0 does not give its temperature p-value")
               for p in problems), problems
    assert any(p == f"worker {CHEAT}: check of job {target} carries log E {LOG_E}, the job's verdict statistic "
               f"says 9.0" for p in problems), problems
    # the worker's alpha lowered in its checks: M 20 no longer reaches log(1/alpha)
    _edit_events(settings, target, "basis:Job.Verified.v1", lambda s: s["statistic"].update(temperature_log_e=LOG_E))
    assert _edit_events(settings, str(ids.worker_id(CHEAT)), "basis:Worker.Checked.v1",
                        lambda s: s.update(worker_e_alpha=1e-12)) == 6
    rc, report = basis_audit(settings.home)
    assert rc != 0
    assert any(p.startswith(f"worker {CHEAT}: suspended by the e-detector at log E 20.0000, below")
               for p in report["problems"]), report["problems"]


# what a Worker.Checked written before the e-detector lacks (and the fast CUSUM's fields, v4 and v5)
OLD_SHAPE_DROPS = ("log_e", "worker_e_alpha", "fast_drift", "fast_threshold", "fast_evidence")


def test_events_of_the_old_shape_replay_and_audit_unchanged(settings):
    """Verdicts and checks from before the e-detector (no temperature_log_e, no log_e / worker_e_alpha,
    nor the later fast CUSUM's fast_drift / fast_threshold, and a suspension reason naming the CUSUM
    alone): the CUSUM suspends as before, M and the fast level stay 0, the audit passes."""
    ledger = Ledger(settings, verification=POLICY)
    account_id = ledger.open_account("fay")
    ledger.grant("fay", 10**18)
    for worker, stat in ((HONEST, _greedyish(1.0)), (CHEAT, JobStatistic(tokens=8, greedy=False, z=-7.5))):
        for _ in range(2):
            job_id, _ = contributor_job(ledger, account_id, worker)
            ledger.run(record_verdict(job_id, ledger.get(job_id).check["ids_sha256"], stat, POLICY))
    Projector(ledger.store, settings.views_path).catch_up()
    ledger.close()
    for worker in (HONEST, CHEAT):
        _edit_events(settings, str(ids.worker_id(worker)), "basis:Worker.Checked.v1",
                     lambda s: [s.pop(k) for k in OLD_SHAPE_DROPS])
    assert _edit_events(settings, str(ids.worker_id(CHEAT)), "basis:Worker.Suspended.v1",
                        lambda s: s.update(reason="evidence 13.00 crossed worker_threshold 12.0")) == 1
    db = sqlite3.connect(settings.events_path)
    jobs = [r[0] for r in db.execute("SELECT originator_id FROM stored_events WHERE topic = 'basis:Job.Verified.v1'")]
    db.close()
    for job in jobs:
        _edit_events(settings, str(uuid.UUID(job)), "basis:Job.Verified.v1",
                     lambda s: s["statistic"].pop("temperature_log_e"))
    for suffix in ("", "-wal", "-shm"):
        (settings.views_path.parent / (settings.views_path.name + suffix)).unlink(missing_ok=True)
    rc, report = basis_audit(settings.home)
    assert rc == 0 and report["ok"], report["problems"]
    ledger = Ledger(settings, verification=POLICY)
    cheat, honest = ledger.get(ids.worker_id(CHEAT)), ledger.get(ids.worker_id(HONEST))
    assert cheat.suspended["reason"] == "evidence 13.00 crossed worker_threshold 12.0"
    assert honest.evidence.e_level == 0.0 and cheat.evidence.e_level == 0.0 and honest.evidence.checked == 2
    assert cheat.evidence.fast == 0.0 and cheat.fast_evidence_jobs == []
    ledger.close()
