"""The audit of verification (DESIGN 1.6): every consequence recomputed from the verdict events.

- each verdict re-decided from its recorded statistic, threshold and calibration;
- a failed job: refunded exactly its charge (one ``refund`` credit, external id = job id) and its
  reward forfeited; a refund or a forfeit without that cause is named;
- a forfeit names the receipt's own reward; one "worker suspended" forfeit needs the worker to
  have been suspended at that point of the log;
- each worker's checked / failed counts and CUSUM levels refolded from its verdicts;
- a worker back on probation only right after its reinstatement, from its checked count then;
- settled batches: no job settled while awaiting its verdict; a forfeited reward carried as 0;
  the rewards view's ``settled`` equals the sum of the settled rewards not forfeited.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

from eventsourcing.application import AggregateNotFoundError

from basis.ledger.projections import ViewReader
from basis.ledger.store import LedgerStore
from basis.verification.reported_logprobs import judge_reported, split_statistic
from basis.verification.sequential import WorkerEvidence
from basis.verification.stats import Calibration, JobStatistic, judge_job

TOPICS = ("basis:Job.Verified.v1", "basis:Job.RewardForfeited.v1", "basis:Worker.Checked.v1",
          "basis:Worker.Suspended.v1", "basis:Worker.Reinstated.v1", "basis:Worker.ProbationStarted.v1",
          "basis:Job.CheckRequested.v1",
          "basis:Job.Settled.v1")


class ReceiptCores:
    """Receipt cores by job id, read from the replayed views when asked (not all held in memory:
    an audit's memory stays flat however many receipts the ledger holds)."""

    def __init__(self, replay: ViewReader) -> None:
        self.db = replay.db

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT core FROM receipts WHERE job_id = ?", (job_id,)).fetchone()
        return json.loads(row[0]) if row else None


def check_verification(replay: ViewReader, store: LedgerStore, problems: list[str], upto: int | None = None) -> None:
    db = replay.db
    receipts = ReceiptCores(replay)
    refunds = {r["external_id"]: (r["account_id"], int(r["amount"]))
               for r in db.execute("SELECT external_id, account_id, amount FROM credits WHERE source = 'refund'")}
    verdicts: dict[str, str] = {}
    forfeited: set[str] = set()
    requested: set[str] = set()
    suspended: set[str] = set()
    folded: dict[str, WorkerEvidence] = defaultdict(WorkerEvidence)
    decode = store.mapper.transcoder.decode
    worker_of: dict[str, str] = {r["worker_id"]: r["address"] for r in db.execute(
        "SELECT worker_id, address FROM workers")}
    reinstated_last: str | None = None  # the worker whose reinstatement is the previous event, if any
    for job_id, topic, d in _events(store, decode, upto):
        just_reinstated, reinstated_last = reinstated_last, None
        if topic == "basis:Job.CheckRequested.v1":
            requested.add(job_id)
        elif topic == "basis:Job.Verified.v1":
            verdicts[job_id] = d["verdict"]
            _rejudge(job_id, d, problems)
            if job_id not in requested:
                problems.append(f"job {job_id}: a verdict without a check request")
        elif topic == "basis:Job.RewardForfeited.v1":
            forfeited.add(job_id)
            core = receipts.get(job_id)
            if core is None or int(d.get("amount", -1)) != int(core["reward"]):
                problems.append(f"job {job_id}: forfeit of {d.get('amount')} is not its receipt's reward "
                                f"{core['reward'] if core else None}")
            worker = (core or {}).get("worker")
            if d["reason"] == "failed verification" and verdicts.get(job_id) != "failed":
                problems.append(f"job {job_id}: reward forfeited for failed verification without a failed verdict")
            elif d["reason"] == "worker suspended" and worker not in suspended:
                problems.append(f"job {job_id}: reward forfeited for a suspension of {worker}, who was not suspended")
            elif d["reason"] not in ("failed verification", "worker suspended"):
                problems.append(f"job {job_id}: reward forfeited for an unknown reason {d['reason']!r}")
        elif topic == "basis:Job.Settled.v1" and job_id in requested and job_id not in verdicts:
            problems.append(f"job {job_id}: settled while awaiting its verdict")
        elif topic == "basis:Worker.Checked.v1":
            address = worker_of.get(job_id, job_id)
            if verdicts.get(d["job_id"]) != d["verdict"]:
                problems.append(f"worker {address}: check of job {d['job_id']} says {d['verdict']}, the job's "
                                f"verdict is {verdicts.get(d['job_id'])}")
            folded[address] = folded[address].update(d["evidence"], failed=d["verdict"] == "failed",
                                                     drift=d["drift"])
        elif topic == "basis:Worker.Suspended.v1":
            address = worker_of.get(job_id, job_id)
            suspended.add(address)
            if d["by"] == "verifier":  # its evidence: checked jobs of this worker, and evidence there was
                for ev_job in d["evidence"]:
                    if ev_job not in verdicts or (receipts.get(ev_job) or {}).get("worker") != address:
                        problems.append(f"worker {address}: suspension cites job {ev_job}, not a checked job of it")
                if not d["evidence"] or folded[address].level <= 0:
                    problems.append(f"worker {address}: suspended by the verifier without accumulated evidence")
        elif topic == "basis:Worker.Reinstated.v1":
            address = worker_of.get(job_id, job_id)
            suspended.discard(address)
            ev = folded[address]
            folded[address] = WorkerEvidence(checked=ev.checked, failed=ev.failed)
            reinstated_last = address
        elif topic == "basis:Worker.ProbationStarted.v1":
            address = worker_of.get(job_id, job_id)
            if just_reinstated != address:
                problems.append(f"worker {address}: put on probation without being reinstated just before")
            if int(d["from_checked"]) != folded[address].checked:
                problems.append(f"worker {address}: probation from {d['from_checked']} checked jobs, its verdicts "
                                f"say {folded[address].checked}")
    for job_id, verdict in sorted(verdicts.items()):
        core = receipts.get(job_id)
        refund = refunds.get(job_id)
        if verdict == "failed":
            charged = int(core["charged"]) if core else 0
            if charged and (refund is None or refund[1] != charged):
                problems.append(f"job {job_id}: failed verification but refunded {refund[1] if refund else 0}, "
                                f"not its charge {charged}")
            if job_id not in forfeited:
                problems.append(f"job {job_id}: failed verification but its reward was not forfeited")
    for job_id, (_account, amount) in sorted(refunds.items()):
        if verdicts.get(job_id) != "failed":
            problems.append(f"refund {job_id} of {amount}: the job has no failed verdict")
    _check_workers(replay, folded, problems)
    _check_batches(replay, store, forfeited, receipts, problems)


def _events(store: LedgerStore, decode: Any, upto: int | None = None):
    """(originator id text, topic, decoded state) of the verification events, in log order, up to
    position ``upto`` (the audited snapshot) when given."""
    start = 0
    while True:
        page = list(store.recorder.select_notifications(start, 5000, stop=upto, inclusive_of_start=False,
                                                        topics=TOPICS))
        if not page:
            return
        for n in page:
            yield str(n.originator_id), n.topic, decode(n.state)
        start = page[-1].id


def _rejudge(job_id: str, d: dict[str, Any], problems: list[str]) -> None:
    try:
        own, reported = split_statistic(d["statistic"])
        stat = JobStatistic(**own)
        # the alphas the verdict was judged with (recorded from v2 / v3 on; older verdicts: the defaults,
        # and a statistic without a temperature p-value is judged as before whatever its alpha)
        extra = {k: float(d[k]) for k in ("tail_alpha", "repeat_alpha", "temperature_alpha") if d.get(k) is not None}
        verdict, u = judge_job(stat, Calibration(**d["calibration"]), float(d["job_threshold"]), **extra)
        verdict, u = judge_reported(verdict, u, reported, float(d["job_threshold"]))
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        problems.append(f"job {job_id}: verdict cannot be re-decided from its statistic ({exc})")
        return
    if verdict != d["verdict"]:
        problems.append(f"job {job_id}: verdict {d['verdict']!r} but its statistic decides {verdict!r}")
    if not math.isclose(u, float(d["evidence"]), rel_tol=1e-9, abs_tol=1e-9):
        problems.append(f"job {job_id}: recorded evidence {d['evidence']} != recomputed {u}")


def _check_workers(replay: ViewReader, folded: dict[str, WorkerEvidence], problems: list[str]) -> None:
    for row in replay.db.execute("SELECT * FROM worker_status"):
        ev = folded.get(row["address"], WorkerEvidence())
        if (row["checked"], row["failed"]) != (ev.checked, ev.failed):
            problems.append(f"worker {row['address']}: {row['checked']} checked / {row['failed']} failed, its "
                            f"verdicts say {ev.checked} / {ev.failed}")


def _check_batches(replay: ViewReader, store: LedgerStore, forfeited: set[str], receipts: ReceiptCores,
                   problems: list[str]) -> None:
    from basis.ledger.settlement import batch_aggregate_id

    for row in replay.db.execute("SELECT batch_id FROM settlement_batches WHERE status != 'abandoned'"):
        try:
            batch = store.repository.get(batch_aggregate_id(row["batch_id"]))
        except AggregateNotFoundError:
            continue
        for e in batch.jobs:
            core = receipts.get(e["job_id"])
            expected = 0 if e["job_id"] in forfeited else int(core["reward"]) if core else 0
            if int(e["reward"]) != expected:
                problems.append(f"batch {row['batch_id']}: job {e['job_id']} carries reward {e['reward']}, "
                                f"expected {expected}" + (" (forfeited)" if e["job_id"] in forfeited else ""))
    settled: dict[str, int] = defaultdict(int)
    for r in replay.db.execute("SELECT job_id, worker, reward FROM receipts WHERE status = 'settled'"):
        if r["worker"] and r["job_id"] not in forfeited:
            settled[r["worker"]] += int(r["reward"])
    for r in replay.rewards():
        if int(r["settled"]) != settled.get(r["worker"], 0):
            problems.append(f"worker {r['worker']}: settled reward {r['settled']} != its settled rewards not "
                            f"forfeited {settled.get(r['worker'], 0)}")


__all__ = ["check_verification"]
