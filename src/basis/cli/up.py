"""`basis up`: a whole local network on embedded defaults, in one command.

SQLite ledger under BASIS_HOME, the gateway, one local contributor worker on the CPU engine,
a demo account with credit; prints (and writes to $BASIS_HOME/up.json) what a client needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer

from basis.config import Settings
from basis.lifeline import pre_exec_die_with_parent

DEMO_ACCOUNT = "demo"
DEMO_DEPOSIT = 10**21  # 1,000 stand-in $BASIS deposited through the vault on the local chain


def _demo_key(runtime: Any, home: Path) -> str:
    """Reuse the demo key of an earlier `basis up` on this BASIS_HOME; else create one."""
    up_file = home / "up.json"
    if up_file.exists():
        with contextlib.suppress(ValueError, KeyError):
            key = json.loads(up_file.read_text())["api_key"]
            if runtime.ledger.authenticate(key) is not None:
                return key
    _, key = runtime.ledger.create_api_key(DEMO_ACCOUNT)
    return key


def _worker_key(home: Path) -> Path:
    path = home / "worker.key"
    if not path.exists():
        from basis.worker import new_key_file

        new_key_file(path)
    return path


def up(
    host: str = typer.Option("127.0.0.1", help="Interface for the gateway."),
    port: int = typer.Option(8000, help="Gateway port."),
    worker_threads: int = typer.Option(None, help="CPU threads for the local worker's llama.cpp engine."),
    gateway_engine: bool = typer.Option(False, help="Also let the gateway serve jobs itself (no reward)."),
    chain_port: int = typer.Option(8545, help="Port of the local anvil chain."),
    settle_interval: float = typer.Option(30.0, help="Seconds between settlement batches (0: off)."),
    fresh: bool = typer.Option(False, "--fresh", help="Set the old ledger and chain state aside and start over "
                               "(keys are kept)."),
    verifier: str = typer.Option("pool", envvar="BASIS_VERIFIER",
                                 help="Verification of contributor output: pool (in the gateway), external, off."),
) -> None:
    """Bring up a local Basis network (chain, contracts, gateway, worker); Ctrl-C stops everything."""
    import uvicorn

    from basis.cli import up_leftovers
    from basis.domain.signing import ReceiptSigner
    from basis.gateway.app import create_app
    from basis.gateway.runtime import GatewayOptions, GatewayRuntime
    from basis.observability.logging import configure_logging
    from basis.settlement import local_chain

    settings = Settings()
    home = settings.ensure_home()
    gateway_log = open(home / "gateway.log", "a", buffering=1)  # noqa: SIM115 - open while the network runs
    configure_logging("INFO", stream=gateway_log)  # JSON lines, the job id on each job's lines
    for what in up_leftovers.stop_leftovers(home):
        typer.echo(f"stopped a leftover of an earlier `basis up` on this home: {what}")
    up_leftovers.check_port(host, port, "--port")
    up_leftovers.check_port("127.0.0.1", chain_port, "--chain-port")
    if fresh:
        typer.echo(f"set the old state aside in {local_chain.set_aside(home)}")
    operator = ReceiptSigner(settings.settlement_key()).address  # the vault operator
    settings.admin_key(create=True)  # the operator's /admin/keys secret (docs/keys.md); BASIS_ADMIN_KEY wins
    try:
        chain = local_chain.start_local_chain(home, operator, chain_port)
    except local_chain.ChainStateLost as exc:
        typer.echo(f"error: {exc}.\nRun `basis up --fresh` to set this state aside and start a new network.",
                   err=True)
        raise typer.Exit(2) from None
    options = GatewayOptions(engine="llama-cpp" if gateway_engine else "none", engine_models=None,
                             verifier=verifier)
    try:
        runtime = GatewayRuntime(settings, options)
    except ValueError as exc:  # e.g. a malformed BASIS_VERIFIER_SGLANG_URL: a message, not a traceback
        chain.stop()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    runtime.enable_chain(chain.rpc_url, settle_interval=settle_interval or None)
    try:
        local_chain.check_ledger_matches_chain(runtime)
    except local_chain.LostBatches as exc:  # serve; settlement stays stopped until they are re-posted
        typer.echo(f"warning: {exc}.\nWhile this network runs: basis settle repost --rpc {chain.rpc_url}", err=True)
    except local_chain.ChainStateLost as exc:
        chain.stop()
        runtime.ledger.close()
        typer.echo(f"error: {exc}.\nRun `basis up --fresh` to set this state aside and start a new network.",
                   err=True)
        raise typer.Exit(2) from None
    key = _demo_key(runtime, home)
    runtime.indexer.sync()
    demo = runtime.ledger.get(runtime.ledger.open_account(DEMO_ACCOUNT))
    if demo.deposited == 0:
        local_chain.fund_demo_account(chain, demo.id, DEMO_DEPOSIT)
        runtime.indexer.sync()

    base = f"http://{host}:{port}"
    worker_cmd = [sys.executable, "-m", "basis.cli.main", "worker", "run",
                  "--gateway", f"ws://{host}:{port}/v1/workers/connect", "--key-file", str(_worker_key(home)),
                  "--engine", "llama-cpp", "--model", "basis-default", "--model", "basis-small",
                  "--model", "basis-large", "--capacity", "2", "--log-level", "warning"]
    if worker_threads:
        worker_cmd += ["--threads", str(worker_threads)]

    config = uvicorn.Config(create_app(runtime), host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    worker_log = open(home / "worker.log", "ab")  # noqa: SIM115 - lives as long as the worker

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                await serving
                return
            await asyncio.sleep(0.05)
        worker = subprocess.Popen(worker_cmd, stdout=worker_log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "BASIS_HOME": str(home)},
                                  preexec_fn=pre_exec_die_with_parent(signal.SIGTERM))  # started on the main thread
        up_leftovers.record(home, anvil=chain.anvil.process.pid, worker=worker.pid)
        try:
            deadline = time.monotonic() + 120
            while not runtime.hub.live_models() and time.monotonic() < deadline and worker.poll() is None:
                await asyncio.sleep(0.1)
            info = {
                "base_url": f"{base}/v1", "api_key": key, "gateway": base, "explorer_url": f"{base}/",
                "models": [m["id"] for m in runtime.models_status()],
                "live_models": sorted(runtime.hub.live_models()), "home": str(home),
                "gateway_signer": runtime.ledger.signer.address, "chain_id": runtime.chain_id,
                "rpc_url": chain.rpc_url, "contracts": local_chain.describe(chain.manifest),
                "settle_interval": settle_interval, "worker_pid": worker.pid, "gateway_pid": os.getpid(),
                "admin_key_file": str(settings.admin_key_path),
            }
            (home / "up.json").write_text(json.dumps(info, indent=2) + "\n")
            if worker.poll() is not None:
                typer.echo(f"the local worker exited (code {worker.returncode}); see {home / 'worker.log'}", err=True)
            _print_banner(info)
            await serving
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(worker.wait, 15)
                except subprocess.TimeoutExpired:
                    worker.kill()
            worker_log.close()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())
    finally:
        chain.stop()  # anvil writes its state on a clean exit
        up_leftovers.forget(home)
    typer.echo("basis up: stopped cleanly")


def _print_banner(info: dict[str, Any]) -> None:
    typer.echo("")
    typer.echo("Basis is up.")
    typer.echo(f"  base URL      {info['base_url']}")
    typer.echo(f"  API key       {info['api_key']}")
    typer.echo(f"  explorer      {info['explorer_url']}")
    typer.echo(f"  admin key     {info['admin_key_file']} (for {info['gateway']}/admin/keys)")
    typer.echo(f"  models        {', '.join(info['models'])} (live: {', '.join(info['live_models']) or 'none yet'})")
    typer.echo(f"  signer        {info['gateway_signer']}  chain {info['chain_id']} at {info['rpc_url']}")
    c = info["contracts"]
    typer.echo(f"  contracts     vault {c['vault']}  distributor {c['distributor']}  token {c['token']} (stand-in)")
    typer.echo(f"  (also in {info['home']}/up.json; logs in {info['home']}/gateway.log and worker.log;"
               " Ctrl-C stops everything)")
    typer.echo("")
