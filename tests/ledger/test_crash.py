"""Crash safety on a real SQLite file: SIGKILL a writer mid-load and a projector mid-projection.

The children run the real ledger code path (Ledger commands through the group-commit writer,
the tracking Projector) under a tmp BASIS_HOME. The writer child records every future it was
told had committed, one line at a time with O_APPEND writes (they survive SIGKILL: the kernel
holds them). After the kill: nothing it was told is lost, projections resume and converge,
interrupted jobs are ended with their reservations released, and `basis audit --json` passes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from basis.ledger.audit import audit
from basis.ledger.projections import Projector, ViewReader
from basis.ledger.service import Ledger
from tests.ledger.helpers import run_job

REPO = Path(__file__).resolve().parents[2]

WRITER_CHILD = r'''
import os, sys, threading, uuid, random, time
from basis.config import Settings
from basis.ledger.service import Ledger
from basis.ledger.projections import Projector

record_path, clients, held = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(record_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

def note(line):
    os.write(fd, (line + "\n").encode())  # one write per line: atomic with O_APPEND

settings = Settings()
ledger = Ledger(settings)
projector = Projector(ledger.store, settings.views_path)
projector.start(ledger.committed, interval=0.01)  # live projection runs while the load runs
account_ids = [ledger.open_account(f"acct-{i}") for i in range(3)]
for name in ("acct-0", "acct-1", "acct-2"):
    ledger.grant(name, 10**30)
note("READY")

for i in range(held):  # streaming jobs that are still running when the process dies
    job = uuid.uuid4()
    ledger.run(ledger.accept_job(job_id=job, account_id=account_ids[i % 3], model="basis-default",
                                 prompt_tokens=5, max_output_tokens=64))
    note(f"A {job}")
    ledger.run(ledger.assign_job(job, "gateway", None))
    note(f"S {job}")
    note(f"H {job}")

WORKERS = ["0x" + format(i, "040x") for i in range(1, 6)]

def client(n):
    rnd = random.Random(n)
    while True:
        job = uuid.uuid4()
        acc = account_ids[rnd.randrange(3)]
        max_out = rnd.randint(1, 300)
        f = ledger.writer.submit(ledger.accept_job(job_id=job, account_id=acc, model=rnd.choice(
            ["basis-default", "basis-small", "basis-large"]), prompt_tokens=rnd.randint(0, 500),
            max_output_tokens=max_out))
        f.result()
        note(f"A {job}")
        contributor = rnd.random() < 0.7
        ledger.writer.submit(ledger.assign_job(job, "contributor" if contributor else "gateway",
                                               rnd.choice(WORKERS) if contributor else None)).result()
        note(f"S {job}")
        outcome = rnd.choice(["completed", "completed", "cancelled", "failed"])
        tokens = rnd.randint(0, max_out)
        receipt = ledger.writer.submit(ledger.finish_job(job, outcome=outcome, output_tokens=tokens)).result()
        note(f"E {job} {outcome} {tokens} {receipt['hash'] if receipt else '-'}")

for n in range(clients):
    threading.Thread(target=client, args=(n,), daemon=True).start()
time.sleep(120)  # the parent kills us long before this
sys.exit(3)
'''

PROJECTOR_CHILD = r'''
import sys
from basis.config import Settings
from basis.ledger.store import LedgerStore
from basis.ledger.projections import Projector

settings = Settings()
store = LedgerStore(settings.event_store_env())
projector = Projector(store, settings.views_path)
while projector.run_once(limit=int(sys.argv[1])):
    pass
sys.exit(3)  # finishing means the parent was too slow to kill us mid-projection
'''


def child_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASIS_")}
    env["BASIS_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"child exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def read_record(path: Path) -> list[list[str]]:
    lines = path.read_text().split("\n")
    return [line.split() for line in lines[:-1]]  # the text after the last newline may be torn


def basis_audit(home: Path) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "basis.cli.main", "audit", "--json"], env=child_env(home),
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def tracked_position(views: Path) -> int:
    if not views.exists():
        return 0
    db = sqlite3.connect(f"file:{views}?mode=ro", uri=True, timeout=30)
    try:
        row = db.execute("SELECT position FROM tracking WHERE view = 'basis'").fetchone()
    except sqlite3.OperationalError:  # schema not created yet
        return 0
    finally:
        db.close()
    return row[0] if row else 0


@pytest.mark.parametrize("round_", [1, 2])
def test_sigkill_of_a_loaded_writer_loses_nothing_it_acknowledged(settings, tmp_path, round_):
    settings.operator_key()  # the child and this process sign with the same operator key
    record = tmp_path / "committed.log"
    held = 5
    proc = subprocess.Popen([sys.executable, "-c", WRITER_CHILD, str(record), "16", str(held)],
                            env=child_env(settings.home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        threshold = 400 * round_  # lifecycle events in the record; jobs are in flight in 16 threads
        wait_for(lambda: record.exists() and record.read_text().count("\nE ") >= threshold, proc, "the load")
    finally:
        if proc.poll() is None:
            kill(proc)
    rows = read_record(record)
    accepted = {r[1] for r in rows if r[0] == "A"}
    assigned = {r[1] for r in rows if r[0] == "S"}
    ended = {r[1]: r[2:] for r in rows if r[0] == "E"}
    assert len(ended) >= threshold and accepted >= set(ended) and accepted >= assigned

    ledger = Ledger(settings)
    try:
        # 1. Every acknowledged command is in the store, with the values it was acknowledged with.
        for job_id in accepted:
            job = ledger.get(uuid.UUID(job_id))
            assert job.reserved > 0 or job.max_output_tokens == 0
            if job_id in assigned:
                assert job.attempts, f"job {job_id}: acknowledged assignment lost"
        for job_id, (outcome, tokens, digest) in ended.items():
            job = ledger.get(uuid.UUID(job_id))
            assert (job.outcome, job.output_tokens) == (outcome, int(tokens)), f"job {job_id}: ending lost"
            assert (job.receipt["hash"] if job.receipt else "-") == digest, f"job {job_id}: receipt lost"

        # 2. The live projection resumes from its tracked position and converges.
        projector = Projector(ledger.store, settings.views_path)
        killed_at = projector.position
        projector.catch_up()
        total = ledger.store.recorder.max_notification_id()
        assert killed_at <= projector.position == total
        reader = ViewReader(settings.views_path)
        open_jobs = reader.open_jobs(settings.node_id)
        # The streaming jobs were never ended; every job the child saw end is closed.
        streaming = {r[1] for r in rows if r[0] == "H"}
        assert len(streaming) == held and set(open_jobs) >= streaming
        assert not set(open_jobs) & set(ended)

        # 3. Interrupted jobs are ended, charging nothing, and every reservation is released.
        reserved_before = sum(ledger.get(uuid.UUID(a["account_id"])).reserved for a in reader.accounts())
        assert reserved_before > 0
        assert ledger.end_interrupted([uuid.UUID(j) for j in open_jobs]) == len(open_jobs)
        for job_id in open_jobs:
            job = ledger.get(uuid.UUID(job_id))
            assert job.outcome == "failed" and job.receipt is None
        for acc in reader.accounts():
            agg = ledger.get(uuid.UUID(acc["account_id"]))
            assert agg.reserved == 0 and agg.reservations == {} and agg.available >= 0
        projector.catch_up()
        assert reader.open_jobs(settings.node_id) == []
        reader.close()
        projector.stop()
        # A job the ledger restarted into can run normally.
        run_job(ledger, ledger.open_account("acct-0"))
    finally:
        ledger.close()

    # 4. The auditor's replay equals the live views and every receipt and balance checks out.
    rc, report = basis_audit(settings.home)
    assert rc == 0 and report["ok"], report["problems"][:10]
    assert report["open_jobs"] == 0 and report["receipts"] >= sum(1 for e in ended.values() if e[2] != "-")


def test_sigkill_mid_projection_resumes_exactly_once(settings):
    ledger = Ledger(settings)
    try:
        account_id = ledger.open_account("proj")
        ledger.grant("proj", 10**30)
        w = ledger.writer
        jobs = [uuid.uuid4() for _ in range(1500)]  # ~9,000 events
        # Each stage is submitted as a burst (so the writer batches it) and awaited, as gateways do.
        for f in [w.submit(ledger.accept_job(job_id=job, account_id=account_id, model="basis-default",
                                             prompt_tokens=i % 50, max_output_tokens=64))
                  for i, job in enumerate(jobs)]:
            f.result()
        for f in [w.submit(ledger.assign_job(job, "contributor", "0x" + format(i % 7 + 1, "040x")))
                  for i, job in enumerate(jobs)]:
            f.result()
        for f in [w.submit(ledger.finish_job(job, outcome=("completed", "cancelled", "failed")[i % 3],
                                             output_tokens=i % 65)) for i, job in enumerate(jobs)]:
            f.result()
        total = ledger.store.recorder.max_notification_id()
    finally:
        ledger.close()

    positions = []
    for step in (1, 2):  # kill twice at different points, each time mid-way through the log
        start = tracked_position(settings.views_path)
        proc = subprocess.Popen([sys.executable, "-c", PROJECTOR_CHILD, "40"], env=child_env(settings.home),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda s=step, b=start: tracked_position(settings.views_path) >= b + total * s // 6,
                     proc, "the projection to get going")
        finally:
            if proc.poll() is None:
                kill(proc)
        positions.append(tracked_position(settings.views_path))
        assert start < positions[-1] < total, "the child must die mid-way through the log"

    ledger = Ledger(settings)
    try:
        projector = Projector(ledger.store, settings.views_path)
        assert projector.position == positions[-1]
        assert projector.catch_up() == total - positions[-1]
        projector.stop()
        report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
        assert report.ok, report.problems[:10]
        expected = sum(1 for i in range(1500) if i % 3 == 0 or i % 65 > 0)  # completed, or some output
        assert report.events == total and report.receipts == expected
    finally:
        ledger.close()
