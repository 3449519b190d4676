"""Display helpers. Money is formatted from its integer text by string arithmetic only (no float)."""

from __future__ import annotations

import re

DECIMALS = 18
_DECIMAL = re.compile(r"^(0|[1-9][0-9]*)$")


def base_units(value: int | str | None) -> str | None:
    """The canonical decimal text of an amount in base units, or None when it is not one."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if value >= 0 else None
    text = str(value).strip()
    return text if _DECIMAL.match(text) else None


def group_thousands(digits: str) -> str:
    head = len(digits) % 3 or 3
    parts = [digits[:head]] + [digits[i:i + 3] for i in range(head, len(digits), 3)]
    return ",".join(parts)


def format_basis(value: int | str | None, decimals: int = DECIMALS) -> str:
    """``"1500000000000000000"`` -> ``"1.5"``; every significant decimal is kept, none invented."""
    if isinstance(value, str) and value.startswith("-") and base_units(value[1:]) not in (None, "0"):
        return "-" + format_basis(value[1:], decimals)  # e.g. a tampered core's fee; never from the ledger
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        return "-" + format_basis(-value, decimals)
    text = base_units(value)
    if text is None:
        return "—" if value is None else str(value)
    padded = text.rjust(decimals + 1, "0")
    whole, frac = padded[:-decimals], padded[-decimals:].rstrip("0")
    whole = group_thousands(whole)
    return f"{whole}.{frac}" if frac else whole


def format_multiplier(bps: int | None) -> str:
    """Basis points of 1x as a multiplier: 10000 -> "1x", 5000 -> "0.5x", 30000 -> "3x"."""
    if bps is None:
        return "—"
    whole, frac = divmod(int(bps), 10_000)
    frac_text = str(frac).rjust(4, "0").rstrip("0")
    return f"{whole}.{frac_text}x" if frac_text else f"{whole}x"


def format_int(value: int | str | None) -> str:
    text = base_units(value)
    return group_thousands(text) if text is not None else ("—" if value is None else str(value))


def sum_amounts(values: list[int | str | None]) -> int:
    total = 0
    for v in values:
        text = base_units(v)
        if text is not None:
            total += int(text)
    return total


def short_hex(value: str | None, head: int = 10, tail: int = 6) -> str:
    if not value:
        return "—"
    return value if len(value) <= head + tail + 1 else f"{value[:head]}…{value[-tail:]}"
