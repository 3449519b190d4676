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
    log_level: str = typer.Option("warning", help="uvicorn log level."),
) -> None:
    """Run the OpenAI-compatible gateway (SQLite under BASIS_HOME unless BASIS_DATABASE_URL is set)."""
    import uvicorn

    from basis.gateway.app import create_app
    from basis.gateway.runtime import GatewayOptions, GatewayRuntime

    _check_port(host, port)
    options = GatewayOptions(engine=engine, n_threads=threads,
                             engine_models=engine_models.split(",") if engine_models else None)
    runtime = GatewayRuntime(Settings(), options)
    uvicorn.run(create_app(runtime), host=host, port=port, log_level=log_level, access_log=False,
                ws_max_size=16 * 1024 * 1024)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    from basis.cli.up import up

    app.command("up")(up)
