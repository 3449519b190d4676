from __future__ import annotations

import uuid

from basis.ledger.service import Ledger

WORKER = "0x" + "ab" * 20


def run_job(ledger: Ledger, account_id, *, prompt_tokens=10, max_output_tokens=100, output_tokens=42,
            outcome="completed", served_by="contributor", model="basis-default"):
    job_id = uuid.uuid4()
    ledger.run(ledger.accept_job(job_id=job_id, account_id=account_id, model=model,
                                 prompt_tokens=prompt_tokens, max_output_tokens=max_output_tokens))
    ledger.run(ledger.assign_job(job_id, served_by, WORKER if served_by == "contributor" else None))
    receipt = ledger.run(ledger.finish_job(job_id, outcome=outcome, output_tokens=output_tokens,
                                           worker_usage={"completion_tokens": output_tokens + 1000}))
    return job_id, receipt
