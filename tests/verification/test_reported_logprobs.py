"""Reported logprobs against the reference (issue 14): the comparison, the verdict it forces, the
audit that re-decides it, and the real path: a worker reporting fabricated logprobs on checked
jobs fails verification while an honest llama.cpp worker's reports pass."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import uuid

import httpx
import pytest

from basis.engines.scoring import TokenScore
from basis.ledger.service import Ledger
from basis.ledger.verdicts import record_verdict
from basis.verification.reported_logprobs import KEY, MEAN_TOLERANCE, TOKEN_TOLERANCE, compare, judge_reported
from tests.gateway.harness import REPO, Gateway
from tests.ledger.test_audit import basis_audit
from tests.verification.helpers import CHEAT, POLICY, passing


def _scores(raw: list[float]) -> list[TokenScore]:
    return [TokenScore(logprob=x, expected=-1.0, variance=1.0, rank=0, raw_logprob=x) for x in raw]


def test_compare_tolerates_rounding_and_names_made_up_numbers():
    ref = [-0.2, -1.7, -3.1, -0.05]
    near = compare([r + 0.3 * (-1) ** i for i, r in enumerate(ref)], _scores(ref))
    assert near.consistent and near.far == 0 and math.isclose(near.max_abs_error, 0.3)
    one_far = compare([-0.2, -1.7, -3.1 + TOKEN_TOLERANCE + 0.1, -0.05], _scores(ref))
    assert not one_far.consistent and one_far.far == 1
    shifted = compare([r + MEAN_TOLERANCE + 0.1 for r in ref], _scores(ref))  # no token far, all of them off
    assert shifted.far == 0 and not shifted.consistent
    for bad in ([-0.2, -1.7, -3.1], [-0.2, -1.7, -3.1, -0.05, -1.0], [-0.2, float("nan"), -3.1, -0.05]):
        assert compare(bad, _scores(ref)).far >= 1  # missing, extra, not a number
    assert judge_reported("passed", 0.4, near.as_dict(), 6.0) == ("passed", 0.4)
    assert judge_reported("passed", 0.4, one_far.as_dict(), 6.0) == ("failed", -6.0)
    assert judge_reported("passed", 0.4, None, 6.0) == ("passed", 0.4)
    assert POLICY.public()["logprob_tolerance"] == {"token": TOKEN_TOLERANCE, "mean": MEAN_TOLERANCE}


def test_far_off_reports_fail_a_passing_job_refund_it_and_the_audit_agrees(settings):
    ledger = Ledger(settings, verification=POLICY)
    account_id = ledger.open_account("alice")
    ledger.grant("alice", 10**18)
    job_id = uuid.uuid4()
    ledger.run(ledger.accept_job(job_id=job_id, account_id=account_id, model="basis-default", prompt_tokens=5,
                                 max_output_tokens=64, assignment=("contributor", CHEAT)))
    reported = [-0.01] * 8
    check = {"prompt_ids": [1, 2, 3, 4, 5], "output_ids": list(range(100, 108)), "temperature": 0.7, "top_p": 1.0,
             "reported_logprobs": reported}
    ledger.run(ledger.finish_job(job_id, outcome="completed", output_tokens=8, finish_reason="length", check=check))
    job = ledger.get(job_id)
    assert job.check["reported_logprobs"] == reported  # recorded with the check request, for the verifier
    comparison = compare(job.check["reported_logprobs"], _scores([-2.5] * 8))
    before = ledger.get(account_id).available
    out = ledger.run(record_verdict(job_id, job.check["ids_sha256"], passing(), POLICY, reported=comparison))
    assert out["verdict"] == "failed"
    job = ledger.get(job_id)
    assert job.verdict["statistic"][KEY]["far"] == 8 and job.verdict["evidence"] == -POLICY.job_threshold
    assert job.reward_forfeited and ledger.get(account_id).available > before  # refunded
    ledger.close()
    rc, report = basis_audit(settings.home)
    assert rc == 0 and report["ok"], report["problems"]


def _start_fabricator(gw: Gateway) -> str:
    from basis.worker import new_key_file

    key_file = gw.settings.home / "fabricator.key"
    new_key_file(key_file)
    before = {w.address for w in gw.runtime.hub.workers()}
    env = {**os.environ, "BASIS_HOME": str(gw.settings.home)}
    gw.workers.append(subprocess.Popen(
        [sys.executable, "-m", "tests.gateway.rogue_worker", "--gateway", gw.ws, "--key-file", str(key_file),
         "--mode", "fake-logprobs", "--capacity", "2"], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    gw.until(lambda: {w.address for w in gw.runtime.hub.workers()} - before, what="the fabricator", timeout=90)
    return ({w.address for w in gw.runtime.hub.workers()} - before).pop().lower()


@pytest.mark.llama
def test_fabricated_logprobs_fail_verification_and_honest_ones_pass(reference_gateway):
    gw = reference_gateway
    runtime = gw.runtime
    _, key = gw.account("client", 10**18)

    def ask(i: int) -> str:
        r = httpx.post(f"{gw.base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       timeout=300, json={"model": "basis-default", "max_tokens": 10, "temperature": 0.8,
                                          "logprobs": True, "top_logprobs": 2,
                                          "messages": [{"role": "user", "content": f"Tell me a fact, {i}."}]})
        assert r.status_code == 200, r.text
        return r.json()["id"].removeprefix("chatcmpl-")

    gw.start_worker(engine="llama-cpp", capacity=1)
    honest = [ask(i) for i in range(2)]  # probation: every job is checked
    gw.kill_workers()
    fabricator = _start_fabricator(gw)
    fabricated = [ask(i) for i in range(2)]
    gw.views_caught_up()
    gw.until(lambda: not runtime.reader().pending_checks(), what="every checked job judged", timeout=600)
    gw.views_caught_up()
    reader = runtime.reader()
    for job_id in honest:
        v = reader.receipt(job_id)["verification"]
        assert v["verdict"] == "passed" and v["statistic"][KEY]["far"] == 0, v
    for job_id in fabricated:
        r = reader.receipt(job_id)
        assert r["core"]["worker"] == fabricator
        v = r["verification"]
        # its tokens are honest llama.cpp output; its reported numbers are what fails it
        assert v["verdict"] == "failed" and v["statistic"][KEY]["far"] > 0, v
        assert abs(v["statistic"]["z"]) < runtime.verification.job_threshold
        assert r["reward_forfeited"]
