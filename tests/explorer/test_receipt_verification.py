"""The receipt page shows a checked job's temperature test (p, log E, the best alternative) beside its
verdict, and its worker's e-detector level (and both CUSUMs) against the published thresholds, from real
verdict events and projections over real HTTP."""

from __future__ import annotations

import re

import httpx

from basis.ledger.projections import Projector
from basis.ledger.service import Ledger
from basis.ledger.verdicts import record_verdict
from basis.verification.stats import JobStatistic
from tests.explorer.runtime import LiveServer, StandInRuntime, build_app
from tests.verification.helpers import CHEAT, POLICY, contributor_job
from tests.verification.test_e_detector_ledger import _greedyish


def page_text(html: str, element_id: str) -> str:
    found = re.search(rf'<dd id="{element_id}">(.*?)</dd>', html, re.S)
    assert found, f"no #{element_id} on the page"
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", found.group(1))).replace("&times;", " times").strip()


def fetch(ledger: Ledger, settings, path: str, policy=POLICY) -> str:
    Projector(ledger.store, settings.views_path).catch_up()
    runtime = StandInRuntime(ledger, settings.views_path)
    if policy is not None:
        runtime.verification = policy
    server = LiveServer(build_app(runtime)).start()
    try:
        resp = httpx.get(server.url + path, timeout=10)
        assert resp.status_code == 200, resp.text
        return resp.text
    finally:
        server.stop()
        runtime.close()


def test_receipt_page_shows_the_temperature_test_and_the_workers_e_detector_level(settings):
    ledger = Ledger(settings, verification=POLICY)
    try:
        account_id = ledger.open_account("pat")
        ledger.grant("pat", 10**18)
        ledger.run(ledger.register_worker(CHEAT, ["basis-default"]))
        first, _ = contributor_job(ledger, account_id, CHEAT)
        second, _ = contributor_job(ledger, account_id, CHEAT)
        for job_id in (first, second):  # each passes alone; log E 4 each: M = 8
            ledger.run(record_verdict(job_id, ledger.get(job_id).check["ids_sha256"], _greedyish(), POLICY))
        html = fetch(ledger, settings, f"/receipts/{first}")
        verification = page_text(html, "receipt-verification")
        assert verification.startswith("passed teacher-forced-z/v3, 8 tokens checked, z = 0.50"), verification
        # p = e^-4, log E 4, the colder alternative (ratio 0.25) explained the output best
        assert "temperature test: p = 0.0183 (log E = 4.00, best alternative 0.25 times the claimed temperature)" \
            in verification, verification
        evidence = page_text(html, "receipt-worker-evidence")
        assert evidence.startswith("e-detector M = 8.00 of 18.42 (log(1/worker_e_alpha), worker_e_alpha 1e-08)"), \
            evidence
        assert "CUSUM 0.00 of 12 (worker_threshold) · fast CUSUM 0.00 of 8 (fast_threshold, lower side, " \
            "fast_drift 1.5) · active" in evidence, evidence
        assert "after its 2 checked jobs" in evidence
        # a runtime that publishes no policy: the levels alone
        bare = page_text(fetch(ledger, settings, f"/receipts/{second}", policy=None), "receipt-worker-evidence")
        assert bare.startswith("e-detector M = 8.00 · CUSUM 0.00 · fast CUSUM 0.00 · active"), bare
    finally:
        ledger.close()


def test_receipt_page_shows_the_opening_z_the_fast_cusum_counted(settings):
    ledger = Ledger(settings, verification=POLICY)
    try:
        account_id = ledger.open_account("pat")
        ledger.grant("pat", 10**18)
        job, _ = contributor_job(ledger, account_id, CHEAT)
        stat = JobStatistic(tokens=8, greedy=False, z=-1.2, opening_z=-2.5)
        ledger.run(record_verdict(job, ledger.get(job).check["ids_sha256"], stat, POLICY))
        html = fetch(ledger, settings, f"/receipts/{job}")
        verification = page_text(html, "receipt-verification")
        assert verification.startswith("passed teacher-forced-z/v3, 8 tokens checked, z = -1.20, opening z = -2.50"), \
            verification
        # the fast CUSUM counted the opening (2.5 - 1.5), v3's CUSUM the job's z (1.2 - 1)
        evidence = page_text(html, "receipt-worker-evidence")
        assert "CUSUM 0.20 of 12 (worker_threshold) · fast CUSUM 1.00 of 8" in evidence, evidence
    finally:
        ledger.close()
