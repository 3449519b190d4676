"""Contributor worker (``basis worker run``). Never imports basis.ledger or basis.gateway."""

from basis.worker.client import GatewayLost, Worker, WorkerRejected, make_offers
from basis.worker.keys import load_key, new_key_file

__all__ = ["GatewayLost", "Worker", "WorkerRejected", "load_key", "make_offers", "new_key_file"]
