"""The published verification policy (GET /v1/network, DESIGN §1.6) and job sampling."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from basis.verification.stats import METHOD, Calibration


@dataclass(frozen=True)
class VerificationPolicy:
    enabled: bool = True
    method: str = METHOD
    sample_bps: int = 500  # 5 % of contributor jobs, chosen after each job ends
    probation_jobs: int = 10  # a worker's first N contributor jobs are all checked
    job_threshold: float = 6.0  # |standardised evidence| beyond which one job fails
    worker_threshold: float = 12.0  # CUSUM level that suspends a worker
    drift: float = 1.0  # CUSUM allowance per job
    calibration: dict[str, Calibration] = field(default_factory=dict)  # advertised model -> honest stats

    def calibration_for(self, model: str) -> Calibration:
        return self.calibration.get(model, Calibration())

    def public(self) -> dict[str, object]:
        return {"enabled": self.enabled, "method": self.method, "sample_bps": self.sample_bps,
                "probation_jobs": self.probation_jobs, "job_threshold": self.job_threshold,
                "worker_threshold": self.worker_threshold, "drift": self.drift,
                "calibration": {m: vars(c) for m, c in sorted(self.calibration.items())}}


def sampled(secret: bytes, job_id: str, sample_bps: int) -> bool:
    """Whether a job is in the random sample: keyed by a secret the worker never sees, decided
    after the job ended, uniform over job ids."""
    digest = hmac.new(secret, job_id.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < sample_bps
