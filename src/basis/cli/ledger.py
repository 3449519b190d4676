"""Ledger commands: keys, credits, receipts export, audit."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from basis.config import Settings
from basis.domain.pricing import PricingError, parse_amount
from basis.ledger.errors import LedgerError

keys = typer.Typer(help="API keys (stored only as hashes).", no_args_is_help=True)
credits = typer.Typer(help="Operator credit grants.", no_args_is_help=True)
receipts = typer.Typer(help="Receipts.", no_args_is_help=True)
ledger_app = typer.Typer(help="The ledger as a portable, hash-chained export (docs/audit.md).", no_args_is_help=True)
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _ledger():
    from basis.ledger.service import Ledger

    return Ledger(Settings())


@keys.command("create")
def keys_create(account: str = typer.Option(..., "--account", help="Account name (opened if new).")) -> None:
    """Create an API key for ACCOUNT and print it once."""
    ledger = _ledger()
    try:
        account_id, key = ledger.create_api_key(account)
    except (ValueError, LedgerError) as exc:
        _fail(str(exc))
    finally:
        ledger.close()
    err.print(f"account {account} ({account_id}); the key is shown once:")
    print(key)


@credits.command("grant")
def credits_grant(
    account: str = typer.Option(..., "--account", help="Account name (opened if new)."),
    amount: str = typer.Option(..., "--amount", help="Base units of $BASIS (18 decimals), a decimal integer."),
    grant_id: str = typer.Option(None, "--id", help="External id; a repeat with the same id is refused."),
    memo: str = typer.Option("", "--memo"),
) -> None:
    """Record an operator grant (credit with no tokens behind it)."""
    try:
        value = parse_amount(amount)
    except PricingError as exc:
        _fail(str(exc))
    ledger = _ledger()
    try:
        gid = ledger.grant(account, value, grant_id=grant_id, memo=memo)
    except (ValueError, LedgerError) as exc:
        _fail(str(exc))
    finally:
        ledger.close()
    print(json.dumps({"account": account, "amount": str(value), "grant_id": gid}))


@receipts.command("export")
def receipts_export() -> None:
    """Every receipt as one JSON object per line: core, hash, signature, status, settlement."""
    from basis.ledger.projections import Projector, ViewReader
    from basis.ledger.store import LedgerStore

    settings = Settings()
    store = LedgerStore(settings.event_store_env())
    projector = Projector(store, settings.views_path)
    projector.catch_up()
    projector.stop()
    reader = ViewReader(settings.views_path)
    out = sys.stdout
    for row in reader.iter_receipts():
        r = reader.receipt_json(row)
        out.write(json.dumps({"core": r["core"], "hash": r["hash"], "signature": r["signature"],
                              "status": r["status"], "settlement": r["settlement"]}) + "\n")
    reader.close()


@ledger_app.command("export")
def ledger_export(
    start: int = typer.Option(1, "--from", min=1, help="First position written (the chain still starts at 1)."),
    upto: int = typer.Option(None, "--to", min=1, help="Last position written (default: the last committed)."),
    output: Path = typer.Option(None, "--output", "-o", help="Write here instead of standard output."),
) -> None:
    """Every stored event in log order, one JSON line each, with the running hash chain."""
    from basis.ledger.export import ExportError, export
    from basis.ledger.store import LedgerStore

    store = LedgerStore(Settings().event_store_env())
    out = open(output, "w", encoding="utf-8", newline="\n") if output else sys.stdout  # noqa: SIM115
    try:
        point = export(store, out, start=start, upto=upto)
    except ExportError as exc:
        _fail(str(exc))
    finally:
        if output:
            out.close()
        store.close()
    err.print(f"exported through position {point.position}; head {point.head_hex}")


def audit_command(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report."),
    signer: str = typer.Option(None, "--signer", help="Expected operator address (default: this node's key)."),
    chain: bool = typer.Option(False, "--chain", help="Also verify the chain (settlement roots, balances)."),
    events: list[Path] = typer.Option(None, "--events", exists=True, dir_okay=False,
                                      help="Audit a ledger export instead of this node's store (repeat for "
                                           "parts exported with --from, in order)."),
    rpc: str = typer.Option(None, "--rpc", envvar="BASIS_RPC_URL", help="With --events --chain: JSON-RPC URL."),
    vault: str = typer.Option(None, "--vault", help="With --events --chain: the CreditVault address (as the "
                                                     "operator publishes it at /v1/network)."),
    manifest: Path = typer.Option(None, "--manifest", help="With --events --chain: a deployment manifest instead."),
    from_block: int = typer.Option(0, "--from-block", min=0, help="With --events --chain: first block to scan."),
    require_anchored: bool = typer.Option(False, "--require-anchored",
                                          help="With --events --chain: fail on lines after the latest anchor."),
) -> None:
    """Replay every event into empty views and verify every receipt and balance."""
    from basis.domain.signing import ReceiptSigner
    from basis.ledger.audit import audit
    from basis.ledger.store import LedgerStore

    if events:
        _audit_events(events, as_json=as_json, signer=signer, chain=chain, rpc=rpc, vault=vault, manifest=manifest,
                      from_block=from_block, require_anchored=require_anchored)
        return
    settings = Settings()
    store = LedgerStore(settings.event_store_env())
    if signer is None and settings.operator_key_path.exists():
        signer = ReceiptSigner(settings.operator_key()).address
    with Progress(TextColumn("replaying events"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True, disable=as_json or not err.is_terminal) as progress:
        task = progress.add_task("replay", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        replay = tempfile.TemporaryDirectory(prefix="basis-audit-")
        replay_path = Path(replay.name) / "replay.sqlite3"  # kept for --chain: the same snapshot
        report = audit(store, settings.views_path, signer=signer, on_progress=on_progress, replay_path=replay_path)
    with replay:
        if chain:
            try:
                from basis.settlement.audit import audit_chain  # added with on-chain settlement
            except ModuleNotFoundError:
                report.problems.append("--chain: this build has no on-chain settlement to verify")
            else:
                audit_chain(settings, report, views=replay_path)
    store.close()
    _print_report(report, as_json)


def _print_report(report, as_json: bool, export: dict | None = None) -> None:
    if as_json:
        d = report.as_dict()
        if export is not None:
            d["export"] = export
        print(json.dumps(d, indent=2))
    else:
        d = report.as_dict()
        print(f"events replayed: {d['events']}  receipts: {d['receipts']}  accounts: {d['accounts']}  "
              f"workers: {d['workers']}  open jobs: {d['open_jobs']}")
        print(f"charged: {d['charged_total']}  rewards: {d['reward_total']}  fees: {d['fee_total']} (base units)")
        if export is not None:
            print(f"export: {export['lines']} lines, positions {export['first_position']}..{export['last_position']}, "
                  f"head {export['head']}")
            if "anchored_through" in export:
                print(f"anchors on chain: {export['anchors']}, anchored through position {export['anchored_through']}; "
                      f"{export['unanchored']} line(s) after it are not anchored yet")
            if export.get("first_bad_position") is not None:
                print(f"first bad position: {export['first_bad_position']}")
        for note in report.notes:
            print(f"note: {note}")
        for p in report.problems:
            print(f"MISMATCH: {p}")
        print("audit passed" if report.ok else f"audit FAILED: {len(report.problems)} problem(s)")
    raise typer.Exit(0 if report.ok else 1)


def _audit_events(files: list[Path], *, as_json: bool, **options) -> None:
    from basis.cli.audit_events import audit_events

    with Progress(TextColumn("replaying the export"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True, disable=as_json or not err.is_terminal) as progress:
        task = progress.add_task("replay", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report, export = audit_events(list(files), on_progress=on_progress, **options)
    _print_report(report, as_json, export)


def register(app: typer.Typer) -> None:
    app.add_typer(keys, name="keys")
    app.add_typer(credits, name="credits")
    app.add_typer(receipts, name="receipts")
    app.add_typer(ledger_app, name="ledger")
    app.command("audit")(audit_command)
