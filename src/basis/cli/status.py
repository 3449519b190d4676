"""`basis status`: the local network at a glance, from the terminal.

Finds the gateway from ``$BASIS_HOME/up.json`` (written by ``basis up``) or ``--url``, asks its
public endpoints (``/healthz``, ``/v1/network``, ``/v1/models``) and, when the views file of that
home is on this machine, counts receipts and the unsettled amount from it (read-only).
"""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from basis.config import Settings
from basis.explorer.format import format_basis, sum_amounts

DEFAULT_URL = "http://127.0.0.1:8000"
err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("status")(status)


def read_up_info(home: Path) -> dict[str, Any]:
    path = home / "up.json"
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        err.print(f"[yellow]warning:[/yellow] ignoring unreadable {path}: {exc}")
        return {}
    return info if isinstance(info, dict) else {}


def gateway_root(info: dict[str, Any], url: str | None) -> str:
    """The gateway's root URL: --url, else up.json's gateway (or base_url without /v1), else the default."""
    root = url or info.get("gateway") or info.get("base_url") or os.environ.get("BASIS_GATEWAY_URL") or DEFAULT_URL
    root = root.rstrip("/")
    return root.removesuffix("/v1")


def local_ledger_stats(views_path: Path) -> dict[str, Any] | None:
    """Receipt count and unsettled totals from the views file, opened read-only; None without one."""
    if not views_path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{views_path}?mode=ro", uri=True, timeout=5)
        try:
            total = db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]
            unsettled = [r[0] for r in db.execute("SELECT charged FROM receipts WHERE status = 'issued'")]
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return {"receipts": total, "unsettled_receipts": len(unsettled), "unsettled_charged": str(sum_amounts(unsettled))}


def collect(root: str, *, timeout: float = 3.0) -> dict[str, Any]:
    """What the gateway at ``root`` says about itself. Raises httpx.TransportError when nothing answers."""
    with httpx.Client(base_url=root, timeout=timeout) as client:
        health = client.get("/healthz")
        out: dict[str, Any] = {"health_status": health.status_code,
                               "health": _json(health) if health.status_code == 200 else None}
        network = client.get("/v1/network")
        out["network"] = _json(network) if network.status_code == 200 else None
        models = client.get("/v1/models")
        out["models"] = (_json(models) or {}).get("data", []) if models.status_code == 200 else None
        settlement = client.get("/v1/settlement/status")
        out["settlement"] = _json(settlement) if settlement.status_code == 200 else None
    return out


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def status(
    url: str = typer.Option(None, "--url", help=f"Gateway URL (default: $BASIS_HOME/up.json, then {DEFAULT_URL})."),
    timeout: float = typer.Option(3.0, "--timeout", help="Seconds to wait for each request."),
    as_json: bool = typer.Option(False, "--json", help="Print the collected facts as JSON instead of a table."),
) -> None:
    """Summarise the local network: gateway, models, workers, receipts, unsettled amount, chain."""
    settings = Settings()
    info = read_up_info(settings.home)
    root = gateway_root(info, url)
    try:
        facts = collect(root, timeout=timeout)
    except httpx.TransportError as exc:
        hint = "start one with `basis up` (or `basis serve`)" if not info else (
            f"{settings.home / 'up.json'} is left from a run that has stopped; start it again with `basis up`")
        err.print(f"[red]error:[/red] nothing is running at {root} ({type(exc).__name__}): {hint}.")
        raise typer.Exit(1) from None
    home = Path(info.get("home") or settings.home)
    stats = ((facts.get("network") or {}).get("stats") or local_ledger_stats(home / "views.sqlite3")
             or local_ledger_stats(settings.views_path))
    facts.update(gateway=root, explorer_url=info.get("explorer_url"), stats=stats)
    if as_json:
        print(json.dumps(facts, indent=2, sort_keys=True))
    else:
        Console().print(render(facts))
    if facts["health_status"] != 200:
        raise typer.Exit(1)


def _badge(status: str | None) -> str:
    return {"live": "[green]live[/green]", "pending": "[yellow]pending[/yellow]",
            "planned": "[yellow]planned[/yellow]"}.get(status or "", status or "—")


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float) or not ts:
        return "—"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%H:%M:%S UTC")


