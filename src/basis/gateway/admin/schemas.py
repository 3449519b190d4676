"""Request bodies of the admin API. Amounts are decimal strings of base units (DESIGN 1.1);
rates are JSON integers. Unknown fields are refused, so a typo never passes as "no limit"."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

AMOUNT = r"^(0|[1-9][0-9]{0,77})$"


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account: StrictStr = Field(min_length=1, max_length=200)
    name: StrictStr = Field("", max_length=200)
    cap: StrictStr | None = Field(None, pattern=AMOUNT, description="Spend cap, base units; null: none.")
    requests_per_minute: StrictInt | None = Field(None, ge=1, le=10**9)
    tokens_per_minute: StrictInt | None = Field(None, ge=1, le=10**12)


class KeyUpdate(BaseModel):
    """Only the fields sent change; null lifts a cap or a limit."""

    model_config = ConfigDict(extra="forbid")

    cap: StrictStr | None = Field(None, pattern=AMOUNT)
    requests_per_minute: StrictInt | None = Field(None, ge=1, le=10**9)
    tokens_per_minute: StrictInt | None = Field(None, ge=1, le=10**12)


class KeyRevoke(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: StrictStr = Field("", max_length=500)
