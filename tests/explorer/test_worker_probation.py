"""The workers page marks a worker on probation (every job of it checked) and how many checks it has
to go, from the real verdict events and projections; a worker past it, or suspended, is not marked."""

from __future__ import annotations

import re

import httpx
import pytest

from basis.ledger.projections import Projector
from basis.ledger.service import Ledger
from basis.ledger.verdicts import record_verdict, suspend_worker
from tests.explorer.runtime import LiveServer, StandInRuntime, build_app
from tests.verification.helpers import CHEAT, HONEST, POLICY, contributor_job, passing


@pytest.fixture
def ledger(settings):
    led = Ledger(settings, verification=POLICY)
    yield led
    led.close()


def status_cells(ledger: Ledger, settings, policy) -> dict[str, str]:
    p = Projector(ledger.store, settings.views_path)
    p.catch_up()
    p.stop()
    runtime = StandInRuntime(ledger, settings.views_path)
    if policy is not None:
        runtime.verification = policy
    server = LiveServer(build_app(runtime)).start()
    try:
        page = httpx.get(server.url + "/workers", timeout=10).text
    finally:
        server.stop()
        runtime.close()
    rows = dict(re.findall(r'<tr id="worker-(0x[0-9a-f]{40})">(.*?)</tr>', page, re.S))
    return {a: re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row)) for a, row in rows.items()}


def test_a_new_worker_shows_its_probation_counting_down_and_a_suspended_one_does_not(ledger, settings):
    account_id = ledger.open_account("pat")
    ledger.grant("pat", 10**18)
    for address in (HONEST, CHEAT):
        ledger.run(ledger.register_worker(address, ["basis-default"]))
    assert POLICY.probation_jobs == 2
    contributor_job(ledger, account_id, CHEAT)
    ledger.run(suspend_worker(CHEAT, "abuse report 7"))
    cells = status_cells(ledger, settings, POLICY)
    assert "on probation 2 checks to go" in cells[HONEST.lower()]
    assert "suspended" in cells[CHEAT.lower()] and "probation" not in cells[CHEAT.lower()]
    left = []
    for _ in range(2):  # each verdict counts down; after the last it is no longer marked
        job_id, _ = contributor_job(ledger, account_id, HONEST)
        job = ledger.get(job_id)
        ledger.run(record_verdict(job_id, job.check["ids_sha256"], passing(), POLICY, []))
        left.append(status_cells(ledger, settings, POLICY)[HONEST.lower()])
    assert "on probation 1 check to go" in left[0]
    assert "active" in left[1] and "probation" not in left[1]


def test_without_a_policy_no_worker_is_marked(ledger, settings):
    account_id = ledger.open_account("quinn")
    ledger.grant("quinn", 10**18)
    ledger.run(ledger.register_worker(HONEST, ["basis-default"]))
    contributor_job(ledger, account_id, HONEST)
    assert "probation" not in status_cells(ledger, settings, None)[HONEST.lower()]
