"""Worker aggregate: a contributor's reward address, what it advertises, and how its checked
jobs went (DESIGN 1.6: checked / failed counts, the sequential evidence, suspension)."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import Aggregate, event

from basis.ledger import ids
from basis.ledger.errors import InvalidTransition
from basis.verification.sequential import WorkerEvidence


class Worker(Aggregate):
    TOPIC = "basis:Worker"

    class Created(Aggregate.Created):
        TOPIC = "basis:Worker.Created.v1"

    @staticmethod
    def create_id(address: str) -> UUID:
        return ids.worker_id(address)

    @event("Registered", topic="basis:Worker.Registered.v1")
    def __init__(self, address: str) -> None:
        self.address = address.lower()
        self.models: list[str] = []
        self.evidence = WorkerEvidence()
        self.evidence_jobs: list[str] = []  # checked jobs since the CUSUM was last at zero
        self.e_evidence_jobs: list[str] = []  # checked jobs since the e-detector was last at zero
        self.fast_evidence_jobs: list[str] = []  # checked jobs since the fast CUSUM was last at zero
        self.suspended: dict[str, object] | None = None  # {by, reason, evidence} while suspended
        self.probation_from = 0  # its probation counts checked jobs from this count on (0: since it joined)

    @event("Advertised", topic="basis:Worker.Advertised.v1")
    def advertise(self, models: list[str], software: str = "") -> None:
        self.models = sorted(models)

    @property
    def is_suspended(self) -> bool:
        return self.suspended is not None

    @event("Checked", topic="basis:Worker.Checked.v1")
    def record_check(self, job_id: str, verdict: str, evidence: float, drift: float,
                     log_e: float | None = None, worker_e_alpha: float | None = None,
                     worker_threshold: float | None = None, fast_drift: float | None = None,
                     fast_threshold: float | None = None, fast_evidence: float | None = None) -> None:
        """One verdict on one of its jobs, folded into the per-worker CUSUM (``drift`` as published
        when it was judged, so a replay gives the same levels) and into the e-detector (``log_e``:
        the job's temperature log E, None for a job without it; ``worker_e_alpha``: the level it
        was judged against, as published then). Events from before the e-detector lack both.
        ``worker_threshold``: the CUSUM level it was judged against, as published then (so the audit
        can tell a crossing that went without a suspension); events from before it lack it.
        ``fast_drift`` / ``fast_threshold``: the fast lower-side CUSUM's allowance and level as published
        then (policy v4); events from before it lack both, and leave its level at 0 (old rules).
        ``fast_evidence``: what the fast CUSUM counts for this job (policy v5: its opening evidence);
        None (a greedy job, or an event from before v5): ``evidence``."""
        self.evidence = self.evidence.update(evidence, failed=verdict == "failed", drift=drift, log_e=log_e,
                                             fast_drift=fast_drift, fast_evidence=fast_evidence)
        self.evidence_jobs = [*self.evidence_jobs, job_id] if self.evidence.level > 0 else []
        self.e_evidence_jobs = [*self.e_evidence_jobs, job_id] if self.evidence.e_level > 0 else []
        self.fast_evidence_jobs = [*self.fast_evidence_jobs, job_id] if self.evidence.fast > 0 else []

    @event("Suspended", topic="basis:Worker.Suspended.v1")
    def suspend(self, by: str, reason: str, evidence: list[str]) -> None:
        """``by``: "verifier" (its evidence crossed the worker threshold; ``evidence``: the checked
        job ids that built it) or "operator" (by hand, with a reason)."""
        if self.suspended is not None:
            raise InvalidTransition(f"worker {self.address} is already suspended")
        if by not in ("verifier", "operator"):
            raise InvalidTransition(f"unknown suspender {by!r}")
        self.suspended = {"by": by, "reason": reason, "evidence": list(evidence)}

    def on_probation(self, probation_jobs: int) -> bool:
        """Whether every job of it is checked now: its first ``probation_jobs`` checked jobs, and
        again as many after each reinstatement."""
        return self.evidence.checked - self.probation_from < probation_jobs

    @event("ProbationStarted", topic="basis:Worker.ProbationStarted.v1")
    def start_probation(self, from_checked: int, reason: str) -> None:
        """Back on probation (after a reinstatement): its next ``probation_jobs`` checked jobs,
        counted from ``from_checked`` (its checked count now), are all checked again."""
        if self.suspended is not None:
            raise InvalidTransition(f"worker {self.address} is suspended: reinstate it first")
        if from_checked != self.evidence.checked:
            raise InvalidTransition(f"probation of {self.address} must start at its {self.evidence.checked} "
                                    f"checked jobs, not {from_checked}")
        self.probation_from = from_checked

    @event("Reinstated", topic="basis:Worker.Reinstated.v1")
    def reinstate(self, by: str, reason: str) -> None:
        """Back in service with its accumulated evidence cleared (its counts stay)."""
        if self.suspended is None:
            raise InvalidTransition(f"worker {self.address} is not suspended")
        self.suspended = None
        self.evidence = WorkerEvidence(checked=self.evidence.checked, failed=self.evidence.failed)
        self.evidence_jobs = []
        self.e_evidence_jobs = []
        self.fast_evidence_jobs = []
