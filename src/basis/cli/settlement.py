"""``basis settle`` (one settlement batch now; ``check``, ``repost``) and ``basis deposits sync``."""

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


settle = typer.Typer(help="Settle receipts on chain; check and repair what the chain holds.",
                     invoke_without_command=True)


def _settler(rpc: str | None, key_file: Path | None, manifest: Path | None, max_receipts: int = 5000,
             wait: float = 60.0):
    """(ledger, settler, close) for this node's home; the projector is caught up first."""
    from basis.config import read_key_file
    from basis.ledger.projections import Projector, ViewReader
    from basis.settlement.batches import Settler
    from basis.settlement.chain import Chain

    if not rpc:
        _missing_rpc()
    settings, ledger, w3, m = _open(rpc, manifest)
    key = read_key_file(key_file) if key_file else settings.settlement_key()
    projector = Projector(ledger.store, settings.views_path)
    projector.catch_up()
    projector.stop()
    reader = ViewReader(settings.views_path)

    def close() -> None:
        reader.close()
        ledger.close()

    return Settler(ledger, Chain(w3, m), key, reader=lambda: reader, max_receipts=max_receipts,
                   lease_wait=wait), close


_RPC_OPT = typer.Option(None, "--rpc", envvar="BASIS_RPC_URL", help="JSON-RPC URL of the chain.")
_KEY = typer.Option(None, "--key-file", help="Vault operator key (default: this node's operator key).")
_WAIT = typer.Option(60.0, "--wait", min=0, help="Seconds to wait while another settler (a gateway, another "
                     "`basis settle`) holds the settlement lease.")


@settle.callback()
def settle_command(
    ctx: typer.Context,
    rpc: str = _RPC_OPT,
    key_file: Path = _KEY,
    manifest: Path | None = _MANIFEST,
    max_receipts: int = typer.Option(5000, "--max-receipts", min=1),
    wait: float = _WAIT,
) -> None:
    """Settle the unsettled receipts in one batch now (or finish a batch left in flight).

    Refuses (exit 1) while a batch the ledger confirmed is not on chain: see `basis settle repost`."""
    if ctx.invoked_subcommand is not None:
        return
    from basis.settlement.batches import SettlementError
    from basis.settlement.consistency import ChainMismatch
    from basis.settlement.lease import LeaseHeld

    settler, close = _settler(rpc, key_file, manifest, max_receipts, wait)
    try:
        result = settler.settle_once()
    except LeaseHeld as exc:
        err.print(f"[yellow]not now:[/yellow] {exc} (waited {wait:g} s)")
        raise typer.Exit(3) from exc
    except (SettlementError, ChainMismatch) as exc:
        err.print(f"[red]settlement failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        close()
    if result is None:
        err.print("nothing to settle")
    print(json.dumps(result, indent=2))


@settle.command("check")
def settle_check(rpc: str = _RPC_OPT, manifest: Path | None = _MANIFEST) -> None:
    """Ask the chain for every batch the ledger confirmed; list the ones it does not hold (exit 1)."""
    from basis.settlement.consistency import lost_batches

    _settings, ledger, w3, m = _open(rpc, manifest) if rpc else _missing_rpc()
    try:
        from basis.settlement.chain import Chain

        lost = lost_batches(ledger, Chain(w3, m))
    finally:
        ledger.close()
    print(json.dumps({"ok": not lost, "lost_batches": [b.as_dict() for b in lost]}, indent=2))
    if lost:
        raise typer.Exit(1)


@settle.command("repost")
def settle_repost(rpc: str = _RPC_OPT, key_file: Path = _KEY, manifest: Path | None = _MANIFEST,
                  wait: float = _WAIT) -> None:
    """Send every batch the ledger confirmed but the chain lost again (same id, amounts and roots),
    oldest first; settlement resumes once the chain holds them all."""
    from basis.settlement.batches import SettlementError
    from basis.settlement.lease import LeaseHeld

    settler, close = _settler(rpc, key_file, manifest, wait=wait)
    try:
        done = settler.repost()
    except (SettlementError, LeaseHeld) as exc:
        err.print(f"[red]re-post failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        close()
    if not done:
        err.print("the chain holds every confirmed batch; nothing to re-post")
    print(json.dumps({"reposted": done}, indent=2))


def _missing_rpc():
    err.print("[red]error:[/red] --rpc (or BASIS_RPC_URL) is required")
    raise typer.Exit(2)


@deposits.command("sync")
def deposits_sync(
    rpc: str = _RPC,
    manifest: Path | None = _MANIFEST,
    confirmations: int = typer.Option(0, "--confirmations", min=0, help="Blocks to wait before indexing."),
    reread_from: int = typer.Option(None, "--reread-from", min=0, help="First re-read blocks from this one up to "
                                    "the cursor (nothing is credited twice; binds depositors seen before)."),
) -> None:
    """Index Deposited / Withdrawn / Claimed events up to the head (resumes from its cursor)."""
    from basis.settlement.deposits import ChainIndexer, ChainReorg

    _settings, ledger, w3, m = _open(rpc, manifest)
    try:
        indexer = ChainIndexer(ledger, w3, m, confirmations=confirmations)
        reread = indexer.reindex(reread_from, indexer.cursor()).as_dict() if reread_from is not None else None
        try:
            passes = indexer.sync()
        except ChainReorg as exc:
            err.print(f"[red]reorg:[/red] {exc}")
            raise typer.Exit(1) from exc
        summary = {"cursor": indexer.cursor(), "passes": [p.as_dict() for p in passes]}
        if reread is not None:
            summary["reread"] = reread
    finally:
        ledger.close()
    print(json.dumps(summary, indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(settle, name="settle")
    app.add_typer(deposits, name="deposits")
