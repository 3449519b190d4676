#!/usr/bin/env python
"""Ledger benchmark: the real code path, end to end, on SQLite and/or PostgreSQL.

Several client threads drive N synthetic jobs through the full lifecycle (accept with its
reservation and first assignment in one command, as the gateway routes before it accepts; then
finish with receipt hashing + signing and reservation settlement) as
Ledger commands submitted to the group-commit writer (``ledger.writer.submit``). Each client keeps
``--inflight`` jobs in flight and waits for each stage as a gateway request would. Then the live
views are projected, a fresh replay is timed, and the full audit runs (replay + every check).

Baseline, same database, same run: eventsourcing's own recorder inserting the same stored events
(copied from this run) in batches of the writer's average batch size, into an empty store.

The result stays in the store: SQLite under BASIS_HOME (default ./.basis), so afterwards
``basis receipts export`` and ``basis audit`` run on it. PostgreSQL: the database that
BASIS_DATABASE_URL names, with its views under BASIS_HOME/postgres (the script prints the
environment to use); without BASIS_DATABASE_URL a throwaway cluster is started and discarded
at exit unless --keep-postgres.

    python scripts/bench_ledger.py --jobs 20000 --clients 8 --backend both

``--export-audit`` then times the auditor's path on the SQLite store, each step in a fresh process
(its peak RSS is its own): ``basis ledger export`` of the whole log to a file, and ``basis audit
--events`` of that file (chain verified, fresh temporary store, replay and every check); run it on
stores of two sizes to see memory flat. ``--jobs 0 --export-audit`` benches the existing store;
``--baseline REV`` runs both steps with git revision REV's code as well, side by side (wall and CPU
time, the CPU of processes a step starts, load average, peak RSS). ``--ingest-only`` only drives
the jobs into the store (a large store for ``--export-audit``, built faster).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# BENCH_SRC: another revision's sources, for --baseline (the step processes of --export-audit).
sys.path[:0] = [os.environ.get("BENCH_SRC") or str(REPO / "src"), str(REPO)]

from eventsourcing.application import Application  # noqa: E402
from eventsourcing.persistence import StoredEvent  # noqa: E402

from basis.config import Settings, postgres_env  # noqa: E402
from basis.ledger.audit import audit  # noqa: E402
from basis.ledger.committer import GroupCommitter  # noqa: E402
from basis.ledger.projections import Projector  # noqa: E402
from basis.ledger.service import Ledger  # noqa: E402

TARGET_JOBS_PER_S = 5_000  # SQLite lifecycle ingest
TARGET_REPLAY_EVENTS_PER_S = 50_000
TARGET_EXPORT_AUDIT_EVENTS_PER_S = 50_000  # export, and audit from the export, each
MODELS = ("basis-default", "basis-small", "basis-large")
WORKERS = ["0x" + format(i, "040x") for i in range(1, 33)]


@dataclass
class Result:
    backend: str
    jobs: int = 0
    events: int = 0
    receipts: int = 0
    ingest_s: float = 0.0
    batches: int = 0
    project_s: float = 0.0
    replay_events: int = 0
    replay_s: float = 0.0
    audit_s: float = 0.0
    audit_ok: bool = False
    audit_problems: list[str] = field(default_factory=list)
    raw_events: int = 0
    raw_s: float = 0.0
    where: str = ""

    def lines(self) -> list[str]:
        jps, eps = self.jobs / self.ingest_s, self.events / self.ingest_s
        raw = self.raw_events / self.raw_s if self.raw_s else 0.0
        out = [
            f"[{self.backend}] ingest: {self.jobs} jobs, {self.events} events, {self.receipts} signed receipts "
            f"in {self.ingest_s:.2f} s ({self.batches} group commits, {self.events / max(self.batches, 1):.0f} "
            "events/commit)",
            f"[{self.backend}]   lifecycle ingest: {jps:,.0f} jobs/s, {eps:,.0f} events/s",
        ]
        if not self.replay_s:  # --ingest-only
            return out
        rps = self.replay_events / self.replay_s
        out += [
            f"[{self.backend}]   raw insert baseline (eventsourcing recorder, same events, same batch size): "
            f"{raw:,.0f} events/s; ingest/raw = {eps / raw:.2f}" if raw else f"[{self.backend}]   no baseline",
            f"[{self.backend}] live projection: {self.project_s:.2f} s; "
            f"fresh replay: {self.replay_events} events in {self.replay_s:.2f} s = {rps:,.0f} events/s",
            f"[{self.backend}] full audit (replay + compare + recompute + signature recovery): {self.audit_s:.2f} s, "
            f"{'passed' if self.audit_ok else 'FAILED: ' + '; '.join(self.audit_problems[:5])}",
        ]
        if self.backend == "sqlite":
            out.append(f"[{self.backend}] target >= {TARGET_JOBS_PER_S:,} jobs/s: "
                       f"{'MET' if jps >= TARGET_JOBS_PER_S else 'NOT MET'} ({jps:,.0f})")
        out.append(f"[{self.backend}] target replay >= {TARGET_REPLAY_EVENTS_PER_S:,} events/s: "
                   f"{'MET' if rps >= TARGET_REPLAY_EVENTS_PER_S else 'NOT MET'} ({rps:,.0f})")
        out.append(f"[{self.backend}] store: {self.where}")
        return out


# -- profiling the writer thread ------------------------------------------------------------------
_writer_profiles: list[cProfile.Profile] = []


def profile_writer_threads() -> None:
    """cProfile sees only its own thread: wrap the writer loop so each ledger's writer is profiled."""
    original = GroupCommitter._run

    def run(self: GroupCommitter) -> None:
        prof = cProfile.Profile()
        _writer_profiles.append(prof)
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()

    GroupCommitter._run = run  # type: ignore[method-assign]


