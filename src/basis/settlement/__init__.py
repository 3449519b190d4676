"""On-chain settlement: deposit/withdrawal/claim indexing, settlement batches, vouchers, chain audit.

Ledger commands here are plain ``fn(uow)`` functions run with ``Ledger.run``; the aggregates are
in ``basis.ledger.settlement`` and ``basis.ledger.accounts``. See docs/settlement.md.
"""
