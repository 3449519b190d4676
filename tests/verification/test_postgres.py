"""On PostgreSQL (several gateways, one store): two verifiers with their own ledgers race to judge
the same jobs; each job is scored once (claims), takes one verdict and a failed one one refund;
the audit agrees."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from basis.config import Settings
from basis.engines.instant import InstantEngine
from basis.ledger.audit import audit
from basis.ledger.service import Ledger
from basis.models import load_bindings
from basis.verifier import Verifier
from tests.verification.doubles import canned
from tests.verification.helpers import CHEAT, HONEST, POLICY, contributor_job


def test_two_verifiers_on_one_postgres_store_apply_each_verdict_once(pg_dsn, tmp_path):
    homes = [Settings(home=tmp_path / f"gw{i}", database_url=pg_dsn) for i in range(2)]
    ledgers = [Ledger(s, verification=POLICY) for s in homes]
    try:
        bindings = load_bindings()
        honest_ids = InstantEngine(bindings["basis-default"])._canned("basis-default")[1][:10]
        account_id = ledgers[0].open_account("alice")
        ledgers[0].grant("alice", 10**18)
        jobs = [contributor_job(ledgers[0], account_id, HONEST, output_ids=honest_ids)[0] for _ in range(2)]
        jobs += [contributor_job(ledgers[0], account_id, CHEAT, output_ids=[5] * 10)[0] for _ in range(2)]
        policy = replace(POLICY, worker_threshold=1000.0)  # judge every job without a suspension in between
        scored: list = []

        def counting(model):
            scorer = canned(bindings)(model)

            class Counting:
                async def score(self, request):
                    scored.append(request.output_ids)
                    await asyncio.sleep(0.05)  # a real score takes a while: the other verifier comes by
                    return await scorer.score(request)

            return Counting()

        verifiers = [Verifier(led, s.views_path, policy, counting, project=True)
                     for led, s in zip(ledgers, homes, strict=True)]

        async def race():
            return await asyncio.gather(*(v.run_once() for v in verifiers))

        done = asyncio.run(race())
        assert sum(done) == 4  # every verdict applied by exactly one of them
        assert len(scored) == 4, len(scored)  # and every job scored once: claimed, not repeated
        for job_id in jobs:
            job = ledgers[1].get(job_id)
            assert job.verdict is not None
        acc = ledgers[1].get(account_id)
        failed = [j for j in jobs if ledgers[1].get(j).verdict["verdict"] == "failed"]
        assert len(failed) == 2
        assert acc.refunded == sum(int(ledgers[1].get(j).receipt["core"]["charged"]) for j in failed)
        report = audit(ledgers[1].store, homes[1].views_path, signer=ledgers[0].signer.address)  # who signed
        assert report.ok, report.problems
        for v in verifiers:
            v.close()
    finally:
        for led in ledgers:
            led.close()
