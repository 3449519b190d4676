"""Per-worker sequential test: a two-sided CUSUM over the standardised evidence of its checked
jobs. One borderline job never suspends; a steady bias accumulates until it crosses the
published ``worker_threshold`` (VERIFICATION.md: nothing reaches zero false positives at scale)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class WorkerEvidence:
    checked: int = 0
    failed: int = 0
    upper: float = 0.0  # evidence of output too likely (greedy when asked to sample)
    lower: float = 0.0  # evidence of output too unlikely (another model, temperature, noise)

    @property
    def level(self) -> float:
        return max(self.upper, self.lower)

    def update(self, u: float, *, failed: bool, drift: float) -> WorkerEvidence:
        return replace(self, checked=self.checked + 1, failed=self.failed + int(failed),
                       upper=max(0.0, self.upper + u - drift), lower=max(0.0, self.lower - u - drift))

    def crossed(self, worker_threshold: float) -> bool:
        return self.level >= worker_threshold
