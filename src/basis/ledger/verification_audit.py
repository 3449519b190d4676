"""The audit of verification (DESIGN 1.6): every consequence recomputed from the verdict events.

- each verdict re-decided from its recorded statistic, threshold and calibration;
- a failed job: refunded exactly its charge (one ``refund`` credit, external id = job id) and its
  reward forfeited; a refund or a forfeit without that cause is named;
- a forfeit names the receipt's own reward; one "worker suspended" forfeit needs the worker to
  have been suspended at that point of the log;
- each worker's checked / failed counts, CUSUM levels, fast CUSUM level and e-detector level refolded
  from its verdicts (each check's evidence, log E and fast CUSUM evidence must be its verdict's
  evidence, its statistic's temperature log E and the opening evidence its statistic gives); a
  suspension by the e-detector needs the refolded level at log(1 / worker_e_alpha), one by the CUSUM
  its level at worker_threshold, one by the fast CUSUM its level at fast_threshold, each as its check
  recorded (checks from before the fast CUSUM record neither fast field: not judged by it);
- a worker not suspended whose refolded level crossed any threshold at a check is suspended by
  the verifier right there (the same command records both: its next event is the suspension), and
  a crossing without one is named with the job where it crossed (a worker already suspended, by the
  operator or earlier, is not suspended again; reinstatement clears the levels);
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
from basis.verification.stats import Calibration, JobStatistic, judge_job, opening_evidence

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
    log_es: dict[str, float | None] = {}  # the temperature log E of each verdict's statistic
    e_alpha: dict[str, float | None] = {}  # the worker_e_alpha each worker's latest check recorded
    threshold: dict[str, float | None] = {}  # the worker_threshold each worker's latest check recorded
    fast_threshold: dict[str, float | None] = {}  # the fast_threshold each worker's latest check recorded
    evidences: dict[str, float] = {}  # each verdict's standardised evidence (what its check must fold)
    openings: dict[str, float | None] = {}  # each verdict's opening evidence (what its check's fast CUSUM counts)
    crossing: dict[str, str] = {}  # worker -> the crossing its next event must answer with a suspension
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
            evidences[job_id] = float(d["evidence"])
            log_es[job_id] = (d.get("statistic") or {}).get("temperature_log_e")
            openings[job_id] = _rejudge(job_id, d, problems)
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
            if d.get("log_e") != log_es.get(d["job_id"]):
                problems.append(f"worker {address}: check of job {d['job_id']} carries log E {d.get('log_e')}, the "
                                f"job's verdict statistic says {log_es.get(d['job_id'])}")
            if d["job_id"] in evidences and not math.isclose(float(d["evidence"]), evidences[d["job_id"]],
                                                             rel_tol=1e-9, abs_tol=1e-9):
                problems.append(f"worker {address}: check of job {d['job_id']} folds evidence {d['evidence']}, the "
                                f"job's verdict says {evidences[d['job_id']]}")
            _check_fast_evidence(address, d, openings, problems)
            _unanswered(crossing, address, problems)
            folded[address] = folded[address].fold_checked(d)
            e_alpha[address] = d.get("worker_e_alpha")
            threshold[address] = d.get("worker_threshold")
            fast_threshold[address] = d.get("fast_threshold")
            if address not in suspended:
                crossed = _crossed(folded[address], threshold[address], e_alpha[address], fast_threshold[address])
                if crossed:
                    crossing[address] = f"its {crossed} at job {d['job_id']}"
        elif topic == "basis:Worker.Suspended.v1":
            address = worker_of.get(job_id, job_id)
            suspended.add(address)
            crossing.pop(address, None)
            if d["by"] == "verifier":  # its evidence: checked jobs of this worker, and evidence there was
                for ev_job in d["evidence"]:
                    if ev_job not in verdicts or (receipts.get(ev_job) or {}).get("worker") != address:
                        problems.append(f"worker {address}: suspension cites job {ev_job}, not a checked job of it")
                ev = folded[address]
                if not d["evidence"] or max(ev.level, ev.e_level, ev.fast) <= 0:
                    problems.append(f"worker {address}: suspended by the verifier without accumulated evidence")
                    continue
                _check_fast_suspension(address, d["reason"], ev, fast_threshold.get(address), problems)
                if "e-detector" in d["reason"] and (e_alpha.get(address) is None
                                                    or not ev.e_crossed(float(e_alpha[address]))):  # type: ignore[arg-type]
                    problems.append(f"worker {address}: suspended by the e-detector at log E {ev.e_level:.4f}, below "
                                    f"log(1/worker_e_alpha) for its recorded alpha {e_alpha.get(address)}")
                elif ("worker_threshold" in d["reason"] and threshold.get(address) is not None
                      and not ev.crossed(float(threshold[address]))):  # type: ignore[arg-type]
                    problems.append(f"worker {address}: suspended by the CUSUM at level {ev.level:.4f}, below its "
                                    f"recorded worker_threshold {threshold[address]}")
        elif topic == "basis:Worker.Reinstated.v1":
            address = worker_of.get(job_id, job_id)
            _unanswered(crossing, address, problems)
            suspended.discard(address)
            ev = folded[address]
            folded[address] = WorkerEvidence(checked=ev.checked, failed=ev.failed)
            reinstated_last = address
        elif topic == "basis:Worker.ProbationStarted.v1":
            address = worker_of.get(job_id, job_id)
            _unanswered(crossing, address, problems)
            if just_reinstated != address:
                problems.append(f"worker {address}: put on probation without being reinstated just before")
            if int(d["from_checked"]) != folded[address].checked:
                problems.append(f"worker {address}: probation from {d['from_checked']} checked jobs, its verdicts "
                                f"say {folded[address].checked}")
    for address in sorted(crossing):
        _unanswered(crossing, address, problems)
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


def _check_fast_evidence(address: str, d: dict[str, Any], openings: dict[str, float | None],
                         problems: list[str]) -> None:
    """A check's fast CUSUM evidence must be its verdict's opening evidence (policy v5); a check judged
    before v5 (its verdict's statistic has no opening z) records none and counts u."""
    job_id = d["job_id"]
    if job_id not in openings:
        return  # no verdict for it: named above
    recorded, expected = d.get("fast_evidence"), openings[job_id]
    if (recorded is None) != (expected is None) or (
            recorded is not None and not math.isclose(float(recorded), float(expected), rel_tol=1e-9, abs_tol=1e-9)):
        problems.append(f"worker {address}: check of job {job_id} counts fast CUSUM evidence {recorded}, the job's "
                        f"verdict statistic gives {expected}")


def _check_fast_suspension(address: str, reason: str, ev: WorkerEvidence, recorded: float | None,
                           problems: list[str]) -> None:
    """A suspension whose reason names the fast CUSUM needs its refolded level at the fast_threshold
    its check recorded (a reason may name several detectors; each named one must have crossed)."""
    if "fast_threshold" in reason and (recorded is None or not ev.fast_crossed(float(recorded))):
        problems.append(f"worker {address}: suspended by the fast CUSUM at level {ev.fast:.4f}, below its "
                        f"recorded fast_threshold {recorded}")


def _crossed(ev: WorkerEvidence, worker_threshold: float | None, worker_e_alpha: float | None,
             fast_threshold: float | None = None) -> str | None:
    """Which published threshold the refolded levels reach (None: none, or not recorded: checks
    from before the threshold was recorded in them are not judged by it)."""
    out = []
    if worker_threshold is not None and ev.crossed(float(worker_threshold)):
        out.append(f"CUSUM level {ev.level:.4f} crossed worker_threshold {float(worker_threshold):g}")
    if worker_e_alpha is not None and ev.e_crossed(float(worker_e_alpha)):
        out.append(f"e-detector level {ev.e_level:.4f} crossed log(1/worker_e_alpha) for alpha "
                   f"{float(worker_e_alpha):g}")
    if fast_threshold is not None and ev.fast_crossed(float(fast_threshold)):
        out.append(f"fast CUSUM level {ev.fast:.4f} crossed fast_threshold {float(fast_threshold):g}")
    return " and ".join(out) or None


def _unanswered(crossing: dict[str, str], address: str, problems: list[str]) -> None:
    """The worker's pending crossing, if any, was not followed by its suspension: name it."""
    what = crossing.pop(address, None)
    if what is not None:
        problems.append(f"worker {address}: {what}, but it was not suspended")


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


def _rejudge(job_id: str, d: dict[str, Any], problems: list[str]) -> float | None:
    """Re-decide the verdict; returns the opening evidence its statistic gives (None: none)."""
    try:
        own, reported = split_statistic(d["statistic"])
        stat = JobStatistic(**own)
        # the alphas the verdict was judged with (recorded from v2 / v3 on; older verdicts: the defaults,
        # and a statistic without a temperature p-value is judged as before whatever its alpha)
        extra = {k: float(d[k]) for k in ("tail_alpha", "repeat_alpha", "temperature_alpha") if d.get(k) is not None}
        calibration = Calibration(**d["calibration"])
        verdict, u = judge_job(stat, calibration, float(d["job_threshold"]), **extra)
        verdict, u = judge_reported(verdict, u, reported, float(d["job_threshold"]))
        _check_log_e(job_id, stat, problems)
        opening = opening_evidence(stat, calibration)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        problems.append(f"job {job_id}: verdict cannot be re-decided from its statistic ({exc})")
        return None
    if verdict != d["verdict"]:
        problems.append(f"job {job_id}: verdict {d['verdict']!r} but its statistic decides {verdict!r}")
    if not math.isclose(u, float(d["evidence"]), rel_tol=1e-9, abs_tol=1e-9):
        problems.append(f"job {job_id}: recorded evidence {d['evidence']} != recomputed {u}")
    return opening


def _check_log_e(job_id: str, stat: JobStatistic, problems: list[str]) -> None:
    """The temperature log E (v3's e-detector input) must be the one its p-value came from."""
    if stat.temperature_log_e is None:
        return
    log_e = float(stat.temperature_log_e)
    p = 1.0 if log_e <= 0 else math.exp(-log_e)
    if stat.temperature is None or not math.isclose(p, float(stat.temperature), rel_tol=1e-9, abs_tol=1e-300):
        problems.append(f"job {job_id}: temperature log E {log_e} does not give its temperature p-value "
                        f"{stat.temperature}")


def _check_workers(replay: ViewReader, folded: dict[str, WorkerEvidence], problems: list[str]) -> None:
    for row in replay.db.execute("SELECT * FROM worker_status"):
        ev = folded.get(row["address"], WorkerEvidence())
        if (row["checked"], row["failed"]) != (ev.checked, ev.failed):
            problems.append(f"worker {row['address']}: {row['checked']} checked / {row['failed']} failed, its "
                            f"verdicts say {ev.checked} / {ev.failed}")
        if not math.isclose(float(row["e_level"]), ev.e_level, rel_tol=1e-9, abs_tol=1e-9):
            problems.append(f"worker {row['address']}: e-detector level {row['e_level']}, its verdicts say "
                            f"{ev.e_level}")
        if not math.isclose(float(row["fast"]), ev.fast, rel_tol=1e-9, abs_tol=1e-9):
            problems.append(f"worker {row['address']}: fast CUSUM level {row['fast']}, its verdicts say {ev.fast}")


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
