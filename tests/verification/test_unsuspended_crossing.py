"""The audit names a worker whose refolded evidence crossed a published threshold (the CUSUM's
worker_threshold or the e-detector's log(1/worker_e_alpha)) at some verdict without a suspension
following, with the job where it crossed. The verifier records the suspension in the command that
records the crossing verdict, so an honest ledger never trips this: not when the operator had
suspended the worker already (no second suspension), and not after a reinstatement (levels cleared)."""

from __future__ import annotations

import json
import sqlite3
import uuid

from basis.ledger import ids
from basis.ledger.audit import audit
from basis.ledger.projections import Projector
from basis.ledger.service import Ledger
from basis.ledger.verdicts import record_verdict, reinstate_worker, suspend_worker
from basis.verification.stats import JobStatistic
from tests.ledger.test_audit import basis_audit
from tests.verification.helpers import CHEAT, HONEST, POLICY, contributor_job, failing, passing
from tests.verification.test_e_detector_ledger import _greedyish

SUSPENDED = "basis:Worker.Suspended.v1"


def checked_jobs(ledger: Ledger, account_id, worker: str, n: int) -> list[uuid.UUID]:
    """n jobs of ``worker`` selected for a check (probation, then the 1-in-2 sample of POLICY)."""
    out: list[uuid.UUID] = []
    while len(out) < n:
        job_id, _ = contributor_job(ledger, account_id, worker)
        if ledger.get(job_id).check:
            out.append(job_id)
    return out


def judge(ledger: Ledger, job_id: uuid.UUID, stat: JobStatistic) -> dict:
    return ledger.run(record_verdict(job_id, ledger.get(job_id).check["ids_sha256"], stat, POLICY))


def new_ledger(settings) -> tuple[Ledger, uuid.UUID]:
    ledger = Ledger(settings, verification=POLICY)
    account_id = ledger.open_account("alice")
    ledger.grant("alice", 10**18)
    return ledger, account_id


def audit_in_process(ledger: Ledger, settings) -> list[str]:
    Projector(ledger.store, settings.views_path).catch_up()
    return audit(ledger.store, settings.views_path, signer=ledger.signer.address).problems


def delete_suspension(settings, address: str) -> None:
    """Remove the worker's suspension event from the store (it is the last event of its stream)."""
    db = sqlite3.connect(settings.events_path)
    deleted = db.execute("DELETE FROM stored_events WHERE originator_id = ? AND topic = ?",
                         (ids.worker_id(address).hex, SUSPENDED)).rowcount
    db.commit()
    db.close()
    assert deleted == 1


def drop_views(settings) -> None:
    for suffix in ("", "-wal", "-shm"):
        (settings.views_path.parent / (settings.views_path.name + suffix)).unlink(missing_ok=True)


def test_a_cusum_crossing_whose_suspension_was_removed_is_named(settings):
    ledger, account_id = new_ledger(settings)
    jobs = checked_jobs(ledger, account_id, CHEAT, 2)
    assert [judge(ledger, j, failing())["suspended"] for j in jobs] == [False, True]  # 6.5, then 13 >= 12
    assert audit_in_process(ledger, settings) == []
    ledger.close()
    delete_suspension(settings, CHEAT)
    drop_views(settings)
    rc, report = basis_audit(settings.home)
    assert rc != 0
    # failing() (u -7.5) twice also takes the fast CUSUM (6 + 6) past its fast_threshold 8
    assert (f"worker {CHEAT}: its CUSUM level 13.0000 crossed worker_threshold 12 and fast CUSUM level 12.0000 "
            f"crossed fast_threshold 8 at job {jobs[1]}, but it was not suspended") in report["problems"], \
        report["problems"]


def test_an_e_detector_crossing_whose_suspension_was_removed_is_named(settings):
    ledger, account_id = new_ledger(settings)
    jobs = checked_jobs(ledger, account_id, CHEAT, 6)
    out = [judge(ledger, jobs[0], _greedyish(-2.0))] + [judge(ledger, j, _greedyish()) for j in jobs[1:]]
    assert [o["suspended"] for o in out] == [False] * 5 + [True]  # M = 20 >= log(1e8) at the 6th
    assert audit_in_process(ledger, settings) == []
    ledger.close()
    delete_suspension(settings, CHEAT)
    rc, report = basis_audit(settings.home)
    assert rc != 0
    assert any(p.startswith(f"worker {CHEAT}: its e-detector level 20.0000 crossed log(1/worker_e_alpha) for alpha "
                            f"1e-08 at job {jobs[5]}, but it was not suspended") for p in report["problems"]), \
        report["problems"]


def test_checks_rewritten_to_cross_are_named(settings):
    """An honest worker's checks edited to fold failing evidence: the refold crosses, nobody was
    suspended, and each edited check disagrees with its job's verdict."""
    ledger, account_id = new_ledger(settings)
    jobs = checked_jobs(ledger, account_id, HONEST, 2)
    assert [judge(ledger, j, passing())["verdict"] for j in jobs] == ["passed"] * 2
    Projector(ledger.store, settings.views_path).catch_up()
    ledger.close()
    db = sqlite3.connect(settings.events_path)
    for rowid, raw in db.execute("SELECT rowid, state FROM stored_events WHERE originator_id = ? AND topic = ?",
                                 (ids.worker_id(HONEST).hex, "basis:Worker.Checked.v1")).fetchall():
        state = json.loads(raw)
        state["evidence"] = -7.5
        db.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (json.dumps(state).encode(), rowid))
    db.commit()
    db.close()
    rc, report = basis_audit(settings.home)
    problems = report["problems"]
    assert rc != 0
    assert (f"worker {HONEST}: its CUSUM level 13.0000 crossed worker_threshold 12 and fast CUSUM level 12.0000 "
            f"crossed fast_threshold 8 at job {jobs[1]}, but it was not suspended") in problems, problems
    assert f"worker {HONEST}: check of job {jobs[0]} folds evidence -7.5, the job's verdict says 0.3" in problems


def test_honest_ledgers_never_trip_it(settings):
    """Suspended by the operator first, then its in-flight jobs fail past the threshold (no second
    suspension); reinstated (levels cleared), one more failure stays below; the next crosses and is
    suspended by the verifier in the same command."""
    ledger, account_id = new_ledger(settings)
    ledger.run(ledger.register_worker(CHEAT, ["basis-default"]))  # as the gateway does at connect
    jobs = checked_jobs(ledger, account_id, CHEAT, 5)
    ledger.run(suspend_worker(CHEAT, "reported by a client"))
    assert [judge(ledger, j, failing())["suspended"] for j in jobs[:3]] == [False] * 3
    worker = ledger.get(ids.worker_id(CHEAT))
    assert worker.evidence.level >= POLICY.worker_threshold and worker.suspended["by"] == "operator"
    assert audit_in_process(ledger, settings) == []
    ledger.run(reinstate_worker(CHEAT, "appeal upheld"))
    assert ledger.get(ids.worker_id(CHEAT)).evidence.level == 0.0
    assert judge(ledger, jobs[3], failing())["suspended"] is False  # 6.5 < 12
    assert judge(ledger, jobs[4], failing())["suspended"] is True  # 13
    assert ledger.get(ids.worker_id(CHEAT)).suspended["by"] == "verifier"
    assert audit_in_process(ledger, settings) == []
    ledger.close()
