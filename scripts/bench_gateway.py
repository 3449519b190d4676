#!/usr/bin/env python
"""Gateway benchmark: the same workload straight to an engine, and through gateway + worker.

    .venv/bin/python scripts/bench_gateway.py [--engines instant,llama-cpp] [--concurrency 1,16,64]

(a) baseline: the engine's own ``generate`` called in-process (no HTTP, no ledger);
(b) gateway: a real `basis serve` process (SQLite ledger, durable signed receipts) and a real
    `basis worker` process on loopback, driven over HTTP by an aiohttp client in this process.
Prints requests/s, p50/p99 latency and the gateway's added latency, time to first token and
relayed tokens/s, side by side, with ratios. `instant` isolates the gateway's own cost.

The aiohttp client shares the two cores and one GIL with its own bookkeeping, which inflates
the gateway's latency by about a millisecond. Where `wrk` (a C load generator) is installed,
the non-streamed instant runs are driven by it too (``--wrk-seconds``), beside a bare
``GET /healthz``: the HTTP floor of the same server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import uvloop

from basis.domain.pricing import PricingTable
from basis.engines.base import GenerateRequest
from basis.models import load_bindings

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
MESSAGES = [{"role": "user", "content": "Summarize this transaction."}]


def run(coro):
    """On uvloop, as the gateway and worker run: the client's own loop costs less of the shared cores."""
    return uvloop.run(coro)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] if xs else float("nan")


async def drive(n: int, concurrency: int, one) -> dict:
    """Run ``one()`` n times with ``concurrency`` in flight; one() -> (latency, ttft, tokens)."""
    lat, ttft, toks = [], [], 0
    it = iter(range(n))

    async def lane() -> None:
        nonlocal toks
        for _ in it:
            a, b, t = await one()
            lat.append(a)
            if b is not None:
                ttft.append(b)
            toks += t

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {"n": n, "rps": n / wall, "p50": pct(lat, 50), "p99": pct(lat, 99), "ttft50": pct(ttft, 50),
            "tok_s": toks / wall}


def engine_for(kind: str, binding):
    if kind == "instant":
        from basis.engines.instant import InstantEngine

        return InstantEngine(binding)
    from basis.engines.llama_cpp import LlamaCppEngine

    eng = LlamaCppEngine(binding, n_threads=1)
    eng.warm_up()
    return eng


async def baseline(kind: str, n: int, concurrency: int, max_tokens: int, stream: bool) -> dict:
    binding = load_bindings(list(PricingTable.load().models.values()))["basis-default"]
    prompt = binding.apply_chat_template(MESSAGES)
    engine = engine_for(kind, binding)

    async def one():
        t0 = time.perf_counter()
        first, count = None, 0
        async for step in engine.generate(GenerateRequest(prompt_ids=prompt, max_tokens=max_tokens,
                                                          model="basis-default")):
            if step.ids and first is None:
                first = time.perf_counter() - t0
            count += len(step.ids)
        return time.perf_counter() - t0, first if stream else None, count

    try:
        return await drive(n, concurrency, one)
    finally:
        await engine.aclose()


async def through_gateway(base: str, key: str, n: int, concurrency: int, max_tokens: int, stream: bool) -> dict:
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, headers={"Authorization": f"Bearer {key}"}) as session:
        body = {"model": "basis-default", "messages": MESSAGES, "max_tokens": max_tokens, "stream": stream}

        async def one():
            t0 = time.perf_counter()
            first, tokens = None, 0
            async with session.post(f"{base}/v1/chat/completions", json=body) as r:
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
                if not stream:
                    tokens = (await r.json())["usage"]["completion_tokens"]
                else:
                    async for raw in r.content:
                        line = raw.decode().strip()
                        if not line.startswith("data: {"):
                            continue
                        delta = json.loads(line[6:])["choices"][0]["delta"]
                        if delta.get("content") and first is None:
                            first = time.perf_counter() - t0
                        tokens = max_tokens  # the server's count; streamed frames may merge tokens
            return time.perf_counter() - t0, first, tokens

        await drive(min(50, n), concurrency, one)  # warm-up
        return await drive(n, concurrency, one)


async def http_floor(base: str, n: int) -> dict:
    """The same Python client's round trip to a bare ``GET /healthz``: the HTTP floor it measures
    every gateway row from (client and server share these cores)."""
    async with aiohttp.ClientSession() as session:
        async def one():
            t0 = time.perf_counter()
            async with session.get(f"{base}/healthz") as r:
                await r.read()
            return time.perf_counter() - t0, None, 0

        await drive(50, 1, one)
        return await drive(n, 1, one)


def start_network(home: Path, engine: str, port: int, capacity: int, writer: str) -> list[subprocess.Popen]:
    env = {**os.environ, "BASIS_HOME": str(home), "BASIS_LOG_LEVEL": "ERROR", "BASIS_LEDGER_WRITER": writer}
    basis = [PY, "-m", "basis.cli.main"]
    subprocess.run([*basis, "credits", "grant", "--account", "bench", "--amount", str(10**27)], env=env, check=True,
                   capture_output=True)
    key = subprocess.run([*basis, "keys", "create", "--account", "bench"], env=env, check=True, capture_output=True,
                         text=True).stdout.strip()
    (home / "bench.key").write_text(key)
    gw = subprocess.Popen([*basis, "serve", "--port", str(port), "--log-level", "error"], env=env)
    procs = [gw]
    wkey = home / "worker.key"
    worker = subprocess.Popen([*basis, "worker", "run", "--gateway", f"ws://127.0.0.1:{port}/v1/workers/connect",
                               "--key-file", str(wkey), "--new-key", "--engine", engine, "--capacity", str(capacity),
                               "--threads", "1", "--log-level", "error"], env=env, stdout=subprocess.DEVNULL)
    procs.append(worker)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).json()["data"]
            if any(m["id"] == "basis-default" and m["status"] == "live" for m in models):
                return procs
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("gateway/worker did not come up")


