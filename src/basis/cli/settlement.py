"""``basis settle`` (one settlement batch now) and ``basis deposits sync`` (one indexer pass)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from basis.config import Settings

err = Console(stderr=True)
deposits = typer.Typer(help="On-chain deposits, withdrawals and claims (the chain indexer).", no_args_is_help=True)

_RPC = typer.Option(..., "--rpc", envvar="BASIS_RPC_URL", help="JSON-RPC URL of the chain.")
_MANIFEST = typer.Option(None, "--manifest", help="Deployment manifest (default: $BASIS_HOME/deployment.json).")


def _open(rpc: str, manifest: Path | None):
    from basis.ledger.service import Ledger
    from basis.settlement.chain import connect, load_manifest

    settings = Settings()
    m = load_manifest(manifest, settings.home)
    if m is None:
        err.print("[yellow]the vault is pending:[/yellow] no deployment manifest (basis contracts deploy)")
        raise typer.Exit(2)
    return settings, Ledger(settings), connect(rpc), m


def settle_command(
    rpc: str = _RPC,
    key_file: Path = typer.Option(None, "--key-file", help="Vault operator key (default: this node's operator key)."),
    manifest: Path | None = _MANIFEST,
    max_receipts: int = typer.Option(5000, "--max-receipts", min=1),
) -> None:
    """Settle the unsettled receipts in one batch now (or finish a batch left in flight)."""
    from basis.config import read_key_file
    from basis.ledger.projections import Projector, ViewReader
    from basis.settlement.batches import SettlementError, Settler
    from basis.settlement.chain import Chain

    settings, ledger, w3, m = _open(rpc, manifest)
    try:
        key = read_key_file(key_file) if key_file else settings.settlement_key()
        projector = Projector(ledger.store, settings.views_path)
        projector.catch_up()
        projector.stop()
        reader = ViewReader(settings.views_path)
        settler = Settler(ledger, Chain(w3, m), key, reader=lambda: reader, max_receipts=max_receipts)
        try:
            result = settler.settle_once()
        except SettlementError as exc:
            err.print(f"[red]settlement failed:[/red] {exc}")
            raise typer.Exit(1) from exc
        finally:
            reader.close()
    finally:
        ledger.close()
    if result is None:
        err.print("nothing to settle")
    print(json.dumps(result, indent=2))


@deposits.command("sync")
def deposits_sync(
    rpc: str = _RPC,
    manifest: Path | None = _MANIFEST,
    confirmations: int = typer.Option(0, "--confirmations", min=0, help="Blocks to wait before indexing."),
) -> None:
    """Index Deposited / Withdrawn / Claimed events up to the head (resumes from its cursor)."""
    from basis.settlement.deposits import ChainIndexer

    _settings, ledger, w3, m = _open(rpc, manifest)
    try:
        indexer = ChainIndexer(ledger, w3, m, confirmations=confirmations)
        passes = indexer.sync()
        summary = {"cursor": indexer.cursor(), "passes": [p.as_dict() for p in passes]}
    finally:
        ledger.close()
    print(json.dumps(summary, indent=2))


def register(app: typer.Typer) -> None:
    app.command("settle")(settle_command)
    app.add_typer(deposits, name="deposits")
