"""Two gateways on one PostgreSQL: one proposes a settlement batch while the other suspends the
worker whose reward that batch carries. The reward is either in the batch (and paid) or forfeited
(and carried as 0), never both: proposing writes each receipt's stream (`Job.Batched`), so the
two commands conflict on the job and the later one decides again on its current version.

Before the fix proposing only read the jobs, so nothing conflicted: the forfeit was saved beside
the batch that pays the same reward, and the audit named the batch."""

from __future__ import annotations

import threading

import pytest

from basis.config import Settings
from basis.ledger.audit import audit
from basis.ledger.service import Ledger
from basis.ledger.settlement import batch_aggregate_id
from basis.ledger.verdicts import record_verdict, suspend_worker
from basis.settlement.batches import confirm_batch, propose_batch
from tests.verification.helpers import HONEST, POLICY, caught_up_views, contributor_job, passing

KEY = "0x" + "11" * 32
VAULT = "0x" + "ee" * 20
DIST = "0x" + "dd" * 20


@pytest.mark.postgres
def test_a_suspension_racing_a_batch_proposal_on_postgresql_never_pays_a_forfeited_reward(pg_dsn, tmp_path):
    settler = Ledger(Settings(home=tmp_path / "a", database_url=pg_dsn), signer_key=KEY, verification=POLICY)
    operator = Ledger(Settings(home=tmp_path / "b", database_url=pg_dsn), signer_key=KEY, verification=POLICY)
    try:
        account_id = settler.open_account("kim")
        settler.grant("kim", 10**18)
        job_id, _ = contributor_job(settler, account_id, HONEST)
        job = settler.get(job_id)
        settler.run(record_verdict(job_id, job.check["ids_sha256"], passing(), POLICY, []))

        # The operator's suspension reads the job (unbatched) and forfeits it; before it saves, the
        # other gateway proposes the batch that carries the same reward.
        read, proposed = threading.Event(), threading.Event()
        suspend = suspend_worker(HONEST, "abuse report 40", [str(job_id)])

        def suspend_while_the_batch_is_proposed(uow):
            forfeited = suspend(uow)
            if not read.is_set():  # the first attempt only: a retry decides on current versions
                read.set()
                assert proposed.wait(60)
            return forfeited

        result: list[int] = []
        racer = threading.Thread(target=lambda: result.append(operator.run(suspend_while_the_batch_is_proposed)))
        racer.start()
        assert read.wait(60)
        batch_id = settler.run(propose_batch(31337, VAULT, DIST, [str(job_id)]))
        proposed.set()
        racer.join(60)
        assert result == [0]  # the retry saw the receipt in the batch in flight: nothing forfeited
        batch = settler.get(batch_aggregate_id(batch_id))
        assert batch.jobs[0]["reward"] > 0 and settler.get(job_id).forfeit is None
        assert settler.run(confirm_batch(batch_id, "0x" + "ab" * 32, 10, 100000, None))

        views_path = tmp_path / "a" / "audit-views.db"
        caught_up_views(settler, views_path).close()
        report = audit(settler.store, views_path, signer=settler.signer.address)
        assert report.ok, report.problems
    finally:
        operator.close()
        settler.close()
