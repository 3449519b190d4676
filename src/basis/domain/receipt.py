"""Hash-stable receipts (DESIGN 1.2).

The core is the only input of the hash; the envelope (status, signature, settlement,
timestamps) lives beside it and never changes the hash.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
import rfc8785

from basis.domain.pricing import OUTCOMES, SERVED_BY, PriceTerms, price, split_charge

RECEIPT_VERSION = 1
CORE_KEYS = (
    "v", "job_id", "model", "served_by", "worker", "outcome", "prompt_tokens", "output_tokens",
    "prompt_weight", "output_weight", "multiplier_bps", "reward_bps", "charged", "reward",
)
_DECIMAL = re.compile(r"^(0|[1-9][0-9]*)$")
_ADDRESS = re.compile(r"^0x[0-9a-f]{40}$")
_HASH = re.compile(r"^0x[0-9a-f]{64}$")
_CORE_KEY_SET = frozenset(CORE_KEYS)
_SORTED_CORE_KEYS = tuple(sorted(CORE_KEYS))
_UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")  # str(UUID(x)) == x


class ReceiptError(ValueError):
    pass


def build_core(*, job_id: uuid.UUID | str, model: str, served_by: str, worker: str | None, outcome: str,
               prompt_tokens: int, output_tokens: int, terms: PriceTerms) -> dict[str, Any]:
    """The receipt core for a finished job, priced with the terms it was accepted under."""
    if served_by not in SERVED_BY:
        raise ReceiptError(f"served_by must be one of {SERVED_BY}")
    if outcome not in OUTCOMES:
        raise ReceiptError(f"outcome must be one of {OUTCOMES}")
    if (served_by == "gateway") != (worker is None):
        raise ReceiptError("worker is null exactly when the job is gateway-served")
    reward_bps = terms.reward_bps(served_by, outcome)
    charge = price(prompt_tokens, output_tokens, terms, reward_bps)
    core = {
        "v": RECEIPT_VERSION,
        "job_id": str(uuid.UUID(str(job_id))),
        "model": model,
        "served_by": served_by,
        "worker": worker.lower() if worker else None,
        "outcome": outcome,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "prompt_weight": str(terms.prompt_weight),
        "output_weight": str(terms.output_weight),
        "multiplier_bps": terms.multiplier_bps,
        "reward_bps": reward_bps,
        "charged": str(charge.charged),
        "reward": str(charge.reward),
    }
    validate_core(core)
    return core


_MAX_SAFE = 2**53 - 1


_sorted_compact = msgspec.json.Encoder(order="sorted").encode  # = json.dumps(sort_keys, no spaces), in C


def _flat(core: dict[str, Any]) -> bool:
    """String keys; strings, nulls and safe non-negative integers as values (no bool, no float, nothing nested)."""
    for k, v in core.items():
        if type(k) is not str:
            return False
        t = type(v)
        if t is not str and v is not None and (t is not int or not 0 <= v <= _MAX_SAFE):
            return False
    return True


def canonical_json(core: dict[str, Any]) -> bytes:
    """RFC 8785 (JCS) bytes of the core.

    A flat object of ASCII strings, safe non-negative integers and nulls (every well-formed core)
    serialises under JCS exactly as sorted-key JSON with no spaces does (msgspec writes it, as
    ``json.dumps`` would, in a fifth of its time); that is far faster than the general ``rfc8785``
    path, which everything else takes (a property test holds the two equal). Whether every key and
    string is ASCII is read off msgspec's output: it writes any other character as itself, in UTF-8.
    """
    if _flat(core):
        try:
            data = _sorted_compact(core)
        except (TypeError, ValueError):  # e.g. a lone surrogate: rfc8785 decides
            data = b"\x80"
        if data.isascii():
            return data
    return rfc8785.dumps(core)


def receipt_hash(core: dict[str, Any]) -> str:
    return "0x" + hashlib.sha256(canonical_json(core)).hexdigest()


def validate_core(core: dict[str, Any]) -> None:
    """Shape check of a core as published: exact keys, JSON types, decimal strings."""
    # the short forms first (an audit validates every receipt): where they fail, the full ones decide
    if not (type(core) is dict and core.keys() == _CORE_KEY_SET) and tuple(sorted(core)) != _SORTED_CORE_KEYS:
        raise ReceiptError(f"core keys must be exactly {sorted(CORE_KEYS)}")
    for key in ("v", "prompt_tokens", "output_tokens", "multiplier_bps", "reward_bps"):
        if isinstance(core[key], bool) or not isinstance(core[key], int) or core[key] < 0:
            raise ReceiptError(f"{key} must be a non-negative integer")
    for key in ("prompt_weight", "output_weight", "charged", "reward"):
        if not isinstance(core[key], str) or not _DECIMAL.match(core[key]):
            raise ReceiptError(f"{key} must be a decimal integer string")
    if core["v"] != RECEIPT_VERSION:
        raise ReceiptError(f"unsupported receipt version {core['v']}")
    job_id = core["job_id"]
    if not (type(job_id) is str and _UUID_TEXT.match(job_id)) and str(uuid.UUID(job_id)) != job_id:
        raise ReceiptError("job_id must be a lowercase hyphenated UUID")
    if core["worker"] is not None and not _ADDRESS.match(core["worker"]):
        raise ReceiptError("worker must be 0x + 40 lowercase hex, or null")


def recompute_problems(core: dict[str, Any]) -> list[str]:
    """What an auditor finds wrong with a core: its amounts recomputed from its own inputs."""
    problems: list[str] = []
    try:
        validate_core(core)
    except (ReceiptError, ValueError, KeyError) as exc:
        return [f"malformed core: {exc}"]
    pw, ow = int(core["prompt_weight"]), int(core["output_weight"])
    charged = (core["prompt_tokens"] * pw + core["output_tokens"] * ow) * core["multiplier_bps"] // 10_000
    if str(charged) != core["charged"]:
        problems.append(f"charged {core['charged']} != recomputed {charged}")
    expected_reward = split_charge(charged, core["reward_bps"]).reward
    if str(expected_reward) != core["reward"]:
        problems.append(f"reward {core['reward']} != recomputed {expected_reward}")
    if core["served_by"] == "gateway" and (core["reward_bps"] != 0 or core["worker"] is not None):
        problems.append("gateway-served receipt must have reward_bps 0 and no worker")
    if core["outcome"] == "failed" and core["reward_bps"] != 0:
        problems.append("failed job must have reward_bps 0")
    if core["outcome"] != "completed" and core["output_tokens"] == 0:
        problems.append("a cancelled or failed job with no output token gets no receipt")
    return problems


def is_hash(value: str) -> bool:
    return bool(_HASH.match(value))


@dataclass(frozen=True, slots=True)
class Receipt:
    core: dict[str, Any]
    hash: str
    signature: str
