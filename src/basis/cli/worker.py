"""``basis worker run`` (a contributor worker) and ``basis worker claim`` (its rewards, on chain)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import typer
import uvloop

app = typer.Typer(help="Contributor worker: serve models to a Basis gateway and earn rewards.", no_args_is_help=True)

DEFAULT_GATEWAY = "ws://127.0.0.1:8000/v1/workers/connect"


def _run(
    gateway: str,
    key_file: Path,
    new_key: bool,
    engine: str,
    models: list[str],
    capacity: int,
    sglang_url: str | None,
    launch: str | None,
    sglang_port: int,
    n_ctx: int | None,
    threads: int | None,
    log_level: str,
    sglang_api_key: str | None = None,
    sglang_deterministic: bool = False,
    home: Path | None = None,
    sglang_original_logprobs: bool = False,
) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from basis.models import load_bindings
    from basis.worker import Worker, WorkerRejected, load_key, make_offers, new_key_file

    if new_key:
        if key_file.exists():
            raise typer.BadParameter(f"{key_file} exists; not overwriting a key", param_hint="--key-file")
        _, address = new_key_file(key_file)
        typer.echo(f"new key written to {key_file} (mode 0600); reward address {address}")
    try:
        key = load_key(key_file)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--key-file") from exc

    # The advertised catalog (model ids, limits, backing files) is the one the gateway publishes.
    from basis.domain.pricing import PricingTable

    bindings = load_bindings(list(PricingTable.load(os.environ.get("BASIS_PRICING_TABLE")).models.values()))
    models = models or ["basis-default"]
    unknown = [m for m in models if m not in bindings]
    if unknown:
        raise typer.BadParameter(f"unknown model(s): {', '.join(unknown)}", param_hint="--model")
    served = {m: bindings[m] for m in models}

    async def main() -> None:
        if engine == "llama-cpp":
            from basis.engines.llama_cpp import LlamaCppEngine

            eng = LlamaCppEngine(served, n_ctx=n_ctx, n_threads=threads)
            await asyncio.to_thread(eng.warm_up)
        elif engine == "sglang":
            eng = await _sglang_engine(served, sglang_url, launch, sglang_port, sglang_api_key, sglang_deterministic,
                                       sglang_original_logprobs)
        elif engine == "instant":
            from basis.engines.instant import InstantEngine

            eng = InstantEngine(served)
        else:
            raise typer.BadParameter("engine must be llama-cpp, sglang or instant", param_hint="--engine")
        try:  # the engine (and a launched sglang process) stops with the worker, however it ends
            # After the engine's own checks, so an engine that cannot serve says so at once rather
            # than after the gateway is reachable.
            store = await asyncio.to_thread(_open_store, gateway, key, home)
            offers = await asyncio.to_thread(make_offers, served, models, capacity)
            worker = Worker(gateway_url=gateway, private_key=key, engine=eng, offers=offers, store=store)
            typer.echo(f"worker {worker.address} -> {gateway} serving {', '.join(models)} (capacity {capacity})")
            await worker.run()
        except WorkerRejected as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from exc
        finally:
            await eng.aclose()

    from basis.engines.base import EngineError

    try:
        with contextlib.suppress(KeyboardInterrupt):
            # uvloop, as the gateway runs under uvicorn: a worker's loop relays every token.
            uvloop.run(main())
    except EngineError as exc:  # the engine could not start (sglang missing, unsupported, unhealthy)
        typer.echo(f"engine: {exc}", err=True)
        raise typer.Exit(2) from exc


async def _sglang_engine(served, sglang_url, launch, port, api_key, deterministic, original_logprobs=False):
    """An SGLangEngine that has passed its version gate; with ``--launch`` it owns the sglang
    process (started with the flags the adapter needs, stopped with the worker)."""
    from basis.engines.sglang import SGLangEngine
    from basis.engines.sglang_server import launch_server

    if len(served) != 1:
        raise typer.BadParameter("the sglang engine serves exactly one --model")
    binding = next(iter(served.values()))
    if launch:
        proc, url, key = await launch_server(launch, port=port, deterministic=deterministic)
        # launched with SGLANG_RETURN_ORIGINAL_LOGPROB=1: its logprobs are the model's own
        eng = SGLangEngine.for_binding(url, binding, api_key=key, process=proc, original_logprobs=True)
    elif sglang_url:
        eng = SGLangEngine.for_binding(sglang_url, binding, api_key=api_key, original_logprobs=original_logprobs)
    else:
        raise typer.BadParameter("--engine sglang needs --sglang-url URL or --launch MODEL_PATH")
    try:
        info = await eng.start()
    except BaseException:
        await eng.aclose()
        raise
    seeds = "honoured" if info.deterministic else "NOT applied (no --enable-deterministic-inference)"
    typer.echo(f"sglang {info.version} at {eng.base_url}: "
               f"{'incremental' if info.incremental else 'cumulative'} streaming, job seeds {seeds}")
    return eng


_GATEWAY = typer.Option(DEFAULT_GATEWAY, "--gateway", help="Gateway WebSocket URL")
_KEY = typer.Option(Path("worker.key"), "--key-file", help="File holding the worker's 0x-hex private key")
_NEW = typer.Option(False, "--new-key", help="Generate a new key into --key-file (mode 0600)")
_ENGINE = typer.Option("llama-cpp", "--engine", help="llama-cpp | sglang | instant (benchmark only)")
_MODEL = typer.Option(None, "--model", help="Advertised model id (repeatable); default basis-default")
_CAP = typer.Option(1, "--capacity", min=1, help="Concurrent jobs per model")
_SURL = typer.Option(None, "--sglang-url", help="URL of a running sglang server")
_LAUNCH = typer.Option(None, "--launch", help="Model path: start sglang.launch_server as a subprocess")
_SPORT = typer.Option(30000, "--sglang-port", help="Port for --launch")
_SKEY = typer.Option(None, "--sglang-api-key", envvar="BASIS_SGLANG_API_KEY",
                     help="API key of the --sglang-url server (its --api-key); --launch makes its own")
_SDET = typer.Option(False, "--sglang-deterministic",
                     help="With --launch: --enable-deterministic-inference, so job seeds are honoured (slower)")
_SORIG = typer.Option(False, "--sglang-original-logprobs",
                      help="The --sglang-url server runs with SGLANG_RETURN_ORIGINAL_LOGPROB=1: serve logprobs jobs "
                           "(protocol v3). Without it sglang reports logprobs after temperature, and none are served")
_NCTX = typer.Option(None, "--n-ctx", help="llama.cpp context size (default 4096)")
_THREADS = typer.Option(None, "--threads", help="llama.cpp threads (default: all cores)")
_LOG = typer.Option("info", "--log-level")
_HOME = typer.Option(None, "--home", help="Worker home, for its receipt store (default: $BASIS_WORKER_HOME, "
                     "else $BASIS_HOME/worker)")


def _open_store(gateway: str, key: str, home: Path | None):
    """The worker's receipt store, pinned to the gateway's published receipt signer (/v1/network)."""
    import time

    from eth_account import Account

    from basis.worker.network import fetch_network, worker_home
    from basis.worker.store import ReceiptStore, StoreCorrupt

    delay = 0.5
    while True:  # the gateway may still be starting: retry with backoff, as the connection does
        try:
            signer = fetch_network(gateway)["gateway_signer"]
            break
        except KeyError as exc:
            typer.echo("error: the gateway publishes no receipt signer at /v1/network", err=True)
            raise typer.Exit(2) from exc
        except Exception as exc:
            typer.echo(f"waiting for the gateway's published receipt signer (/v1/network): {exc}", err=True)
            time.sleep(delay)
            delay = min(30.0, delay * 2)
    try:
        store = ReceiptStore(home or worker_home(), Account.from_key(key).address, gateway_signer=signer)
    except StoreCorrupt as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for side in store.opened.damaged:
        typer.echo(f"warning: the receipt store's damaged tail was set aside in {side}", err=True)
    typer.echo(f"receipt store {store.path}: {len(store.receipts)} receipts, signer {signer}", err=True)
    return store


@app.command("run")
def run(
    gateway: str = _GATEWAY,
    key_file: Path = _KEY,
    new_key: bool = _NEW,
    engine: str = _ENGINE,
    model: list[str] | None = _MODEL,
    capacity: int = _CAP,
    sglang_url: str | None = _SURL,
    launch: str | None = _LAUNCH,
    sglang_port: int = _SPORT,
    n_ctx: int | None = _NCTX,
    threads: int | None = _THREADS,
    log_level: str = _LOG,
    sglang_api_key: str | None = _SKEY,
    sglang_deterministic: bool = _SDET,
    home: Path | None = _HOME,
    sglang_original_logprobs: bool = _SORIG,
) -> None:
    """Connect to the gateway and serve jobs until interrupted (reconnects with backoff).

    Protocol v2: every signed receipt (and verdict) of its jobs is verified against the gateway's
    published signer and appended, fsynced, to the worker's store before it is acknowledged."""
    _run(gateway, key_file, new_key, engine, model or [], capacity, sglang_url, launch, sglang_port, n_ctx,
         threads, log_level, sglang_api_key, sglang_deterministic, home, sglang_original_logprobs)


