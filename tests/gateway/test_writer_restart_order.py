"""The ledger writer process keeps command order across restarts.

Regression for review item 1 (``../shared/review/repro_writer_reorder.py``): after a quick restart
(the writer died within 1 s of its start, so its successor is started 1 s later), a command
submitted in that gap was flushed BEFORE the recovered ones. A lost ``assign_job(J -> B)`` then
landed after J's end, and the receipt paid worker A for B's job.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

from basis.ledger.service import Ledger
from basis.ledger.writer_process import LedgerWriterProcess

A = "0x" + "aa" * 20
B = "0x" + "bb" * 20


async def _until(predicate, what: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _scenario(ledger: Ledger, served_by_on_end: bool, close_in_gap: bool = False) -> tuple[uuid.UUID, dict]:
    account_id = ledger.open_account("alice")
    ledger.grant("alice", 10**24)
    writer = LedgerWriterProcess(ledger.spawn_args())
    writer.start()
    loop = asyncio.get_running_loop()

    def call(name, **kw):
        fut = loop.create_future()
        writer.submit_async(name, kw, fut)
        return fut

    try:
        job = uuid.uuid4()
        await call("accept_job", job_id=job, account_id=account_id, model="basis-default", prompt_tokens=5,
                   max_output_tokens=50, assignment=("contributor", A))
        first = writer._proc
        os.kill(first.pid, signal.SIGKILL)  # a fresh writer is started at once
        await _until(lambda: writer._proc is not first and writer._proc.is_alive(), "a second writer")
        second = writer._proc
        # Within 1 s of its start: hang it, send the retry's assignment to B (never answered), kill it.
        os.kill(second.pid, signal.SIGSTOP)
        assigned = call("assign_job", job_id=job, served_by="contributor", worker=B)
        await asyncio.sleep(0.05)
        os.kill(second.pid, signal.SIGKILL)
        await _until(lambda: writer.restarts == 2, "the second loss to be noticed")
        assert writer._proc is second, "expected to be inside the 1 s restart gap"
        # The job, served by B, ends inside the gap.
        end = {"job_id": job, "outcome": "completed", "output_tokens": 7, "finish_reason": "stop"}
        if served_by_on_end:
            end.update(served_by="contributor", worker=B)
        finished = call("finish_job", **end)
        if close_in_gap:  # the gateway stops inside the gap: the next process is started to answer the queue
            writer.close()
            assert finished.done()
        receipt = await asyncio.wait_for(finished, 60)
        await assigned  # recovered, and answered before the end
        return job, receipt
    finally:
        writer.close()


def test_a_command_submitted_while_the_writer_restarts_goes_after_the_recovered_ones(settings):
    ledger = Ledger(settings)
    try:
        job, receipt = asyncio.run(_scenario(ledger, served_by_on_end=False))
        assert [a["worker"] for a in ledger.get(job).attempts] == [A, B]
        assert receipt["core"]["worker"] == B  # the worker that served is the one paid
    finally:
        ledger.close()


def test_the_end_naming_its_worker_lands_after_a_restart(settings):
    ledger = Ledger(settings)
    try:
        job, receipt = asyncio.run(_scenario(ledger, served_by_on_end=True))
        assert receipt["core"]["worker"] == B and ledger.get(job).is_ended
    finally:
        ledger.close()


def test_stopping_inside_the_restart_gap_answers_what_was_queued(settings):
    ledger = Ledger(settings)
    try:
        job, receipt = asyncio.run(_scenario(ledger, served_by_on_end=True, close_in_gap=True))
        assert receipt["core"]["worker"] == B and ledger.get(job).is_ended
        assert not ledger.get(ledger.get(job).account_id).reservations
    finally:
        ledger.close()