def settlement_line(s: dict[str, Any]) -> str:
    """ok | retrying (failures in a row, last error, next try) | halted (the batches the chain lost)."""
    status = s.get("status") or "—"
    if status == "halted":
        lost = ", ".join(f"#{b.get('seq')} {b.get('batch_id')}" for b in s.get("lost_batches") or [])
        return (f"[red]halted[/red]: the chain lost confirmed batch(es) {lost}; "
                "re-post them with `basis settle repost`")
    if status == "retrying":
        batch = f" on batch {s['last_error_batch']}" if s.get("last_error_batch") else ""
        return (f"[yellow]retrying[/yellow]: {s.get('consecutive_failures')} failure(s) in a row{batch}: "
                f"{s.get('last_error_type')}: {s.get('last_error')}; next try {_when(s.get('next_attempt_at'))}")
    if status == "standby":
        return f"[green]standby[/green]: another settler holds the lease · next {_when(s.get('next_attempt_at'))}"
    if status == "ok":
        last = s.get("last_batch") or {}
        done = f" · last batch #{last.get('seq')} {last.get('status')}" if last else ""
        return f"[green]ok[/green]{done} · next {_when(s.get('next_attempt_at'))}"
    return status


def indexer_line(s: dict[str, Any]) -> str:
    status = s.get("status") or "—"
    if status == "reorg":
        return f"[red]stopped on a reorg[/red]: {s.get('reorg')}"
    if status == "retrying":
        return f"[yellow]retrying[/yellow]: {s.get('consecutive_failures')} failure(s): {s.get('last_error')}"
    if status == "ok":
        return f"[green]ok[/green] · {s.get('confirmations', 0)} confirmation(s)"
    return status


def render(facts: dict[str, Any]) -> Table:
    table = Table(title="Basis network", show_header=False, title_justify="left", min_width=60)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    health = facts.get("health")
    if health:
        lag = ""
        if isinstance(health.get("ledger_position"), int) and isinstance(health.get("views_position"), int):
            lag = f" · views {health['ledger_position'] - health['views_position']} events behind"
        node = f" · node {health['node']}" if health.get("node") else ""
        table.add_row("Gateway", f"[green]up[/green] {facts['gateway']}{node}{lag}")
    else:
        table.add_row("Gateway", f"[red]unhealthy[/red] {facts['gateway']} (HTTP {facts.get('health_status')})")
    if facts.get("explorer_url"):
        table.add_row("Explorer", facts["explorer_url"])

    models = facts.get("models")
    if models is None:
        table.add_row("Models", "—")
    else:
        live = [m for m in models if m.get("status") == "live"]
        table.add_row("Models", f"{len(live)} live, {len(models) - len(live)} planned")
        for m in models:
            workers = m.get("workers", 0)
            table.add_row("", f"{m.get('id')}  {_badge(m.get('status'))}  {workers} worker{'s' * (workers != 1)}")

    network = facts.get("network") or {}
    stats = facts.get("stats") or {}
    workers = stats.get("workers_online", (health or {}).get("workers"))
    table.add_row("Workers online", "—" if workers is None else str(workers))
    receipts = stats.get("receipts")
    table.add_row("Receipts", "—" if receipts is None else f"{receipts:,}")
    unsettled = stats.get("unsettled_charged")
    table.add_row("Unsettled", "—" if unsettled is None else
                  f"{format_basis(unsettled)} $BASIS in {stats.get('unsettled_receipts', '?')} receipts "
                  f"({unsettled} base units)")
    chain = network.get("chain_id")
    table.add_row("Chain", "not connected" if chain is None else f"chain id {chain}")
    for key, label in (("runtime", "Runtime"), ("token", "$BASIS token"), ("vault", "Credit vault"),
                       ("distributor", "Reward distributor")):
        part = network.get(key) or {}
        address = f" {part['address']}" if part.get("address") else ""
        stand_in = " (local stand-in)" if part.get("stand_in") else ""
        table.add_row(label, f"{_badge(part.get('status'))}{address}{stand_in}")
    if network.get("gateway_signer"):
        table.add_row("Receipt signer", network["gateway_signer"])
    settlement = facts.get("settlement") or {}
    if settlement:
        table.add_row("Settlement", settlement_line(settlement.get("settlement") or {}))
        table.add_row("Chain indexer", indexer_line(settlement.get("indexer") or {}))
    table.caption = "$BASIS is planned, not live; pricing constants are placeholders."
    return table