@app.command("claim")
def claim(
    gateway: str = typer.Option("http://127.0.0.1:8000", "--gateway", help="Gateway base URL (http[s]://...)"),
    key_file: Path = _KEY,
    rpc: str = typer.Option(..., "--rpc", envvar="BASIS_RPC_URL", help="JSON-RPC URL of the chain"),
) -> None:
    """Fetch this worker's reward proof from the gateway and claim it from the RewardDistributor.

    The transaction is sent from the worker's key (it needs gas); the tokens go to the worker.
    Claims prove against the distributor's *accepted* rewards root: a newer root waits out the
    deployment's delay (revocable by the owner meanwhile); a due one is accepted first."""
    import json
    from urllib.parse import urlsplit, urlunsplit

    import httpx
    from eth_account import Account
    from web3 import Web3

    from basis.chain.compiler import load_artifacts
    from basis.chain.contracts import ChainRevert, ErrorDecoder, Sender
    from basis.worker import load_key

    try:
        key = load_key(key_file)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--key-file") from exc
    address = Account.from_key(key).address
    parts = urlsplit(gateway)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    base = urlunsplit((scheme, parts.netloc, "", "", ""))
    _accept_due_root(base, key, rpc)
    resp = httpx.get(f"{base}/v1/settlement/proofs/{address.lower()}", timeout=30)
    if resp.status_code == 404:
        typer.echo(f"no settled rewards for {address} yet")
        raise typer.Exit(1)
    resp.raise_for_status()
    proof = resp.json()
    w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 60}))
    if int(w3.eth.chain_id) != int(proof["chain_id"]):
        typer.echo(f"the RPC serves chain {w3.eth.chain_id}; the rewards are on chain {proof['chain_id']}", err=True)
        raise typer.Exit(2)
    arts = load_artifacts()
    distributor = w3.eth.contract(address=Web3.to_checksum_address(proof["distributor"]),
                                  abi=arts["RewardDistributor"].abi)
    accepted = "0x" + bytes(distributor.functions.rewardsRoot().call()).hex()
    if accepted != proof["rewards_root"].lower():
        typer.echo(f"the gateway's proof is against root {proof['rewards_root']} of batch {proof['batch_id']}, but the "
                   f"distributor's accepted root is {accepted}: not claiming", err=True)
        raise typer.Exit(1)
    already = int(distributor.functions.claimed(address).call())
    cumulative = int(proof["cumulative"])
    if cumulative <= already:
        typer.echo(json.dumps({"worker": address, "claimed": str(already), "claimable": "0"}))
        return
    sender = Sender(w3, key, ErrorDecoder([a.abi for a in arts.values()]))
    try:
        result = sender.transact(
            distributor.functions.claim(address, cumulative, [bytes.fromhex(p[2:]) for p in proof["proof"]]),
            (distributor,))
    except ChainRevert as exc:
        typer.echo(f"claim refused: {exc}", err=True)
        raise typer.Exit(1) from exc
    ev = result.event("Claimed")
    typer.echo(json.dumps({"worker": address, "amount": str(ev.args["amount"]), "cumulative": str(cumulative),
                           "tx_hash": result.tx_hash, "gas_used": result.gas_used, "batch_id": proof["batch_id"]}))


