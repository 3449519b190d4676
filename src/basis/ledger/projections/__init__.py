"""Read models built from the event log: receipts, balances, rewards, workers, jobs.

They are disposable: ``basis audit`` rebuilds them from an empty view and compares.
"""

from basis.ledger.projections.projector import Projector
from basis.ledger.projections.reader import ViewReader

__all__ = ["Projector", "ViewReader"]
