"""Integer, deterministic pricing (DESIGN 1.1).

Every amount is an ``int`` of $BASIS base units (18 decimals). Floor division only.
The constants live in one pricing table (``pricing_table.json`` or ``BASIS_PRICING_TABLE``);
the terms a job is accepted under are frozen into its events and its receipt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

BPS = 10_000
ServedBy = Literal["contributor", "gateway"]
Outcome = Literal["completed", "cancelled", "failed"]
SERVED_BY: tuple[str, ...] = ("contributor", "gateway")
OUTCOMES: tuple[str, ...] = ("completed", "cancelled", "failed")


class PricingError(ValueError):
    """A price, token count or table entry is not a valid non-negative integer."""


def require_amount(value: Any, name: str, *, positive: bool = False) -> int:
    """Accept only real ints (bool excluded): money never passes through float or Decimal."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PricingError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 0 or (positive and value == 0):
        raise PricingError(f"{name} must be {'positive' if positive else 'non-negative'}, got {value}")
    return value


def parse_amount(text: str, name: str = "amount", *, positive: bool = True) -> int:
    """Parse a decimal integer string (``^(0|[1-9][0-9]*)$``) such as a CLI argument."""
    s = text.strip().replace("_", "")
    if not s.isascii() or not s.isdigit() or (len(s) > 1 and s[0] == "0"):
        raise PricingError(f"{name} must be a decimal integer of base units, got {text!r}")
    return require_amount(int(s), name, positive=positive)


@dataclass(frozen=True, slots=True)
class PriceTerms:
    """The terms a job is accepted under; carried unchanged into its receipt."""

    prompt_weight: int
    output_weight: int
    multiplier_bps: int
    contributor_reward_bps: int

    def __post_init__(self) -> None:
        require_amount(self.prompt_weight, "prompt_weight")
        require_amount(self.output_weight, "output_weight")
        require_amount(self.multiplier_bps, "multiplier_bps")
        require_amount(self.contributor_reward_bps, "reward_bps")
        if self.contributor_reward_bps > BPS:
            raise PricingError("reward_bps cannot exceed 10000")

    def reward_bps(self, served_by: str, outcome: str) -> int:
        """The share routed to the worker: contributor share only for contributor work that was not failed."""
        if served_by == "contributor" and outcome in ("completed", "cancelled"):
            return self.contributor_reward_bps
        return 0

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_weight": self.prompt_weight,
            "output_weight": self.output_weight,
            "multiplier_bps": self.multiplier_bps,
            "contributor_reward_bps": self.contributor_reward_bps,
        }


@dataclass(frozen=True, slots=True)
class Charge:
    charged: int
    reward: int
    fee: int


def compute_charged(prompt_tokens: int, output_tokens: int, prompt_weight: int, output_weight: int,
                    multiplier_bps: int) -> int:
    require_amount(prompt_tokens, "prompt_tokens")
    require_amount(output_tokens, "output_tokens")
    return (prompt_tokens * prompt_weight + output_tokens * output_weight) * multiplier_bps // BPS


def split_charge(charged: int, reward_bps: int) -> Charge:
    reward = charged * reward_bps // BPS
    return Charge(charged=charged, reward=reward, fee=charged - reward)


def price(prompt_tokens: int, output_tokens: int, terms: PriceTerms, reward_bps: int) -> Charge:
    """DESIGN 1.1, literally."""
    charged = compute_charged(prompt_tokens, output_tokens, terms.prompt_weight, terms.output_weight,
                              terms.multiplier_bps)
    return split_charge(charged, reward_bps)


def worst_case_charge(prompt_tokens: int, max_output_tokens: int, terms: PriceTerms) -> int:
    """What a job reserves before it is routed: every allowed output token is produced."""
    return compute_charged(prompt_tokens, max_output_tokens, terms.prompt_weight, terms.output_weight,
                           terms.multiplier_bps)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One advertised model: its limits, multiplier and backing binding spec (see basis.models)."""

    id: str
    context_window: int
    max_output_tokens: int
    multiplier_bps: int
    backing: dict[str, Any]


@dataclass(frozen=True)
class PricingTable:
    prompt_weight: int
    output_weight: int
    contributor_reward_bps: int
    models: dict[str, ModelSpec]

    def terms_for(self, model: str) -> PriceTerms:
        spec = self.model(model)
        return PriceTerms(self.prompt_weight, self.output_weight, spec.multiplier_bps,
                          self.contributor_reward_bps)

    def model(self, model: str) -> ModelSpec:
        try:
            return self.models[model]
        except KeyError:
            raise UnknownModel(model) from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PricingTable:
        models = {}
        for m in data["models"]:
            spec = ModelSpec(
                id=str(m["id"]),
                context_window=require_amount(m["context_window"], "context_window", positive=True),
                max_output_tokens=require_amount(m["max_output_tokens"], "max_output_tokens", positive=True),
                multiplier_bps=require_amount(m["multiplier_bps"], "multiplier_bps", positive=True),
                backing=dict(m.get("backing", {})),
            )
            models[spec.id] = spec
        table = cls(
            prompt_weight=require_amount(data["prompt_weight"], "prompt_weight"),
            output_weight=require_amount(data["output_weight"], "output_weight"),
            contributor_reward_bps=require_amount(data["contributor_reward_bps"], "contributor_reward_bps"),
            models=models,
        )
        if table.contributor_reward_bps > BPS:
            raise PricingError("contributor_reward_bps cannot exceed 10000")
        return table

    @classmethod
    def load(cls, path: str | Path | None = None) -> PricingTable:
        if path is None:
            text = resources.files("basis.domain").joinpath("pricing_table.json").read_text()
        else:
            text = Path(path).read_text()
        return cls.from_dict(json.loads(text))


class UnknownModel(KeyError):
    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model

    def __str__(self) -> str:
        return f"The model '{self.model}' does not exist"
