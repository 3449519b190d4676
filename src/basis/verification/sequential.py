"""Per-worker sequential tests over its checked jobs; either one crossing suspends the worker.

- A two-sided CUSUM over the standardised evidence of its checked jobs. One borderline job never
  suspends; a steady bias accumulates until it crosses the published ``worker_threshold``
  (VERIFICATION.md: nothing reaches zero false positives at scale).
- An e-detector over the temperature test's e-values (Shin, Ramdas & Rinaldo, "E-detectors",
  2023): M_n = max(0, M_{n-1} + log E_n), the log of the largest product of the e-values of its
  last jobs, max over start points k of prod_{i=k..n} E_i. Under honest sampling each E_i has mean
  <= 1 given the past, so each product from a fixed k is a non-negative supermartingale and, by
  Ville's inequality, reaches 1/alpha with probability <= alpha: an honest worker crosses
  log(1/alpha) within its first n checked jobs with probability <= n * alpha, and after >= 1/alpha
  checked jobs on average (the e-detector's ARL bound). Jobs without the statistic leave M as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

# the e-detector's published alpha: an honest worker is suspended by it within its first 2,000
# checked jobs with probability <= 2e-5, and after >= 10^8 checked jobs on average
# (docs/verification.md: 1e-6 would save one checked job against Gemma greedy, for 100x the bound)
WORKER_E_ALPHA = 1e-8


@dataclass(frozen=True)
class WorkerEvidence:
    checked: int = 0
    failed: int = 0
    upper: float = 0.0  # evidence of output too likely (greedy when asked to sample)
    lower: float = 0.0  # evidence of output too unlikely (another model, temperature, noise)
    e_level: float = 0.0  # the e-detector's M: log of the largest product of its last jobs' temperature e-values

    @property
    def level(self) -> float:
        return max(self.upper, self.lower)

    def update(self, u: float, *, failed: bool, drift: float, log_e: float | None = None) -> WorkerEvidence:
        """One checked job: ``u`` its standardised evidence (the CUSUM), ``log_e`` its temperature
        test's log E, unclipped (the e-detector; None: the job has none, M stays)."""
        e_level = self.e_level if log_e is None else max(0.0, self.e_level + float(log_e))
        return replace(self, checked=self.checked + 1, failed=self.failed + int(failed),
                       upper=max(0.0, self.upper + u - drift), lower=max(0.0, self.lower - u - drift),
                       e_level=e_level)

    def crossed(self, worker_threshold: float) -> bool:
        """Whether the CUSUM crossed ``worker_threshold``."""
        return self.level >= worker_threshold

    def e_crossed(self, worker_e_alpha: float) -> bool:
        """Whether the e-detector crossed log(1 / ``worker_e_alpha``)."""
        return self.e_level >= e_threshold(worker_e_alpha)


def e_threshold(worker_e_alpha: float) -> float:
    """The e-detector's level that suspends: log(1 / alpha)."""
    return -math.log(worker_e_alpha)
