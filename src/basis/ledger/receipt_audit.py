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
from concurrent.futures.process import BrokenProcessPool
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


def _init_worker(decode: Callable[[bytes], Any], operator: str | None) -> None:
    global _worker
    _worker = (decode, operator)


def _check_in_worker(items: list[tuple[str, bytes]]) -> ReceiptTally:
    assert _worker is not None
    return check_receipt_states(items, *_worker)


class ReceiptChecker:
    """Checks receipt events as they are handed over, on a second process where the platform forks
    (the decoder and the operator's address are inherited, not pickled); otherwise here, inline."""

    def __init__(self, decode: Callable[[bytes], Any], operator: str | None, *, parallel: bool = True) -> None:
        self.decode = decode
        self.operator = operator
        self.tally = ReceiptTally()
        self._pending: list[Future[ReceiptTally]] = []
        self._broken: BrokenProcessPool | None = None  # its process died: ``result`` raises this
        self._pool: ProcessPoolExecutor | None = None
        if parallel and "fork" in multiprocessing.get_all_start_methods():
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"),
                                             initializer=_init_worker, initargs=(decode, operator))

    def add(self, items: list[tuple[str, bytes]]) -> None:
        if not items or self._broken is not None:
            return
        if self._pool is None:
            self.tally.merge(check_receipt_states(items, self.decode, self.operator))
            return
        try:
            self._pending.append(self._pool.submit(_check_in_worker, items))
            # Merge what is done, in order; and never hold more than a few pages of receipts in flight
            # (memory stays flat even when the second process falls behind).
            while self._pending and (self._pending[0].done() or len(self._pending) > MAX_IN_FLIGHT):
                self.tally.merge(self._pending.pop(0).result())
        except BrokenProcessPool as exc:  # the reading goes on; the audit reports it when it asks
            self._broken = exc
            self._pending.clear()

    def result(self) -> ReceiptTally:
        """Everything handed over, checked (waits for the second process). Raises BrokenProcessPool
        when that process died: its receipts were not all checked."""
        if self._broken is not None:
            raise self._broken
        for future in self._pending:
            self.tally.merge(future.result())
        self._pending.clear()
        return self.tally

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
