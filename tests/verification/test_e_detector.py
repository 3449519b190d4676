"""The per-worker e-detector over the temperature test's e-values (sequential.py): its false-alarm
guarantee by Monte Carlo on honest e-values (log-normal with mean exactly 1, and the temperature
test's own e-values on honest samples from synthetic distributions), and its power on a greedy
worker claiming T 0.7."""

from __future__ import annotations

import math

import numpy as np
import pytest

from basis.verification.policy import VerificationPolicy
from basis.verification.sequential import WORKER_E_ALPHA, WorkerEvidence, e_threshold
from basis.verification.stats import job_statistic
from tests.verification.test_temperature import _jobs


def _e_levels(log_e: np.ndarray) -> np.ndarray:
    """M_n = max(0, M_{n-1} + log E_n) along axis 1, for many workers at once."""
    m = np.zeros(log_e.shape[0])
    out = np.empty_like(log_e)
    for n in range(log_e.shape[1]):
        m = np.maximum(0.0, m + log_e[:, n])
        out[:, n] = m
    return out


def test_update_folds_log_e_unclipped_and_leaves_m_for_jobs_without_it():
    ev = WorkerEvidence()
    for log_e in (4.0, None, -1.5, 3.0):
        ev = ev.update(0.0, failed=False, drift=1.0, log_e=log_e)
    assert ev.e_level == pytest.approx(5.5) and ev.checked == 4 and ev.level == 0.0
    ev = ev.update(0.0, failed=False, drift=1.0, log_e=-9.0)  # E < 1 pulls M down, never below 0
    assert ev.e_level == 0.0
    # a caller of the CUSUM alone (no log_e) gets exactly the CUSUM as before
    old = WorkerEvidence().update(13.5, failed=True, drift=1.0)
    assert (old.upper, old.lower, old.e_level, old.crossed(12.0)) == (12.5, 0.0, 0.0, True)
    assert e_threshold(1e-6) == pytest.approx(6 * math.log(10))
    assert not WorkerEvidence(e_level=13.8).e_crossed(1e-6) and WorkerEvidence(e_level=13.9).e_crossed(1e-6)
    assert VerificationPolicy().public()["worker_e_alpha"] == WORKER_E_ALPHA == 1e-8


@pytest.mark.parametrize("theta", [0.5, 1.75, 3.0])
def test_cusum_lower_side_is_the_e_detector_of_exp_theta_minus_u_minus_drift(theta):
    """docs/verification.md, "The CUSUM as an e-detector": for any theta > 0 the CUSUM's lower side
    times theta is the e-detector M over the per-job values exp(theta (-u - drift)), job by job, so
    the CUSUM crosses its threshold h exactly when that M crosses theta h."""
    rng = np.random.default_rng(7)
    for drift in (0.5, 1.0, 1.5):
        cusum, e_det = WorkerEvidence(), WorkerEvidence()
        for u in rng.normal(-0.5, 2.0, 300):  # a worker drifting low, with large swings both ways
            cusum = cusum.update(float(u), failed=False, drift=drift)
            e_det = e_det.update(0.0, failed=False, drift=drift, log_e=theta * (-float(u) - drift))
            assert e_det.e_level == pytest.approx(theta * cusum.lower, abs=1e-9)


@pytest.mark.parametrize("sigma", [0.5, 1.5, 3.0])
def test_honest_workers_rarely_cross_within_the_arl_bound(sigma):
    """Honest e-values: log E ~ N(-sigma^2 / 2, sigma^2), so E has mean exactly 1. At the published
    alpha, 2,000 workers of 2,000 checked jobs each: the bound allows <= 2,000 x alpha of them to be
    suspended (and at alpha 1e-6, 0.2 %); at alpha 0.01 (crossings observable) the mean run length to the first
    crossing is >= 1 / alpha, as the e-detector's ARL bound says."""
    rng = np.random.default_rng(int(sigma * 100))
    log_e = rng.normal(-sigma**2 / 2, sigma, size=(2000, 2000))
    top = _e_levels(log_e).max(axis=1)
    suspended = int((top >= e_threshold(WORKER_E_ALPHA)).sum())
    assert suspended == 0, (sigma, suspended, np.sort(top)[-5:])  # the bound: 0.04 workers of 2,000
    # at alpha 1e-6 the bound's mean is 4 of 2,000 workers (nearly reached for sigma 0.5: a walk of
    # small steps crosses e^-b as often as Ville allows); allow three binomial sd above it
    assert (top >= e_threshold(1e-6)).sum() <= 4 + 3 * 2, (sigma, np.sort(top)[-5:])
    # ARL at alpha 0.01: first crossing of log(100) per worker (censored at the horizon, which
    # only shortens the estimate, so the check is conservative)
    alpha, horizon = 0.01, 3000
    levels = _e_levels(rng.normal(-sigma**2 / 2, sigma, size=(1000, horizon)))
    crossed = levels >= e_threshold(alpha)
    first = np.where(crossed.any(axis=1), crossed.argmax(axis=1) + 1, horizon)
    assert first.mean() >= 1 / alpha, (sigma, first.mean())


def test_honest_temperature_e_values_have_mean_at_most_one_and_never_cross():
    """The temperature test's own e-values on honest samples from synthetic distributions (the
    scorer's ``position_scores``): mean E <= 1 up to sampling error; M over 400 jobs stays far below
    the published level."""
    rng = np.random.default_rng(11)
    log_e = np.array([s.temperature_log_e for scale in (1.5, 3.0)
                      for s in _jobs(rng, "honest", scale, 1.0, 200, n=30)])
    assert np.all(np.isfinite(log_e))
    assert np.exp(log_e).mean() <= 1.2, np.sort(log_e)[-5:]
    assert (log_e < 0).mean() > 0.5  # most honest jobs pull the detector down: p-values alone lose that
    top = max(_e_levels(rng.permutation(log_e)[None, :]).max() for _ in range(20))
    assert top < e_threshold(WORKER_E_ALPHA) / 2, top


def test_a_greedy_worker_claiming_t07_is_suspended_within_a_few_checks():
    rng = np.random.default_rng(5)
    for scale in (3.0, 5.0):  # peaked distributions: greedy output is close to honest output
        checks = []
        for _ in range(10):
            ev, n = WorkerEvidence(), 0
            while not ev.e_crossed(WORKER_E_ALPHA):
                stat = _jobs(rng, "greedy", scale, 1.0, 1, n=30)[0]
                ev, n = ev.update(0.0, failed=False, drift=1.0, log_e=stat.temperature_log_e), n + 1
                assert n <= 8, (scale, checks)
            checks.append(n)
        assert np.median(checks) <= 4, (scale, checks)


def test_job_statistic_records_the_unclipped_log_e_beside_its_p_value():
    rng = np.random.default_rng(3)
    for stat in _jobs(rng, "honest", 1.5, 1.0, 20, n=10) + _jobs(rng, "greedy", 3.0, 1.0, 5, n=10):
        p = 1.0 if stat.temperature_log_e <= 0 else math.exp(-stat.temperature_log_e)
        assert stat.temperature == pytest.approx(p, rel=1e-12)
    greedy = job_statistic([], 0.0)
    assert greedy.temperature_log_e is None
