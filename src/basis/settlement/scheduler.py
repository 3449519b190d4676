"""The gateway's settlement thread: ``Settler.settle_once`` on a schedule, that never dies.

Any exception of a tick (web3's ``Web3RPCError``, ``TimeExhausted``, ``ContractLogicError``, a
ledger error, anything) is caught at the loop, logged as one JSON line naming the batch being
worked on, and retried after a back-off that doubles per consecutive failure (from ``interval``
up to ``max_backoff``). A ``ChainMismatch`` (a confirmed batch the chain lost) stops settling:
every later tick checks again and proposes nothing until the chain holds the batch again
(``basis settle repost``). ``state()`` is what ``/v1/settlement/status``, ``basis status``, the
explorer and ``/metrics`` show. Several settlers may run (gateways, ``basis settle``): the one
holding the lease (lease.py) settles, the others stand by (``standby``, not a failure).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from web3 import Web3

from basis.ledger.projections import ViewReader
from basis.ledger.service import Ledger
from basis.observability import metrics
from basis.settlement.batches import MAX_RECEIPTS, Settler
from basis.settlement.chain import Chain
from basis.settlement.consistency import ChainMismatch
from basis.settlement.lease import LeaseHeld
from basis.settlement.roots import RootAcceptor
from basis.units import Seconds

log = logging.getLogger(__name__)
_URL = re.compile(r"https?://\S+")


def public_error(exc: BaseException) -> str:
    """An error's text for status pages: bounded, without URLs (an RPC URL may carry a key)."""
    return _URL.sub("<url>", str(exc) or type(exc).__name__)[:500]


class SettlementScheduler:
    def __init__(self, ledger: Ledger, w3: Web3, deployment: dict[str, Any], operator_key: str, *,
                 reader: Callable[[], ViewReader], interval: Seconds = 60.0, max_receipts: int = MAX_RECEIPTS,
                 max_backoff: Seconds | None = None) -> None:
        self.settler = Settler(ledger, Chain(w3, deployment), operator_key, reader=reader, max_receipts=max_receipts)
        self.roots = RootAcceptor(self.settler.chain, self.settler.sender)
        self.interval = interval
        self.max_backoff = max_backoff if max_backoff is not None else max(interval, min(600.0, 10 * interval))
        self.last_error: str | None = None
        self.last_error_type: str | None = None
        self.last_error_at: float | None = None
        self.last_error_batch: str | None = None
        self.consecutive_failures = 0
        self.next_attempt_at: float | None = None
        self.last_success_at: float | None = None
        self.halted: list[dict[str, Any]] = []  # batches the chain lost, while settlement is stopped
        self.last_batch: dict[str, Any] | None = None
        self.failures_total = 0
        self.standby_ticks = 0
        self.standing_by = False  # the last tick found another settler holding the lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one tick --------------------------------------------------------------------------------
    def tick(self) -> dict[str, Any] | None:
        try:
            result = self.settler.settle_once()
        except LeaseHeld:
            self._standby()
            return None
        except Exception as exc:  # the thread must outlive any error; each one is logged
            self._failed(exc)
            return None
        self._succeeded(result)
        # The lease holder also accepts the newest rewards root whose delay has passed (roots.py).
        self.roots.tick()
        return result

    def _standby(self) -> None:
        """Another settler (gateway or CLI) holds the lease: not a failure; ask again next interval."""
        self.standby_ticks += 1
        self.standing_by = True
        self.next_attempt_at = time.time() + self.interval
        log.debug("another settler holds the lease; standing by", extra={"standby_ticks": self.standby_ticks})
        self._publish()

    def check_at_start(self) -> None:
        """Every batch the ledger confirmed must be on chain before anything is built on it: a
        failure shows at once (halted or retrying), not one interval later."""
        try:
            self.settler.check_chain()
        except Exception as exc:  # the tick retries it; this only makes the state visible now
            self._failed(exc)

    def _delay(self) -> Seconds:
        if not self.consecutive_failures:
            return self.interval
        return min(self.max_backoff, self.interval * 2 ** (self.consecutive_failures - 1))

    def _failed(self, exc: Exception) -> None:
        self.consecutive_failures += 1
        self.failures_total += 1
        self.standing_by = False
        self.last_error = public_error(exc)
        self.last_error_type = type(exc).__name__
        self.last_error_at = time.time()
        self.last_error_batch = self.settler.current_batch
        self.halted = [b.as_dict() for b in exc.lost] if isinstance(exc, ChainMismatch) else []
        delay = self._delay()
        self.next_attempt_at = self.last_error_at + delay
        batch_ids = [b["batch_id"] for b in self.halted] or None
        log.error("settlement halted: the chain lost confirmed batches" if self.halted else
                  "settlement failed; retrying after a back-off",
                  exc_info=exc, extra={"batch_id": self.last_error_batch, "lost_batches": batch_ids,
                                       "error_type": self.last_error_type, "error": self.last_error,
                                       "consecutive_failures": self.consecutive_failures, "retry_in_s": delay})
        metrics.SETTLEMENT_FAILURES.labels(self.last_error_type).inc()
        self._publish()

    def _succeeded(self, result: dict[str, Any] | None) -> None:
        if self.consecutive_failures:
            log.info("settlement recovered", extra={"batch_id": self.settler.current_batch,
                                                    "after_failures": self.consecutive_failures})
        self.consecutive_failures = 0
        self.last_error = self.last_error_type = self.last_error_batch = None
        self.halted = []
        self.standing_by = False
        self.last_success_at = time.time()
        self.next_attempt_at = self.last_success_at + self.interval
        if result is not None:
            self.last_batch = result
        self._publish()

    def _publish(self) -> None:
        metrics.SETTLEMENT_CONSECUTIVE_FAILURES.set(self.consecutive_failures)
        metrics.SETTLEMENT_HALTED.set(1 if self.halted else 0)
        metrics.SETTLEMENT_NEXT_ATTEMPT.set(self.next_attempt_at or 0)
        if self.last_success_at is not None:
            metrics.SETTLEMENT_LAST_SUCCESS.set(self.last_success_at)

    def state(self) -> dict[str, Any]:
        """``status``: ok | standby (another settler holds the lease) | retrying (the last tick failed)
        | halted (the chain lost confirmed batches)."""
        status = "halted" if self.halted else ("retrying" if self.consecutive_failures else
                                                ("standby" if self.standing_by else "ok"))
        return {
            "status": status, "interval_s": self.interval, "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error, "last_error_type": self.last_error_type,
            "last_error_at": self.last_error_at, "last_error_batch": self.last_error_batch,
            "next_attempt_at": self.next_attempt_at, "last_success_at": self.last_success_at,
            "lost_batches": self.halted, "last_batch": self.last_batch,
            "thread_alive": bool(self._thread and self._thread.is_alive()), "failures_total": self.failures_total,
            "standby_ticks": self.standby_ticks,
        }

    # -- the thread --------------------------------------------------------------------------------
    def start(self) -> None:
        def loop() -> None:
            self.check_at_start()
            while not self._stop.wait(self._delay()):
                try:
                    self.tick()
                except Exception:  # a failure of the failure handling itself: logged, and the loop goes on
                    log.exception("settlement tick raised past its handler")

        self.next_attempt_at = time.time() + self.interval
        self._publish()
        self._thread = threading.Thread(target=loop, name="basis-settlement", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
