"""Units that are not money. Money is always an ``int`` of base units (DESIGN 1.1)."""

from typing import TypeAlias

Seconds: TypeAlias = float  # durations and polling intervals