def print_profile(prof: cProfile.Profile | pstats.Stats, title: str, dump: Path | None, limit: int = 25) -> None:
    stats = prof if isinstance(prof, pstats.Stats) else pstats.Stats(prof)
    if dump is not None:
        stats.dump_stats(str(dump))
    buf = io.StringIO()
    stats.stream = buf  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(limit)
    print(f"\n===== profile: {title} (by own time) =====")
    print("\n".join(line for line in buf.getvalue().splitlines() if line.strip())[:8000])


# -- the run --------------------------------------------------------------------------------------
def _assignment(i: int) -> tuple[str, str | None]:
    """Routed before acceptance, as the gateway does: the first assignment commits with it.
    Three jobs in four go to a contributor, one to the gateway's own engine."""
    return ("contributor", WORKERS[i % len(WORKERS)]) if i % 4 else ("gateway", None)


def ingest(ledger: Ledger, jobs: int, clients: int, inflight: int, prefix: str = "",
           started: list[float] | None = None) -> tuple[float, int]:
    """Drive `jobs` jobs through accept (+ assignment) -> finish from `clients` threads. Returns (seconds, receipts).
    ``started`` receives the wall-clock time the jobs began (to add up several processes)."""
    accounts = []
    for i in range(clients):
        name = f"{prefix}bench-{i}"
        accounts.append(ledger.open_account(name))
        ledger.grant(name, 10**36, memo="benchmark")
    per_client = [jobs // clients + (1 if i < jobs % clients else 0) for i in range(clients)]
    barrier = threading.Barrier(clients + 1)
    receipts = [0] * clients
    errors: list[BaseException] = []
    submit = ledger.writer.submit

    def client(n: int) -> None:
        try:
            account_id = accounts[n]
            todo = per_client[n]
            barrier.wait()
            k = 0
            while k < todo:
                wave = min(inflight, todo - k)
                specs = []
                for j in range(wave):
                    i = k + j
                    specs.append((uuid.uuid4(), MODELS[i % 3], 20 + (i * 37) % 700, 64 + (i * 53) % 960, i))
                futs = [submit(ledger.accept_job(job_id=job, account_id=account_id, model=model,
                                                 prompt_tokens=prompt, max_output_tokens=max_out,
                                                 assignment=_assignment(i)))
                        for job, model, prompt, max_out, i in specs]
                for f in futs:
                    f.result()
                outcomes = ("completed", "completed", "completed", "cancelled", "failed")
                futs = [submit(ledger.finish_job(job, outcome=outcomes[i % 5], output_tokens=(i * 31) % (max_out + 1),
                                                 finish_reason="length", worker_usage={"completion_tokens": i % 500}))
                        for job, _m, _p, max_out, i in specs]
                receipts[n] += sum(1 for f in futs if f.result() is not None)
                k += wave
        except BaseException as exc:  # surface it in the main thread
            errors.append(exc)
            raise

    threads = [threading.Thread(target=client, args=(n,), name=f"bench-client-{n}") for n in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    if started is not None:
        started.append(time.time())
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed, sum(receipts)


def ingest_async(ledger: Ledger, jobs: int, clients: int, inflight: int, prefix: str = "",
                 started: list[float] | None = None) -> tuple[float, int]:
    """The gateway's way: one event loop, ``clients x inflight`` concurrent requests, each awaiting
    its accept (with the assignment) and its end (``Ledger.arun``)."""
    import asyncio

    accounts = []
    for i in range(clients):
        name = f"{prefix}bench-{i}"
        accounts.append(ledger.open_account(name))
        ledger.grant(name, 10**36, memo="benchmark")
    outcomes = ("completed", "completed", "completed", "cancelled", "failed")
    receipts = 0

    async def run() -> float:
        nonlocal receipts
        todo = iter(range(jobs))

        async def lane(account_id: uuid.UUID) -> None:
            nonlocal receipts
            for i in todo:
                job = uuid.uuid4()
                max_out = 64 + (i * 53) % 960
                await ledger.arun(ledger.accept_job(job_id=job, account_id=account_id, model=MODELS[i % 3],
                                                    prompt_tokens=20 + (i * 37) % 700, max_output_tokens=max_out,
                                                    assignment=_assignment(i)))
                receipt = await ledger.arun(ledger.finish_job(
                    job, outcome=outcomes[i % 5], output_tokens=(i * 31) % (max_out + 1), finish_reason="length",
                    worker_usage={"completion_tokens": i % 500}))
                receipts += receipt is not None

        if started is not None:
            started.append(time.time())
        t0 = time.perf_counter()
        await asyncio.gather(*(lane(accounts[k % clients]) for k in range(clients * inflight)))
        return time.perf_counter() - t0

    return asyncio.run(run()), receipts


def _ingest_process(home: str, dsn: str | None, jobs: int, clients: int, inflight: int, prefix: str,
                    driver: str, gate, out) -> None:
    ledger = Ledger(Settings(home=Path(home), database_url=dsn))
    try:
        gate.wait()
        started: list[float] = []
        drive = ingest_async if driver == "asyncio" else ingest
        elapsed, receipts = drive(ledger, jobs, clients, inflight, prefix, started)
        out.put((started[0], started[0] + elapsed, receipts, ledger.writer.batches))
    finally:
        ledger.close()


def ingest_processes(settings: Settings, args: argparse.Namespace) -> tuple[float, int, int]:
    """The same drive from ``--processes`` writer processes sharing the one store (each its own
    accounts): how a deployment with several gateway processes on one host writes. Returns
    (wall seconds from the first start to the last finish, receipts, group commits)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    n = args.processes
    gate, out = ctx.Barrier(n), ctx.Queue()
    shares = [args.jobs // n + (1 if i < args.jobs % n else 0) for i in range(n)]
    procs = [ctx.Process(target=_ingest_process, args=(str(settings.home), settings.database_url, shares[i],
                                                       args.clients, args.inflight, f"p{i}-", args.driver, gate,
                                                       out))
             for i in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise RuntimeError(f"a writer process failed (exit {p.exitcode})")
    wall = max(r[1] for r in results) - min(r[0] for r in results)
    return wall, sum(r[2] for r in results), sum(r[3] for r in results)


def raw_baseline(store_env: dict[str, str], source: Ledger, first_id: int, batch_events: int) -> tuple[int, float]:
    """Insert this run's stored events, copied, into an empty store with eventsourcing's recorder."""
    events: list[StoredEvent] = []
    start = first_id
    while notes := source.store.recorder.select_notifications(start, 10_000, inclusive_of_start=False):
        events.extend(StoredEvent(n.originator_id, n.originator_version, n.topic, n.state) for n in notes)
        start = notes[-1].id
    app = Application(env=store_env)
    try:
        t0 = time.perf_counter()
        for i in range(0, len(events), batch_events):
            app.recorder.insert_events(events[i:i + batch_events])
        return len(events), time.perf_counter() - t0
    finally:
        app.close()


def run_backend(backend: str, args: argparse.Namespace, home: Path, dsn: str | None) -> Result:
    settings = Settings(home=home, database_url=dsn)
    settings.ensure_home()
    result = Result(backend)
    ledger = Ledger(settings)
    try:
        first_id = ledger.store.recorder.max_notification_id() or 0
        if first_id:
            print(f"[{backend}] note: the store already holds {first_id} events; adding to it")
        batches_before = ledger.writer.batches
        if args.processes > 1:
            result.ingest_s, result.receipts, result.batches = ingest_processes(settings, args)
        else:
            drive = ingest_async if args.driver == "asyncio" else ingest
            result.ingest_s, result.receipts = drive(ledger, args.jobs, args.clients, args.inflight)
            result.batches = ledger.writer.batches - batches_before
        result.jobs = args.jobs
        total = ledger.store.recorder.max_notification_id() or 0
        # less the account opening and grants
        result.events = total - first_id - 3 * args.clients * args.processes
        batch_events = max(1, round(result.events / max(result.batches, 1)))
        if args.ingest_only:  # a store to export and audit (--export-audit), built faster
            result.audit_ok = True
            return result

        t0 = time.perf_counter()
        live = Projector(ledger.store, settings.views_path)
        live.catch_up()
        live.stop()
        result.project_s = time.perf_counter() - t0

        with tempfile.TemporaryDirectory(prefix="basis-bench-replay-") as tmp:
            prof = cProfile.Profile() if args.profile else None
            fresh = Projector(ledger.store, Path(tmp) / "replay.sqlite3")
            t0 = time.perf_counter()
            if prof:
                prof.enable()
            result.replay_events = fresh.catch_up()
            if prof:
                prof.disable()
            result.replay_s = time.perf_counter() - t0
            fresh.stop()
            if prof:
                print_profile(prof, f"{backend} replay (Projector.catch_up)",
                              args.profile / f"{backend}-replay.prof")

        t0 = time.perf_counter()
        report = audit(ledger.store, settings.views_path, signer=ledger.signer.address)
        result.audit_s = time.perf_counter() - t0
        result.audit_ok, result.audit_problems = report.ok, report.problems

        if backend == "sqlite":
            with tempfile.TemporaryDirectory(prefix="basis-bench-raw-") as tmp:
                env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(Path(tmp) / "raw.sqlite3"),
                       "SQLITE_LOCK_TIMEOUT": "30"}
                result.raw_events, result.raw_s = raw_baseline(env, ledger, first_id, batch_events)
            result.where = (f"BASIS_HOME={home} (events {settings.events_path.name}, views "
                            f"{settings.views_path.name}): BASIS_HOME={home} basis audit --json")
        else:
            assert dsn is not None
            import psycopg

            raw_db = "basis_bench_raw_" + uuid.uuid4().hex[:8]
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {raw_db}")
            try:
                result.raw_events, result.raw_s = raw_baseline(
                    postgres_env(dsn.rsplit("/", 1)[0] + "/" + raw_db), ledger, first_id, batch_events)
            finally:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE IF EXISTS {raw_db} WITH (FORCE)")
            result.where = (f"BASIS_DATABASE_URL={dsn} BASIS_HOME={home} (views there): "
                            f"BASIS_DATABASE_URL={dsn} BASIS_HOME={home} basis audit --json")
    finally:
        ledger.close()
    return result


def _export_audit_step(step: str, home: str, path: str, upto: int) -> None:
    """One step in this (fresh) process; prints a JSON line: wall and CPU seconds (this process and
    the processes it started), events, peak RSS, load average."""
    import json
    import resource

    settings = Settings(home=Path(home), database_url=None)
    import basis.cli.audit_events  # noqa: F401  (module imports, ~1-2 s, are process start, not the step)
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    if step == "export":
        from basis.ledger.export import export
        from basis.ledger.store import LedgerStore

        store = LedgerStore(settings.event_store_env())
        with open(path, "w") as fh:
            point = export(store, fh, upto=upto)
        store.close()
        out = {"events": point.position, "head": point.head_hex, "ok": True}
    else:
        from basis.cli.audit_events import audit_events
        from basis.domain.signing import ReceiptSigner
        from basis.ledger.export_replay import ExportReplay

        projection: list[float] = []  # the CPU of the projection's own process, where it has one
        finish = ExportReplay.finish

        def timed_finish(self: ExportReplay, irregular: bool) -> bool:
            result = finish(self, irregular)
            if getattr(self, "projection_cpu_seconds", None) is not None:
                projection.append(self.projection_cpu_seconds)
            return result

        ExportReplay.finish = timed_finish  # type: ignore[method-assign]
        report, summary = audit_events([Path(path)], signer=ReceiptSigner(settings.operator_key()).address)
        out = {"events": summary["events"], "head": summary["head"], "ok": report.ok, "problems": report.problems[:5],
               "receipts": report.receipts, "projection_cpu_seconds": projection[0] if projection else None}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    out.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0,
               children_cpu_seconds=children.ru_utime + children.ru_stime,
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               children_peak_rss_mb=children.ru_maxrss / 1024, load=[load, os.getloadavg()[0]])
    print(json.dumps(out))


def _baseline_src(rev: str, into: Path) -> Path:
    """The package sources of commit ``rev`` (the implementation to compare with), unpacked into ``into``."""
    import subprocess

    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def bench_export_audit(home: Path, baseline: str | None = None) -> bool:
    """Export the whole store, then audit the export; each step in a fresh process, with this
    checkout's code and, given ``baseline`` (a git revision), that revision's code side by side."""
    import json
    import subprocess

    settings = Settings(home=home, database_url=None)
    ledger_events = Ledger(settings)
    total = ledger_events.store.recorder.max_notification_id() or 0
    ledger_events.close()
    ok = True
    with tempfile.TemporaryDirectory(prefix="basis-bench-export-") as tmp:
        impls = [("this", None)]
        if baseline:
            impls.append((baseline, str(_baseline_src(baseline, Path(tmp)))))
        path = str(Path(tmp) / f"ledger-{total}.jsonl")  # a cut elsewhere may fall inside one commit
        rates: dict[tuple[str, str], float] = {}
        cpu_rates: dict[tuple[str, str], tuple[float, float]] = {}  # per CPU-second: all processes, the first
        heads: set[str] = set()
        for step in ("export", "audit"):
            for name, src in impls:
                out = path if step == "audit" or name == "this" else path + f".{name}"
                env = dict(os.environ, **({"BENCH_SRC": src} if src else {}))
                proc = subprocess.run([sys.executable, __file__, "--step", step, str(home), out, str(total)],
                                      capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    print(proc.stderr[-3000:])
                    return False
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                cpu = r["cpu_seconds"] + r["children_cpu_seconds"]
                rate, cpu_rate = r["events"] / r["seconds"], r["events"] / cpu
                rates[(step, name)] = rate
                cpu_rates[(step, name)] = (cpu_rate, r["events"] / r["cpu_seconds"])
                size = f", file {os.path.getsize(out) / 2**20:.0f} MiB" if step == "export" else ""
                projection = r.get("projection_cpu_seconds")
                if projection is not None:  # the audit's three processes: reader, projection, receipt checks
                    busiest = max(r["cpu_seconds"], projection, r["children_cpu_seconds"] - projection)
                    size = (f"; children: projection {projection:.2f} s, receipt checks "
                            f"{r['children_cpu_seconds'] - projection:.2f} s; busiest process {busiest:.2f} s = "
                            f"{r['events'] / busiest:,.0f} events/s with a free core each, on 2 cores at most "
                            f"{r['events'] / max(busiest, cpu / 2):,.0f} events/s")
                target = "met" if rate >= TARGET_EXPORT_AUDIT_EVENTS_PER_S else "not met"
                print(f"[export-audit] {step:6} ({name:>8}) {r['events']:>9,} events: {r['seconds']:.2f} s wall = "
                      f"{rate:,.0f} events/s (target {TARGET_EXPORT_AUDIT_EVENTS_PER_S:,}: {target}); CPU "
                      f"{r['cpu_seconds']:.2f} s + {r['children_cpu_seconds']:.2f} s in child processes = "
                      f"{cpu_rate:,.0f} events per CPU-second; peak RSS {r['peak_rss_mb']:.0f} MB (children "
                      f"{r['children_peak_rss_mb']:.0f} MB); load average {r['load'][0]:.1f} -> {r['load'][1]:.1f}"
                      f"{size}{'' if r['ok'] else ', FAILED: ' + str(r.get('problems'))}", flush=True)
                heads.add(r["head"])
                ok = ok and r["ok"] and len(heads) == 1  # every export, and every audit, ends at the same head
            if baseline:
                (this_all, this_main), (base_all, base_main) = cpu_rates[(step, "this")], cpu_rates[(step, baseline)]
                wall = rates[(step, "this")] / rates[(step, baseline)]
                print(f"[export-audit] {step:6} this / {baseline}: wall events/s {wall:.2f}x (on a shared machine, "
                      f"mostly its load); events per CPU-second {this_all / base_all:.2f}x "
                      f"(all processes), {this_main / base_main:.2f}x (the first process, which the others run "
                      "beside)", flush=True)
    return ok


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--step":
        _export_audit_step(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--inflight", type=int, default=64, help="jobs each client keeps in flight")
    parser.add_argument("--processes", type=int, default=1,
                        help="writer processes sharing the store, each with --clients threads and its own accounts")
    parser.add_argument("--driver", choices=("threads", "asyncio"), default="threads",
                        help="client threads waiting on futures, or one event loop awaiting as the gateway does")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--keep-postgres", action="store_true",
                        help="leave the throwaway PostgreSQL cluster running (its URL is printed)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="cProfile the writer thread (ingest) and the replay; .prof files go to DIR")
    parser.add_argument("--baseline", metavar="REV", default=None,
                        help="with --export-audit: run both steps with git revision REV's code too, side by side")
    parser.add_argument("--ingest-only", action="store_true",
                        help="only drive the jobs into the store (no projection, replay, audit or raw baseline)")
    parser.add_argument("--export-audit", action="store_true",
                        help="then time `basis ledger export` and `basis audit --events` (SQLite store)")
    args = parser.parse_args()
    if args.jobs == 0 and args.export_audit:
        home = Settings().home
        print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, Python "
              f"{platform.python_version()}; existing store BASIS_HOME={home}")
        return 0 if bench_export_audit(home, args.baseline) else 1
    if args.jobs < 1 or args.clients < 1 or args.inflight < 1 or args.processes < 1:
        parser.error("--jobs, --clients, --inflight and --processes must be positive")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        profile_writer_threads()

    home = Settings().home
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, Python "
          f"{platform.python_version()}, {platform.platform()}")
    print(f"jobs={args.jobs} driver={args.driver} processes={args.processes} clients/process={args.clients} "
          f"inflight/client={args.inflight} BASIS_HOME={home}")
    results: list[Result] = []
    if args.backend in ("sqlite", "both"):
        results.append(run_backend("sqlite", args, home, None))
        for line in results[-1].lines():
            print(line, flush=True)
    if args.backend in ("postgres", "both"):
        dsn = os.environ.get("BASIS_DATABASE_URL")
        server = None
        if not dsn:
            from tests.support.postgres import ThrowawayPostgres

            server = ThrowawayPostgres()
            dsn = server.dsn
            print(f"[postgres] started a throwaway cluster at {dsn}")
        pg_home = home / "postgres"
        pg_home.mkdir(parents=True, exist_ok=True)
        key = Settings(home=home).operator_key_path
        if key.exists() and not (pg_home / "operator.key").exists():
            shutil.copy2(key, pg_home / "operator.key")
        try:
            results.append(run_backend("postgres", args, pg_home, dsn))
            for line in results[-1].lines():
                print(line, flush=True)
        finally:
            if server is not None:
                if args.keep_postgres:
                    print(f"[postgres] cluster left running: {dsn}; stop it with "
                          f"pg_ctl -D {server.dir / 'data'} stop (as the postgres user when root)")
                else:
                    server.stop()
                    print("[postgres] throwaway cluster stopped and deleted (use BASIS_DATABASE_URL or "
                          "--keep-postgres to keep the store)")
    for i, prof in enumerate(_writer_profiles):
        if prof.getstats():
            print_profile(prof, f"writer thread #{i} (ingest)", args.profile / f"writer-{i}.prof")
    exported_ok = True
    if args.export_audit and args.backend in ("sqlite", "both"):
        exported_ok = bench_export_audit(home, args.baseline)
    return 0 if all(r.audit_ok for r in results) and exported_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
