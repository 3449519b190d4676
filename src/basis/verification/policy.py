"""The published verification policy (GET /v1/network, DESIGN §1.6) and job sampling."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from basis.engines.scoring import TEMPERATURE_PROB_FLOOR, TEMPERATURE_RATIOS
from basis.verification.reported_logprobs import MEAN_TOLERANCE, TOKEN_TOLERANCE
from basis.verification.sequential import FAST_DRIFT, FAST_THRESHOLD, WORKER_E_ALPHA
from basis.verification.stats import METHOD, OPENING_WINDOWS, REPEAT_ALPHA, TAIL_ALPHA, TEMPERATURE_ALPHA, Calibration

# Honest behaviour of each packaged reference model (models/gguf.py short names), measured with
# scripts/bench_verify_honest.py (docs/verification.md "Calibration"); a binding over another file
# needs its own measurement, and until then gets the uncalibrated Calibration(). Measured with
# well-spread seeds, honest z is centred on 0 (the null's own centre) with sd 1.02-1.06; the earlier
# -0.25 / -0.5 came from cells of consecutive seeds, whose samples are correlated.
BINDING_CALIBRATION: dict[str, Calibration] = {
    "gemma3-270m": Calibration(z_mean=0.0, z_sd=1.1, greedy_agreement=0.95),
    "smollm2-135m-instruct": Calibration(z_mean=0.0, z_sd=1.1, greedy_agreement=0.93),
}


@dataclass(frozen=True)
class VerificationPolicy:
    enabled: bool = True
    method: str = METHOD
    sample_bps: int = 500  # 5 % of contributor jobs, chosen after each job ends
    probation_jobs: int = 10  # a worker's first N contributor jobs are all checked
    job_threshold: float = 5.0  # |standardised evidence| beyond which one job fails
    worker_threshold: float = 12.0  # CUSUM level that suspends a worker
    drift: float = 1.0  # CUSUM allowance per job
    # the fast lower-side CUSUM beside it (v4; v5: over each sampled job's opening z, the smallest z over
    # its first OPENING_WINDOWS tokens): suspends at fast_threshold, allowance fast_drift per job
    fast_drift: float = FAST_DRIFT
    fast_threshold: float = FAST_THRESHOLD
    # the e-detector over the temperature e-values suspends at log(1 / worker_e_alpha): an honest
    # worker crosses within n checked jobs with probability <= n * worker_e_alpha (sequential.py)
    worker_e_alpha: float = WORKER_E_ALPHA
    calibration: dict[str, Calibration] = field(default_factory=dict)  # advertised model -> honest stats
    tail_alpha: float = TAIL_ALPHA  # a sampled job whose tail p-value is below this fails
    repeat_alpha: float = REPEAT_ALPHA  # a sampled job whose repeat p-value (stuck engine) is below this fails
    # a sampled job whose temperature p-value (sampled at another temperature, greedy included) is below this fails
    temperature_alpha: float = TEMPERATURE_ALPHA

    def calibration_for(self, model: str, gguf: str | None = None) -> Calibration:
        """The advertised model's calibration; else the measured one of its reference file
        (``gguf``: a packaged short name; ``model`` itself when it is one); else uncalibrated."""
        if model in self.calibration:
            return self.calibration[model]
        return BINDING_CALIBRATION.get(gguf or model, Calibration())

    @classmethod
    def for_bindings(cls, bindings: Mapping[str, Any], **overrides: Any) -> VerificationPolicy:
        """The policy for a catalog: each advertised model gets the calibration of the file it is
        bound to (``binding.gguf``), so /v1/network publishes what every model is judged by."""
        policy = cls(**overrides)
        cal = {m: BINDING_CALIBRATION[b.gguf] for m, b in bindings.items()
               if getattr(b, "gguf", None) in BINDING_CALIBRATION}
        return replace(policy, calibration={**cal, **policy.calibration})

    def public(self) -> dict[str, object]:
        return {"enabled": self.enabled, "method": self.method, "sample_bps": self.sample_bps,
                "probation_jobs": self.probation_jobs, "job_threshold": self.job_threshold,
                "worker_threshold": self.worker_threshold, "drift": self.drift,
                "fast_drift": self.fast_drift, "fast_threshold": self.fast_threshold,
                "fast_windows": list(OPENING_WINDOWS),
                "worker_e_alpha": self.worker_e_alpha, "tail_alpha": self.tail_alpha,
                "repeat_alpha": self.repeat_alpha, "temperature_alpha": self.temperature_alpha,
                # the temperature test's alternatives (claimed T times each ratio) and its probability floor
                "temperature_ratios": list(TEMPERATURE_RATIOS), "temperature_prob_floor": TEMPERATURE_PROB_FLOOR,
                # a checked job's reported logprobs vs the reference, in nats (reported_logprobs.py)
                "logprob_tolerance": {"token": TOKEN_TOLERANCE, "mean": MEAN_TOLERANCE},
                "calibration": {m: vars(c) for m, c in sorted(self.calibration.items())}}


def sampled(secret: bytes, job_id: str, sample_bps: int) -> bool:
    """Whether a job is in the random sample: keyed by a secret the worker never sees, decided
    after the job ended, uniform over job ids."""
    digest = hmac.new(secret, job_id.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < sample_bps
