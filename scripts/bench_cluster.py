#!/usr/bin/env python
"""Cluster benchmark: 1 gateway against N gateways on one PostgreSQL (issue #15 item 8).

    PYTHONPATH=src .venv/bin/python scripts/bench_cluster.py [--gateways 1,2] [--concurrency 32] [--seconds 5]

A throwaway PostgreSQL cluster (initdb + pg_ctl, as the tests' ``pg_dsn``), then for each gateway
count a fresh database, that many real ``basis serve`` processes (one shared operator key, each its
own node id and home) and one ``instant`` worker each, driven over HTTP by an aiohttp client in this
process with the same total concurrency spread round-robin over the gateways. Workloads:

- ``many``: every lane its own account (no two lanes write one account);
- ``hot``: every lane the same account, with ample credit;
- ``hot-402``: the same account funded for ``--budget-requests`` requests only, so most requests
  are refused: refusals must stop at exactly that many served, whatever the gateway count.

Prints requests/s, p50/p99 latency (ms), refusals (402) and 5xx side by side, the first gateway
count as the baseline, and checks after ``hot-402`` that the account was never overdrawn. Bounded:
each row runs ``--seconds`` (after a one-second warm-up). The client shares the machine's cores
with the gateways, workers and PostgreSQL; wrk is not used because its per-gateway percentiles
cannot be merged into one distribution.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import httpx
import uvloop

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support.postgres: the tests' own throwaway cluster

from tests.support.postgres import ThrowawayPostgres  # noqa: E402

from basis.chain.anvil import free_port  # noqa: E402
from basis.config import Settings  # noqa: E402
from basis.domain.pricing import worst_case_charge  # noqa: E402
from basis.ledger.service import Ledger  # noqa: E402

PY = sys.executable
MESSAGES = [{"role": "user", "content": "Summarize this transaction."}]
MAX_TOKENS = 16


ROLES = ("gateway", "writer", "projector", "worker", "postgres", "client")


def _ppids() -> dict[int, int]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            out[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return out


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads); 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    f = stat[stat.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_role(cluster: Cluster, pg: ThrowawayPostgres) -> dict[str, float]:
    """CPU seconds used so far by each role's processes: the gateways, their ledger writer and
    projector processes (named by basis.lifeline), the workers, PostgreSQL, and this client."""
    ppids = _ppids()

    def tree(root: int) -> list[int]:
        out, todo = [], [root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(c for c, pp in ppids.items() if pp == pid)
        return out

    cpu = dict.fromkeys(ROLES, 0.0)
    for g in cluster.gateways:
        for pid in tree(g.pid):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            role = {"basis-writer": "writer", "basis-projector": "projector"}.get(comm, "gateway")
            cpu[role] += _cpu_s(pid)
    for w in cluster.procs:
        cpu["worker"] += sum(_cpu_s(pid) for pid in tree(w.pid))
    postmaster = int((pg.dir / "data" / "postmaster.pid").read_text().split()[0])
    cpu["postgres"] = sum(_cpu_s(pid) for pid in tree(postmaster))
    t = os.times()
    cpu["client"] = t.user + t.system
    return cpu


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] if xs else float("nan")


class Cluster:
    """``n`` gateways (and an instant worker each) on one PostgreSQL database."""

    def __init__(self, pg: ThrowawayPostgres, n: int, port: int, capacity: int, root: Path,
                 verifier: str = "pool") -> None:
        import psycopg

        root.mkdir(parents=True, exist_ok=True)
        db = f"bench_{root.name}_{n}_{os.getpid()}"
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {db}")
        self.dsn = pg.dsn.rsplit("/", 1)[0] + f"/{db}"
        self.key_file = root / f"operator-{n}.key"
        self.homes = [root / f"c{n}-gw{i}" for i in range(n)]
        self.ports = [port + i if port else free_port() for i in range(n)]
        self.verifier = verifier
        self.procs: list[subprocess.Popen[bytes]] = []
        self.gateways: list[subprocess.Popen[bytes]] = []
        self.ledger = Ledger(Settings(home=self.homes[0], database_url=self.dsn), env=None,
                             signer_key=self._operator_key())
        for i, (home, p) in enumerate(zip(self.homes, self.ports, strict=True)):
            env = self.env(i)
            self.gateways.append(self.serve(i))
            self.procs.append(subprocess.Popen(
                [PY, "-m", "basis.cli.main", "worker", "run", "--gateway", f"ws://127.0.0.1:{p}/v1/workers/connect",
                 "--key-file", str(home / "worker.key"), "--new-key", "--engine", "instant", "--capacity",
                 str(capacity), "--threads", "1", "--log-level", "error"], env=env, stdout=subprocess.DEVNULL))
        for p in self.ports:
            self._wait_live(p)

    def serve(self, i: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([PY, "-m", "basis.cli.main", "serve", "--port", str(self.ports[i]),
                                 "--log-level", "error"], env=self.env(i))

    def _operator_key(self) -> str:
        if not self.key_file.exists():
            self.key_file.write_text("0x" + os.urandom(32).hex() + "\n")
            self.key_file.chmod(0o600)
        return self.key_file.read_text().strip()

    def env(self, i: int) -> dict[str, str]:
        self.homes[i].mkdir(parents=True, exist_ok=True)
        return {**os.environ, "BASIS_HOME": str(self.homes[i]), "BASIS_DATABASE_URL": self.dsn,
                "BASIS_NODE_ID": f"gateway-{i + 1}", "BASIS_OPERATOR_KEY_FILE": str(self.key_file),
                "BASIS_LOG_LEVEL": "ERROR", "PYTHONPATH": str(REPO / "src"), "BASIS_VERIFIER": self.verifier}

    @staticmethod
    def _wait_live(port: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).json()["data"]
                if any(m["id"] == "basis-default" and m["status"] == "live" for m in models):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gateway on port {port} did not come up with a live model")

    def account(self, name: str, credit: int) -> tuple[object, str]:
        account_id, key = self.ledger.create_api_key(name)
        self.ledger.grant(name, credit)
        return account_id, key

    def close(self) -> None:
        for p in self.gateways + self.procs:
            p.terminate()
        for p in self.gateways + self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.ledger.close()


async def load(bases: list[str], keys: list[str], concurrency: int, seconds: float,
               warm_keys: list[str] | None = None, probe: Callable[[], dict[str, float]] | None = None) -> dict:
    """``concurrency`` lanes for ``seconds``: lane i posts to gateway i % N with key i % len(keys)
    (during the warm-up second, with ``warm_keys`` where given)."""
    lat: list[float] = []
    statuses: dict[int, int] = {}
    body = {"model": "basis-default", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def lane(i: int, until: float, record: bool) -> None:
            url = f"{bases[i % len(bases)]}/v1/chat/completions"
            use = keys if record or not warm_keys else warm_keys
            headers = {"Authorization": f"Bearer {use[i % len(use)]}"}
            while time.perf_counter() < until:
                t0 = time.perf_counter()
                async with session.post(url, json=body, headers=headers) as r:
                    await r.read()
                    if record:
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                        if r.status == 200:
                            lat.append(time.perf_counter() - t0)

        warm = time.perf_counter() + 1.0
        await asyncio.gather(*(lane(i, warm, False) for i in range(concurrency)))
        cpu0 = probe() if probe else {}
        start = time.perf_counter()
        await asyncio.gather(*(lane(i, start + seconds, True) for i in range(concurrency)))
        wall = time.perf_counter() - start
        cpu1 = probe() if probe else {}
    return {"rps": statuses.get(200, 0) / wall, "p50": pct(lat, 50) * 1e3, "p99": pct(lat, 99) * 1e3,
            "refused": statuses.get(402, 0), "5xx": sum(v for s, v in statuses.items() if s >= 500),
            "other": {s: v for s, v in statuses.items() if s not in (200, 402) and s < 500}, "served": len(lat),
            "cpu": {k: cpu1[k] - cpu0[k] for k in cpu1}, "wall": wall, "load": os.getloadavg()[0]}


async def restart_under_load(cluster: Cluster, key: str, concurrency: int) -> dict:
    """SIGKILL gateway 0 while ``concurrency`` lanes load every gateway, start it again at once on
    the same home and port, and time from the kill to its ``/healthz`` and to the first request it
    serves (its worker has to reconnect too). 5xx are counted on every gateway."""
    bases = [f"http://127.0.0.1:{p}" for p in cluster.ports]
    body = {"model": "basis-default", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    headers = {"Authorization": f"Bearer {key}"}
    statuses: dict[int, int] = {}
    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def lane(i: int) -> None:
            while not stop.is_set():
                try:
                    async with session.post(f"{bases[i % len(bases)]}/v1/chat/completions", json=body,
                                            headers=headers) as r:
                        raw = await r.read()
                        what: int | str = r.status
                        if r.status >= 500:
                            with contextlib.suppress(ValueError, KeyError, TypeError):
                                what = f"{r.status} {json.loads(raw)['error']['code']} (gw {i % len(bases)})"
                        statuses[what] = statuses.get(what, 0) + 1
                except (TimeoutError, aiohttp.ClientError):
                    await asyncio.sleep(0.05)  # the killed gateway: keep knocking

        async def healthz() -> bool:
            async with session.get(bases[0] + "/healthz") as r:
                return r.status == 200

        async def worker_back() -> bool:
            async with session.get(bases[0] + "/v1/models") as r:
                return any(m["id"] == "basis-default" and m["status"] == "live" for m in (await r.json())["data"])

        async def serves() -> bool:
            async with session.post(bases[0] + "/v1/chat/completions", json=body, headers=headers) as r:
                return r.status == 200

        async def first(check, since: float) -> float:
            while True:
                if cluster.gateways[0].poll() is not None:
                    raise RuntimeError(f"the restarted gateway exited ({cluster.gateways[0].returncode})")
                if time.monotonic() - since > 120:
                    raise RuntimeError(f"the restarted gateway did not pass {check.__name__} in 120 s")
                try:
                    if await check():
                        return time.monotonic() - since
                except (TimeoutError, aiohttp.ClientError):
                    pass
                await asyncio.sleep(0.02)

        lanes = [asyncio.create_task(lane(i)) for i in range(concurrency)]
        await asyncio.sleep(2.0)
        victim = cluster.gateways[0]
        victim.kill()
        killed = time.monotonic()
        await asyncio.to_thread(victim.wait)
        cluster.gateways[0] = cluster.serve(0)
        spawned = time.monotonic() - killed
        healthy, live, serving = await asyncio.gather(first(healthz, killed), first(worker_back, killed),
                                                      first(serves, killed))
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*lanes)
    return {"spawned": spawned, "healthy": healthy, "live": live, "serving": serving,
            "5xx": {s: v for s, v in statuses.items() if not isinstance(s, int) or s >= 500},
            "served": statuses.get(200, 0)}


def run_workloads(cluster: Cluster, concurrency: int, seconds: float, budget_requests: int, worst: int,
                  restarts: int = 0, workloads: tuple[str, ...] = ("many", "hot", "hot-402"),
                  probe: Callable[[], dict[str, float]] | None = None) -> dict:
    bases = [f"http://127.0.0.1:{p}" for p in cluster.ports]
    out = {}
    if "many" in workloads:
        many = [cluster.account(f"many-{i}", 10**27)[1] for i in range(concurrency)]
        out["many"] = uvloop.run(load(bases, many, concurrency, seconds, probe=probe))
    _, hot = cluster.account("hot", 10**27)
    if "hot" in workloads:
        out["hot"] = uvloop.run(load(bases, [hot], concurrency, seconds, probe=probe))
    for i in range(restarts):
        r = uvloop.run(restart_under_load(cluster, hot, concurrency))
        print(f"  {len(cluster.ports)} gateway(s) restart {i + 1}: SIGKILL -> respawned {r['spawned']:.2f} s, "
              f"/healthz {r['healthy']:.2f} s, its worker back {r['live']:.2f} s, "
              f"first request served {r['serving']:.2f} s "
              f"(target <= 10 s); 5xx {r['5xx'] or 0}", flush=True)
    if "hot-402" not in workloads:
        return out
    # Half a request short of budget + 1: exact refusals serve exactly ``budget_requests``.
    account_id, tight = cluster.account("hot-402", worst * budget_requests + worst // 2)
    row = uvloop.run(load(bases, [tight], concurrency, seconds, warm_keys=[hot], probe=probe))
    acc = cluster.ledger.get(account_id)
    row["overdrawn"] = acc.available < 0 or acc.spent > acc.total_credit
    row["exact"] = (acc.reserved == 0 and acc.spent == worst * budget_requests and acc.available < worst
                    and row["served"] == budget_requests)
    out["hot-402"] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", default="1,2", help="gateway counts; the first is the baseline")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight in total")
    ap.add_argument("--seconds", type=float, default=5.0, help="per row, after a 1 s warm-up")
    ap.add_argument("--budget-requests", type=int, default=200, help="what the hot-402 account can pay for")
    ap.add_argument("--restarts", type=int, default=0,
                    help="after the hot row, SIGKILL and restart gateway 0 under load this many times")
    ap.add_argument("--verifier", default="pool", choices=("pool", "off"),
                    help="the gateways' verifier; each fresh worker's first checked jobs (its probation) are all "
                         "checked, so short rows with new workers are dominated by scoring: off isolates the rest")
    ap.add_argument("--workloads", default="many,hot,hot-402", help="which rows to run")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the gateway counts in turn (1,2,1,2...), for a shared machine's drift")
    ap.add_argument("--port", type=int, default=0, help="first gateway port (default: free loopback ports)")
    a = ap.parse_args()
    counts = [int(n) for n in a.gateways.split(",")]
    print(f"# bench_cluster  {time.strftime('%Y-%m-%d %H:%M')}  cores={os.cpu_count()}  concurrency={a.concurrency}"
          f"  seconds={a.seconds}  max_tokens={MAX_TOKENS}  engine=instant  verifier={a.verifier}"
          f"  load={os.getloadavg()[0]:.1f}", flush=True)
    pg = ThrowawayPostgres()
    workloads = tuple(a.workloads.split(","))
    results: list[tuple[int, dict]] = []  # (gateway count, rows), in the order run
    try:
        with tempfile.TemporaryDirectory(prefix="basis-bench-cluster-") as tmp:
            for rnd in range(a.rounds):
                for n in counts:
                    cluster = Cluster(pg, n, a.port, capacity=a.concurrency, root=Path(tmp) / f"r{rnd}",
                                      verifier=a.verifier)
                    try:
                        binding_terms = cluster.ledger.pricing.terms_for("basis-default")
                        from basis.models import load_bindings

                        binding = load_bindings(list(cluster.ledger.pricing.models.values()))["basis-default"]
                        worst = worst_case_charge(len(binding.apply_chat_template(MESSAGES)), MAX_TOKENS,
                                                  binding_terms)
                        rows = run_workloads(cluster, a.concurrency, a.seconds, a.budget_requests, worst,
                                             a.restarts, workloads, probe=lambda c=cluster: cpu_by_role(c, pg))
                        results.append((n, rows))
                        for name, r in rows.items():
                            print(f"  {n} gateway(s) {name:8s} {r['rps']:8.1f} rps p50 {r['p50']:7.1f} "
                                  f"p99 {r['p99']:7.1f} 402 {r['refused']:6d} 5xx {r['5xx']:3d}"
                                  + (f" other {r['other']}" if r['other'] else "")
                                  + (f" exact={r['exact']} overdrawn={r['overdrawn']}" if "exact" in r else ""),
                                  flush=True)
                            done = max(1, r["served"] + r["refused"])
                            print(f"      load avg {r['load']:.1f}; CPU ms per answered request: "
                                  + " ".join(f"{k} {v * 1e3 / done:.2f}" for k, v in r["cpu"].items())
                                  + f"; total {sum(r['cpu'].values()) * 1e3 / done:.2f}"
                                  f" ({sum(r['cpu'].values()) / r['wall']:.2f} cores busy)", flush=True)
                    finally:
                        cluster.close()
                    a.port += n if a.port else 0
    finally:
        pg.stop()
    print()
    print(f"{'workload':9s} | gws  round:  rps      p50     p99    402  5xx  cpu ms/req | vs the round's baseline")
    for name in workloads:
        base = None
        for i, (n, rows) in enumerate(results):
            r = rows[name]
            if n == counts[0]:
                base = r
            done = max(1, r["served"] + r["refused"])
            vs = (f"rps {r['rps'] / base['rps']:.0%} p99 {r['p99'] / base['p99']:.1f}x"
                  if base is not None and n != counts[0] and base["rps"] else "")
            print(f"{name:9s} | {n:3d}  {i // len(counts) + 1:5d} {r['rps']:7.1f} {r['p50']:7.1f} {r['p99']:7.1f} "
                  f"{r['refused']:6d} {r['5xx']:4d} {sum(r['cpu'].values()) * 1e3 / done:8.2f}   | {vs}")
    if "hot-402" in workloads:
        print("\nhot-402: " + "; ".join(f"{n} gw exact={rows['hot-402']['exact']} "
                                         f"overdrawn={rows['hot-402']['overdrawn']}" for n, rows in results))
    print("legend: rps = served requests/s; p50/p99 ms of served requests; 402 = refusals; 5xx must be 0; "
          "exact = the account served exactly what it could pay for; cpu = CPU of every process (gateways, "
          "their writer and projector processes, workers, PostgreSQL, this client) per answered request")


if __name__ == "__main__":
    main()
