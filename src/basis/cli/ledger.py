"""Ledger commands: keys, credits, receipts export, audit."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from basis.cli.receipts_verify import verify_command
from basis.config import Settings
from basis.domain.pricing import PricingError, parse_amount
from basis.ledger.errors import LedgerError

keys = typer.Typer(help="API keys (stored only as hashes): create, list, revoke, caps and limits (docs/keys.md).",
                   no_args_is_help=True)
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


def _limit(text: str | None, name: str) -> int | None:
    if text is None or text.strip().lower() == "none":
        return None
    t = text.strip()
    if not t.isascii() or not t.isdigit() or int(t) < 1:
        _fail(f"{name} must be a positive integer or 'none', got {text!r}")
    return int(t)


def _cap(text: str | None) -> int | None:
    if text is None or text.strip().lower() == "none":
        return None
    try:
        return parse_amount(text, "cap", positive=False)
    except PricingError as exc:
        _fail(str(exc))


def _print_key(key: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(key))
        return
    cap = "no cap" if key["cap"] is None else f"cap {key['cap']} (spent {key['spent']}, reserved {key['reserved']})"
    limits = ", ".join(f"{v} {n.replace('_', ' ')}" for n in ("requests_per_minute", "tokens_per_minute")
                       if (v := key[n]) is not None) or "no rate limits"
    state = "REVOKED" if key["revoked"] else "active"
    print(f"{key['id']}  {key['prefix']}...  {key['account']:<16} {key['name'] or '-':<12} {state:<8} {cap}; {limits}")


@keys.command("create")
def keys_create(
    account: str = typer.Option(..., "--account", help="Account name (opened if new)."),
    name: str = typer.Option("", "--name", help="A label for the key (who or what uses it)."),
    cap: str = typer.Option(None, "--cap", help="Spend cap in base units (decimal integer); default none."),
    rpm: str = typer.Option(None, "--rpm", help="Requests per minute (per gateway); default none."),
    tpm: str = typer.Option(None, "--tpm", help="Tokens per minute (per gateway); default none."),
) -> None:
    """Create an API key for ACCOUNT and print it once."""
    cap_value, rpm_value, tpm_value = _cap(cap), _limit(rpm, "--rpm"), _limit(tpm, "--tpm")
    ledger = _ledger()
    try:
        account_id, key = ledger.create_api_key(account, name=name, cap=cap_value, requests_per_minute=rpm_value,
                                                tokens_per_minute=tpm_value)
    except (ValueError, LedgerError) as exc:
        _fail(str(exc))
    finally:
        ledger.close()
    err.print(f"account {account} ({account_id}); the key is shown once:")
    print(key)


@keys.command("list")
def keys_list(
    account: str = typer.Option(None, "--account", help="Only this account's keys (default: every account's)."),
    active: bool = typer.Option(False, "--active", help="Leave revoked keys out."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line."),
) -> None:
    """List keys (never the keys themselves): id, prefix, account, name, state, cap, spend, limits."""
    from basis.gateway.admin import service
    from basis.ledger.projections import ViewReader

    settings = Settings()
    names = [account] if account else None
    if names is None:
        if not settings.views_path.exists():
            _fail("no views yet to list accounts from: pass --account NAME")
        reader = ViewReader(settings.views_path)
        try:
            names = [a["name"] for a in reader.accounts()]
        finally:
            reader.close()
    ledger = _ledger()
    try:
        for key in service.list_keys(ledger, names, include_revoked=not active):
            _print_key(key, as_json)
    finally:
        ledger.close()


@keys.command("revoke")
def keys_revoke(
    key: str = typer.Argument(..., help="The key's id (from `basis keys list`) or the key itself."),
    reason: str = typer.Option("", "--reason", help="Recorded with the revocation."),
) -> None:
    """Revoke a key: every gateway sharing the ledger refuses its next request (401)."""
    _update_key(key, lambda service, ledger, key_id: service.revoke(ledger, key_id, reason))


@keys.command("set")
def keys_set(
    key: str = typer.Argument(..., help="The key's id (from `basis keys list`) or the key itself."),
    cap: str = typer.Option(None, "--cap", help="Spend cap in base units, or 'none' to lift it."),
    rpm: str = typer.Option(None, "--rpm", help="Requests per minute, or 'none'."),
    tpm: str = typer.Option(None, "--tpm", help="Tokens per minute, or 'none'."),
) -> None:
    """Set or lift a key's spend cap and rate limits (only the options given change)."""
    changes = {}
    if cap is not None:
        changes["cap"] = _cap(cap)
    if rpm is not None:
        changes["requests_per_minute"] = _limit(rpm, "--rpm")
    if tpm is not None:
        changes["tokens_per_minute"] = _limit(tpm, "--tpm")
    if not changes:
        _fail("nothing to change: give --cap, --rpm and/or --tpm")
    _update_key(key, lambda service, ledger, key_id: service.update(ledger, key_id, **changes))


def _update_key(key: str, change) -> None:
    from basis.gateway.admin import service

    try:
        key_id = service.key_id_of(key)
    except ValueError as exc:
        _fail(str(exc))
    ledger = _ledger()
    try:
        described = change(service, ledger, key_id)
    except (ValueError, LedgerError) as exc:
        _fail(str(exc))
    finally:
        ledger.close()
    _print_key(described, as_json=False)


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


receipts.command("verify")(verify_command)  # anyone: hash, signature, inclusion on chain


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
