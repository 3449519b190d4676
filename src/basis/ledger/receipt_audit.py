"""The audit of receipts: every core recomputed, its hash recomputed (RFC 8785 + SHA-256), its
signature recovered and compared with the signer it names and the operator's address.

Recovering a signature is most of an audit's arithmetic, and each receipt is checked alone, so an
export's receipts are checked on a second core (``ReceiptChecker``) while the first one imports
and replays the export; results are merged in log order.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from basis.domain.receipt import receipt_hash, recompute_problems
from basis.domain.signing import recover_signer

RECEIPT_TOPIC = "basis:Job.ReceiptIssued.v1"
MAX_IN_FLIGHT = 4  # pages of receipts handed to the second process and not yet checked


@dataclass
class ReceiptTally:
    receipts: int = 0
    charged_total: int = 0
    reward_total: int = 0
    problems: list[str] = field(default_factory=list)

    def merge(self, other: ReceiptTally) -> None:
        self.receipts += other.receipts
        self.charged_total += other.charged_total
        self.reward_total += other.reward_total
        self.problems.extend(other.problems)


def check_receipt(tally: ReceiptTally, job: str, core: dict[str, Any], hash_: str, signature: str, signer: str,
                  operator: str | None) -> None:
    """One receipt: its problems go to ``tally.problems``, its amounts to the totals."""
    problems = tally.problems
    tally.receipts += 1
    for p in recompute_problems(core):
        problems.append(f"receipt {job}: {p}")
    if receipt_hash(core) != hash_:
        problems.append(f"receipt {job}: hash {hash_} != recomputed {receipt_hash(core)}")
    try:
        recovered = recover_signer(hash_, signature)
    except Exception as exc:  # malformed signature bytes
        problems.append(f"receipt {job}: signature does not recover ({exc})")
        return
    if recovered != signer:
        problems.append(f"receipt {job}: signature recovers to {recovered}, not {signer}")
    if operator is not None and recovered.lower() != operator.lower():
        problems.append(f"receipt {job}: signed by {recovered}, not the operator {operator}")
    charged, reward = int(core["charged"]), int(core["reward"])
    if reward > charged:
        problems.append(f"receipt {job}: reward exceeds charge (fee negative)")
    tally.charged_total += charged
    tally.reward_total += reward


def check_receipt_states(items: Iterable[tuple[str, bytes]], decode: Callable[[bytes], Any],
                         operator: str | None) -> ReceiptTally:
    """``items``: (job id, stored state of its ReceiptIssued event) in log order."""
    tally = ReceiptTally()
    for job, state in items:
        try:
            d = decode(state)
            core, hash_, signature, signer = d["core"], d["hash"], d["signature"], d["signer"]
            check_receipt(tally, job, core, hash_, signature, signer, operator)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a receipt event missing its fields
            tally.problems.append(f"receipt {job}: its event cannot be checked ({type(exc).__name__}: {exc})")
    return tally


_worker: tuple[Callable[[bytes], Any], str | None] | None = None
_fold: Any = None  # what else the second process does with each page (``AccountFold``), if anything


def _init_worker(decode: Callable[[bytes], Any], operator: str | None, fold: Any = None) -> None:
    global _worker, _fold
    _worker = (decode, operator)
    _fold = fold


def _check_in_worker(items: list[tuple[str, bytes]], span: tuple[int, int] | None = None) -> ReceiptTally:
    assert _worker is not None
    tally = check_receipt_states(items, *_worker)
    if span is not None and _fold is not None:
        _fold.page(*span)
    return tally


def _fold_result() -> Any:
    return _fold.result() if _fold is not None else None


class ReceiptChecker:
    """Checks receipt events as they are handed over, on a second process where the platform forks
    (the decoder and the operator's address are inherited, not pickled); otherwise here, inline.
    ``fold``: also handed each page's span of positions on that process (``page(first, last)``),
    its ``result()`` returned by ``folded``; only where there is a second process."""

    def __init__(self, decode: Callable[[bytes], Any], operator: str | None, *, parallel: bool = True,
                 fold: Any = None) -> None:
        self.decode = decode
        self.operator = operator
        self.tally = ReceiptTally()
        self._pending: list[Future[ReceiptTally]] = []
        self._pool: ProcessPoolExecutor | None = None
        if parallel and "fork" in multiprocessing.get_all_start_methods():
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"),
                                             initializer=_init_worker, initargs=(decode, operator, fold))
        self.folds = self._pool is not None and fold is not None

    def add(self, items: list[tuple[str, bytes]], span: tuple[int, int] | None = None) -> None:
        if self._pool is None:
            if items:
                self.tally.merge(check_receipt_states(items, self.decode, self.operator))
            return
        if not items and (span is None or not self.folds):
            return
        self._pending.append(self._pool.submit(_check_in_worker, items, span if self.folds else None))
        # Merge what is done, in order; and never hold more than a few pages of receipts in flight
        # (memory stays flat even when the second process falls behind).
        while self._pending and (self._pending[0].done() or len(self._pending) > MAX_IN_FLIGHT):
            self.tally.merge(self._pending.pop(0).result())

    def result(self) -> ReceiptTally:
        """Everything handed over, checked (waits for the second process)."""
        for future in self._pending:
            self.tally.merge(future.result())
        self._pending.clear()
        return self.tally

    def folded(self) -> Any:
        """The fold's result, once every page handed over is done (None without a fold)."""
        if not self.folds or self._pool is None:
            return None
        self.result()
        return self._pool.submit(_fold_result).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
