"""The account views a client reads about itself, shaped from the projections.

Amounts are decimal strings of base units (18 decimals), as in receipts: JSON numbers lose
precision beyond 2^53. Everything is read from the views (``ViewReader``), which follow the
ledger within moments; a brand-new account not projected yet is read from its aggregate.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from basis.gateway.errors import APIError

UNIT = "base units of $BASIS (18 decimals)"
MAX_USAGE_DAYS = 366
DEFAULT_USAGE_DAYS = 30
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _unix(iso: str | None) -> int | None:
    return int(dt.datetime.fromisoformat(iso).timestamp()) if iso else None


def account_summary(reader: Any, ledger: Any, account_id: str, key_hash: str, key_prefix: str) -> dict[str, Any]:
    """Balance (and by credit source), the calling key and every key of the account (prefixes only)."""
    row = reader.account(account_id)
    if row is None:  # opened moments ago: not projected yet, so its credits are not either
        row = _from_aggregate(ledger, account_id)
        credited = {"grant": int(row["granted"]), "deposit": int(row["deposited"])}
    else:
        credited = reader.credits_by_source(account_id)
    spent_by_source = {"grant": int(row["spent_granted"]), "deposit": int(row["spent_deposited"])}
    by_source: dict[str, dict[str, str]] = {}
    for source in sorted(set(credited) | {"grant", "deposit"}):
        entry = {"credited": str(credited.get(source, 0))}
        if source in spent_by_source:
            entry["spent"] = str(spent_by_source[source])
        if source == "deposit":
            entry["withdrawn"] = str(int(row["withdrawn"]))
        by_source[source] = entry
    keys = reader.api_keys(account_id)
    this = next((k for k in keys if k["key_hash"] == key_hash), None)
    return {
        "object": "account",
        "id": account_id,
        "name": row["name"],
        "created": _unix(row["opened_at"]),
        "unit": UNIT,
        "balance": {
            "available": row["available"],
            "reserved": str(int(row["reserved"])),
            "spent": row["spent"],
            "credited": str(int(row["granted"]) + int(row["deposited"])),
            "withdrawn": str(int(row["withdrawn"])),
            # Spend draws on granted credit first, then on deposits (what settlement moves on chain).
            "by_source": by_source,
        },
        # A key created moments ago may not be projected yet: its prefix is known from the key itself.
        "key": {"prefix": this["prefix"], "created": _unix(this["created_at"])} if this else
        {"prefix": key_prefix, "created": None},
        "keys": [{"prefix": k["prefix"], "created": _unix(k["created_at"])} for k in keys],
        "jobs": int(row.get("jobs") or 0),
        "receipts": int(row.get("receipts") or 0),
    }


def _from_aggregate(ledger: Any, account_id: str) -> dict[str, Any]:
    from uuid import UUID

    acc = ledger.get(UUID(account_id))
    return {"name": acc.name, "opened_at": acc.created_on.isoformat(), "granted": acc.granted,
            "deposited": acc.deposited, "withdrawn": acc.withdrawn, "reserved": acc.reserved,
            "spent_granted": acc.spent_granted, "spent_deposited": acc.spent_deposited,
            "spent": str(acc.spent), "available": str(acc.available), "jobs": 0, "receipts": 0}


def _day(value: str | None, param: str, default: dt.date) -> dt.date:
    if value is None or value == "":
        return default
    if not _DAY.match(value):
        raise APIError(400, f"Invalid value for '{param}': expected a UTC date as YYYY-MM-DD, got {value!r}.",
                       param=param, code="invalid_value")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise APIError(400, f"Invalid value for '{param}': {value!r} is not a calendar date.", param=param,
                       code="invalid_value") from None


def usage_range(start: str | None, end: str | None, today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """UTC days, both inclusive: by default the last 30 days up to today; at most a year."""
    today = today or dt.datetime.now(dt.UTC).date()
    last = _day(end, "end", today)
    first = _day(start, "start", last - dt.timedelta(days=DEFAULT_USAGE_DAYS - 1))
    if first > last:
        raise APIError(400, f"'start' ({first}) is after 'end' ({last}).", param="start", code="invalid_value")
    if (last - first).days + 1 > MAX_USAGE_DAYS:
        raise APIError(400, f"At most {MAX_USAGE_DAYS} days of usage in one request; this asks for "
                       f"{(last - first).days + 1}.", param="start", code="invalid_value")
    return first, last


def _bucket(rows: list[dict[str, Any]]) -> dict[str, Any]:
    prompt = sum(r["prompt_tokens"] for r in rows)
    output = sum(r["output_tokens"] for r in rows)
    return {"requests": sum(r["receipts"] for r in rows), "prompt_tokens": prompt, "output_tokens": output,
            "total_tokens": prompt + output, "charged": str(sum(r["charged"] for r in rows))}


def usage_report(reader: Any, account_id: str, first: dt.date, last: dt.date) -> dict[str, Any]:
    """Receipted jobs (a job that ended before any output token has no receipt and costs nothing)
    per UTC day of their receipt and model, with totals per model and overall."""
    rows = reader.usage(account_id, first.isoformat(), last.isoformat())
    models = sorted({r["model"] for r in rows})
    return {
        "object": "usage",
        "start": first.isoformat(),
        "end": last.isoformat(),
        "unit": UNIT,
        "data": [{"day": r["day"], "model": r["model"], **_bucket([r])} for r in rows],
        "by_model": [{"model": m, **_bucket([r for r in rows if r["model"] == m])} for m in models],
        "totals": _bucket(rows),
    }
