"""Per-worker sequential tests over its checked jobs; any one crossing suspends the worker.

- A two-sided CUSUM over the standardised evidence of its checked jobs. One borderline job never
  suspends; a steady bias accumulates until it crosses the published ``worker_threshold``
  (VERIFICATION.md: nothing reaches zero false positives at scale).
- A fast lower-side CUSUM (policy v4; v5 feeds it each sampled job's opening evidence): a larger
  allowance ``fast_drift`` and a lower ``fast_threshold``, so a few clearly unlikely jobs (another
  model's text) suspend sooner than the slow one allows, while a weak steady bias (Q2_K) is left to the
  slow one. Its evidence is the job's opening z standardised (stats.opening_evidence: the smallest z
  over its first 24 and 48 tokens), not u: the opening is where another model's text shows, and a job
  failed by a test counts -job_threshold in u whatever its z, which would let two honest test failures
  in a row cross a low threshold (those stay on the slow CUSUM). Greedy jobs and checks from before
  v5 count u. With the evidence's per-job e-value exp(theta (-o - d)) of mean <= 1 under honest work
  (theta measured: 2.15 at d 1.5), an honest worker crosses h within n checked jobs with probability
  <= n exp(-theta h) (docs/verification.md); the union of the detectors is bounded by the sum of
  their bounds.
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
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

# the e-detector's published alpha: an honest worker is suspended by it within its first 2,000
# checked jobs with probability <= 2e-5, and after >= 10^8 checked jobs on average
# (docs/verification.md: 1e-6 would save one checked job against Gemma greedy, for 100x the bound)
WORKER_E_ALPHA = 1e-8
# the fast lower-side CUSUM's published allowance and threshold (policy v5, over the opening evidence):
# the lowest half-step whose own honest bound is <= 1e-4 over 2,000 checked jobs (6.8e-5 at the
# measured theta* 2.15); another model at T 1.0 within 5 checked jobs in 99.4 % of trials
# (docs/benchmarks.md "Policy v5")
FAST_DRIFT = 1.5
FAST_THRESHOLD = 8.0


@dataclass(frozen=True)
class WorkerEvidence:
    checked: int = 0
    failed: int = 0
    upper: float = 0.0  # evidence of output too likely (greedy when asked to sample)
    lower: float = 0.0  # evidence of output too unlikely (another model, temperature, noise)
    e_level: float = 0.0  # the e-detector's M: log of the largest product of its last jobs' temperature e-values
    fast: float = 0.0  # the fast lower-side CUSUM (output too unlikely, larger allowance, lower threshold)

    @property
    def level(self) -> float:
        return max(self.upper, self.lower)

    def update(self, u: float, *, failed: bool, drift: float, log_e: float | None = None,
               fast_drift: float | None = None, fast_evidence: float | None = None) -> WorkerEvidence:
        """One checked job: ``u`` its standardised evidence (the CUSUM), ``log_e`` its temperature
        test's log E, unclipped (the e-detector; None: the job has none, M stays); ``fast_drift``
        the fast CUSUM's allowance it was judged by (None: judged before the fast CUSUM, it stays);
        ``fast_evidence`` what the fast CUSUM counts (the opening evidence; None: ``u``)."""
        e_level = self.e_level if log_e is None else max(0.0, self.e_level + float(log_e))
        o = u if fast_evidence is None else float(fast_evidence)
        fast = self.fast if fast_drift is None else max(0.0, self.fast - o - fast_drift)
        return replace(self, checked=self.checked + 1, failed=self.failed + int(failed),
                       upper=max(0.0, self.upper + u - drift), lower=max(0.0, self.lower - u - drift),
                       e_level=e_level, fast=fast)

    def fold_checked(self, d: Mapping[str, Any]) -> WorkerEvidence:
        """``update`` from a ``Worker.Checked`` event's stored state, as the views and the audit refold
        it (a field an older event lacks is None: judged by the rules of its time)."""
        return self.update(d["evidence"], failed=d["verdict"] == "failed", drift=d["drift"], log_e=d.get("log_e"),
                           fast_drift=d.get("fast_drift"), fast_evidence=d.get("fast_evidence"))

    def crossed(self, worker_threshold: float) -> bool:
        """Whether the CUSUM crossed ``worker_threshold``."""
        return self.level >= worker_threshold

    def fast_crossed(self, fast_threshold: float) -> bool:
        """Whether the fast lower-side CUSUM crossed ``fast_threshold``."""
        return self.fast >= fast_threshold

    def e_crossed(self, worker_e_alpha: float) -> bool:
        """Whether the e-detector crossed log(1 / ``worker_e_alpha``)."""
        return self.e_level >= e_threshold(worker_e_alpha)


def e_threshold(worker_e_alpha: float) -> float:
    """The e-detector's level that suspends: log(1 / alpha)."""
    return -math.log(worker_e_alpha)
