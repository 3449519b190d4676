"""The gateway's side of the rewards-root delay: accept each due root so claims move on.

Accepting is permissionless on chain; the gateway does it from the settlement loop with its
settlement key (any worker may do the same, e.g. ``basis worker claim``). Revoking a wrong root is
the distributor owner's act (``basis settlement revoke-root``), deliberately not automated here.
"""

from __future__ import annotations

import logging
from typing import Any

from basis.chain.contracts import Sender
from basis.chain.roots import accept_due_root
from basis.settlement.chain import Chain

log = logging.getLogger(__name__)


class RootAcceptor:
    def __init__(self, chain: Chain, sender: Sender) -> None:
        self.chain = chain
        self.sender = sender
        self._delay: int | None = None
        self.last_accepted: dict[str, Any] | None = None

    @property
    def delay(self) -> int:
        if self._delay is None:
            self._delay = self.chain.contracts.root_delay()
        return self._delay

    def tick(self) -> dict[str, Any] | None:
        """Accept the newest due pending root (no-op without a delay: posts accept themselves)."""
        try:
            if self.delay == 0:
                return None
            result = accept_due_root(self.chain.contracts, self.sender, from_block=self.chain.deploy_block)
        except Exception:  # the chain may be briefly unreachable; the next tick retries
            log.exception("accepting a due rewards root failed; retrying next tick")
            return None
        if result is None:
            return None
        ev = result.event("RootAccepted")
        self.last_accepted = {"batch_id": "0x" + bytes(ev.args["batchId"]).hex(),
                              "rewards_root": "0x" + bytes(ev.args["rewardsRoot"]).hex(), "tx_hash": result.tx_hash}
        log.info("accepted rewards root of batch %s", self.last_accepted["batch_id"])
        return self.last_accepted
