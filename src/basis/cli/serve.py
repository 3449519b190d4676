"""`basis serve` (one gateway) and `basis up` (a whole local network)."""

from __future__ import annotations

import errno
import socket

import typer

from basis.config import Settings


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise typer.BadParameter(f"{host}:{port} is already in use (another `basis` running?); "
                                         "pick another with --port", param_hint="--port") from None
            raise


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    engine: str = typer.Option("none", help="The gateway's own engine for gateway-served jobs: none, llama-cpp, "
                               "instant (benchmarks only)."),
    engine_models: str = typer.Option(None, help="Comma-separated models the gateway serves itself (default all)."),
    threads: int = typer.Option(None, help="CPU threads for the llama-cpp engine."),
    rpc: str = typer.Option(None, envvar="BASIS_RPC_URL", help="Chain JSON-RPC: follow the vault and settle "
                            "(needs $BASIS_HOME/deployment.json from `basis contracts deploy`)."),
    settle_interval: float = typer.Option(60.0, help="Seconds between settlement batches with --rpc (0: off)."),
    confirmations: int = typer.Option(0, "--confirmations", min=0, envvar="BASIS_CONFIRMATIONS",
                                      help="With --rpc: blocks a deposit must be buried under before it is "
                                      "credited (use more than the chain's reorg depth; 0 for a local anvil)."),
    log_level: str = typer.Option("info", help="Log level (JSON lines on stderr)."),
    ledger_writer: str = typer.Option("process", envvar="BASIS_LEDGER_WRITER",
                                      help="Where job commands commit: process (a writer process of its "
                                      "own, off the event loop's GIL) or thread (in this process)."),
    verifier: str = typer.Option("pool", envvar="BASIS_VERIFIER",
                                 help="Verification of contributor output: pool (checked in this gateway, where the "
                                 "reference model is installed), external (by `basis verifier run`), off "
                                 "(published as disabled)."),
) -> None:
    """Run the OpenAI-compatible gateway (SQLite under BASIS_HOME unless BASIS_DATABASE_URL is set)."""
    import uvicorn

    from basis.gateway.app import create_app
    from basis.gateway.node_lock import NodeIdInUse
    from basis.gateway.runtime import GatewayOptions, GatewayRuntime
    from basis.observability.logging import configure_logging

    configure_logging(log_level)
    _check_port(host, port)
    options = GatewayOptions(engine=engine, n_threads=threads, ledger_writer=ledger_writer, verifier=verifier,
                             engine_models=engine_models.split(",") if engine_models else None)
    from basis.ledger.postgres_store import ConnectionsRefused

    try:
        runtime = GatewayRuntime(Settings(), options)
    except NodeIdInUse as exc:
        typer.echo(f"error: {exc}.", err=True)
        raise typer.Exit(2) from None
    except (FileNotFoundError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    except ConnectionsRefused as exc:  # names the pool settings, not a traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if rpc:
        _enable_chain(runtime, rpc, settle_interval, confirmations)
    uvicorn.run(create_app(runtime), host=host, port=port, log_level="warning", access_log=False,
                ws_max_size=16 * 1024 * 1024, log_config=None)


def _enable_chain(runtime, rpc: str, settle_interval: float, confirmations: int = 0) -> None:
    try:
        runtime.enable_chain(rpc, settle_interval=settle_interval or None, confirmations=confirmations)
        runtime.web3.eth.block_number  # noqa: B018 - fail now, clearly, if the RPC is unreachable
    except Exception as exc:
        runtime.ledger.close()
        message = str(exc) if isinstance(exc, RuntimeError) else f"cannot reach the chain at {rpc}: {exc}"
        raise typer.BadParameter(message, param_hint="--rpc") from None


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    from basis.cli.up import up

    app.command("up")(up)