def _accept_due_root(base: str, key: str, rpc: str) -> None:
    """Accept the newest rewards root whose delay has passed (anyone may), so the claim uses it."""
    import httpx
    from web3 import Web3

    from basis.chain.contracts import BasisContracts
    from basis.chain.roots import accept_due_root

    try:
        network = httpx.get(f"{base}/v1/network", timeout=30).json()
        distributor = (network.get("distributor") or {}).get("address")
        token = (network.get("token") or {}).get("address")
        vault = (network.get("vault") or {}).get("address")
        if not (distributor and token and vault):
            return
        w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 60}))
        contracts = BasisContracts(w3, token=token, vault=vault, distributor=distributor)
        if contracts.root_delay() == 0:
            return
        result = accept_due_root(contracts, contracts.sender(key))
    except Exception as exc:  # best effort (e.g. no gas): the claim still uses the accepted root
        typer.echo(f"could not accept a due rewards root ({exc}); claiming against the accepted one", err=True)
        return
    if result is not None:
        typer.echo(f"accepted a due rewards root (tx {result.tx_hash})", err=True)


@app.command("audit")
def audit(
    gateway: str = typer.Option("http://127.0.0.1:8000", "--gateway", help="Gateway base URL (http[s]:// or ws[s]://)"),
    rpc: str = typer.Option(..., "--rpc", envvar="BASIS_RPC_URL", help="JSON-RPC URL of the chain"),
    key_file: Path = _KEY,
    home: Path | None = _HOME,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report."),
    evidence: Path | None = typer.Option(None, "--evidence", help="Write an evidence bundle into this directory."),
    omitted_after: int = typer.Option(2, "--omitted-after", min=1,
                                      help="Batches posted since a receipt arrived before it counts as omitted."),
) -> None:
    """Check the operator against this worker's stored receipts and the chain; exit 1 naming each discrepancy."""
    import json

    from eth_account import Account
    from rich.console import Console
    from rich.table import Table
    from web3 import Web3

    from basis.chain.inclusion import GatewayData
    from basis.worker import load_key
    from basis.worker.audit import audit_worker, write_evidence
    from basis.worker.network import http_base, worker_home
    from basis.worker.store import read_records

    try:
        address = Account.from_key(load_key(key_file)).address.lower()
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--key-file") from exc
    path = (home or worker_home()) / "receipts" / f"{address}.jsonl"
    if not path.is_file():
        typer.echo(f"error: no receipt store at {path} (run the worker with protocol v2 first)", err=True)
        raise typer.Exit(2)
    records = read_records(path)
    data = GatewayData(http_base(gateway))
    try:
        result = audit_worker(records, address, data, Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 60})),
                              omitted_after=omitted_after)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        data.close()
    if evidence is not None:
        for p in write_evidence(evidence, result, records):
            typer.echo(f"wrote {p}", err=True)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2, sort_keys=True))
    else:
        console = Console(width=160)
        table = Table(title=f"worker {address}: {len(result.rows)} receipts")
        for col in ("job", "reward", "status", "batch", "verdict"):
            table.add_column(col)
        for r in result.rows:
            table.add_row(r["job_id"], r["reward"], r["status"], (r["batch_id"] or "-")[:18], r["verdict"] or "-")
        console.print(table)
        for r in result.rewards:
            console.print(f"{r['state']} rewards root of batch {r['batch_id'][:18]}: cumulative "
                          f"{r['cumulative'] or '-'}, expected {r['expected']}")
    for d in result.discrepancies:
        typer.echo(f"DISCREPANCY: {d}", err=True)
    if not result.ok:
        raise typer.Exit(1)