WRK_LUA = """wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(url: str, concurrency: int, seconds: int, script: Path | None) -> dict:
    """wrk's requests/s and latency percentiles (ms); raises if any request failed."""
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", url]
    if script is not None:
        cmd[1:1] = ["-s", str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failures:\n{out}")
    pcts = {int(m[0]): _ms(m[1]) for m in re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    return {"rps": rps, "p50": pcts[50], "p99": pcts[99]}


def wrk_rows(base_url: str, key: str, levels: list[int], max_tokens: int, seconds: int, engine_p50: dict) -> None:
    body = json.dumps({"model": "basis-default", "messages": MESSAGES, "max_tokens": max_tokens})
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_LUA % (body, key))
        url = f"{base_url}/v1/chat/completions"
        run_wrk(url, 1, 2, script)  # warm-up
        floor = run_wrk(f"{base_url}/healthz", 1, seconds, None)
        print(f"wrk       floor  c=1   | bare GET /healthz p50 {floor['p50']:.2f} ms p99 {floor['p99']:.2f} ms "
              f"({floor['rps']:.0f} rps)", flush=True)
        for c in levels:
            r = run_wrk(url, c, seconds, script)
            added = r["p50"] - engine_p50[c] * 1000
            print(f"wrk       plain  c={c:<3d} | gateway {r['rps']:8.1f} rps p50 {r['p50']:7.2f} ms "
                  f"p99 {r['p99']:7.2f} | added p50 {added:7.2f} ms (engine p50 {engine_p50[c]*1e3:.2f} ms)",
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="instant,llama-cpp")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--requests", type=int, default=2000, help="requests per instant run")
    ap.add_argument("--llama-requests", type=int, default=8, help="requests per llama run")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--port", type=int, default=8790)
    ap.add_argument("--wrk-seconds", type=int, default=5,
                    help="per wrk run on the instant engine (0: no wrk runs; skipped if wrk is absent)")
    ap.add_argument("--ledger-writers", default="process,thread",
                    help="gateway ledger writers to compare on the instant engine: process (the default "
                         "gateway) and thread (one process, the earlier design, as a baseline)")
    a = ap.parse_args()
    levels = [int(c) for c in a.concurrency.split(",")]
    print(f"# bench_gateway  {time.strftime('%Y-%m-%d %H:%M')}  cores={os.cpu_count()}  max_tokens={a.max_tokens}")
    rows = []
    writers = a.ledger_writers.split(",")
    runs = [(e, w) for e in a.engines.split(",") for w in (writers if e == "instant" else writers[:1])]
    for engine, writer in runs:
        print(f"## engine {engine}, ledger writer: {writer}", flush=True)
        home = Path(tempfile.mkdtemp(prefix=f"basis-bench-{engine}-"))
        procs = start_network(home, engine, a.port, capacity=max(levels), writer=writer)
        key = (home / "bench.key").read_text().strip()
        try:
            engine_p50: dict[int, float] = {}
            if engine == "instant":
                floor = run(http_floor(f"http://127.0.0.1:{a.port}", 1000))
                print(f"aiohttp   floor  c=1   | bare GET /healthz p50 {floor['p50']*1e3:.2f} ms "
                      f"p99 {floor['p99']*1e3:.2f} ms ({floor['rps']:.0f} rps)", flush=True)
            for stream in (False, True):
                for c in levels:
                    n = a.requests if engine == "instant" else max(a.llama_requests, c)
                    if engine != "instant" and c > 16:
                        continue  # one CPU engine serialises generation: 64 lanes only queue
                    base = run(baseline(engine, n, c, a.max_tokens, stream))
                    gw = run(through_gateway(f"http://127.0.0.1:{a.port}", key, n, c, a.max_tokens, stream))
                    rows.append((engine, "stream" if stream else "plain", c, base, gw))
                    print_row(*rows[-1])
                    if not stream:
                        engine_p50[c] = base["p50"]
            if engine == "instant" and a.wrk_seconds > 0:
                if shutil.which("wrk") is None:
                    print("wrk: not installed, no C-client rows (apt install wrk)", flush=True)
                else:
                    wrk_rows(f"http://127.0.0.1:{a.port}", key, levels, a.max_tokens, a.wrk_seconds, engine_p50)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
        a.port += 1
    print("\nlegend: rps = requests/s; p50/p99 latency ms; added = gateway p50 - engine p50; ttft = time to first "
          "token (stream); tok/s = relayed output tokens per second; ratio = gateway / engine")


def print_row(engine: str, mode: str, c: int, base: dict, gw: dict) -> None:
    added = (gw["p50"] - base["p50"]) * 1000
    print(f"{engine:9s} {mode:6s} c={c:<3d} | engine {base['rps']:8.1f} rps p50 {base['p50']*1e3:7.2f} ms "
          f"p99 {base['p99']*1e3:7.2f} | gateway {gw['rps']:8.1f} rps p50 {gw['p50']*1e3:7.2f} ms "
          f"p99 {gw['p99']*1e3:7.2f} | added p50 {added:7.2f} ms"
          + (f" | ttft +{(gw['ttft50'] - base['ttft50'])*1e3:6.2f} ms" if mode == "stream" else "")
          + f" | tok/s {gw['tok_s']:9.1f} vs {base['tok_s']:9.1f} ({gw['tok_s'] / base['tok_s']:.0%})",
          flush=True)


if __name__ == "__main__":
    main()
