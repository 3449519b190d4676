"""Account events applied without eventsourcing's machinery, for the account fold of ``basis audit
--events`` (``AccountFold``): eventsourcing's way of applying an event (the event object built, its
method found in a registry, its arguments filtered) cost about 8 µs an account event, the method's
own body under 1 µs. Each event's rule (``account_rules``, the very function ``Account``'s method
calls) is applied to the aggregate object with eventsourcing's own checks around it (the version must follow;
the state's keys filtered to the method's parameters; ``modified_on`` set from its timestamp), so
the aggregate ends in the same state, and refuses the same events.
``tests/ledger/test_account_mutators.py`` holds each one equal to eventsourcing's application of
its event (property-tested, odd states included) and fails for an account event type that has none
here. Anything unusual in a state (``class_version``, which eventsourcing would upcast) is left to
eventsourcing (``apply_plain`` returns False).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from basis.ledger.account_rules import (
    add_api_key,
    credit,
    redeem_withdrawal,
    release_withdrawal,
    reserve,
    reserve_withdrawal,
    settle_deposit_spend,
    settle_reservation,
)
from basis.ledger.accounts import Account

# by event topic: (the function, the names eventsourcing passes it from the event: its parameters)
MUTATORS: dict[str, tuple[Callable[..., None], frozenset[str]]] = {
    # the method's parameters: the rule's, its ``account`` being the method's ``self``
    event.TOPIC: (fn, frozenset(inspect.signature(fn).parameters) - {"account"} | {"self"}) for event, fn in (
        (Account.ApiKeyAdded, add_api_key),  # type: ignore[attr-defined]
        (Account.Credited, credit),  # type: ignore[attr-defined]
        (Account.Reserved, reserve),  # type: ignore[attr-defined]
        (Account.ReservationSettled, settle_reservation),  # type: ignore[attr-defined]
        (Account.DepositSpendSettled, settle_deposit_spend),  # type: ignore[attr-defined]
        (Account.WithdrawalReserved, reserve_withdrawal),  # type: ignore[attr-defined]
        (Account.WithdrawalRedeemed, redeem_withdrawal),  # type: ignore[attr-defined]
        (Account.WithdrawalReleased, release_withdrawal),  # type: ignore[attr-defined]
    )}


def apply_plain(aggregate: Account, version: int, topic: str, state: dict[str, Any]) -> bool:
    """Apply the event (``state`` as the store's transcoder decodes it) to ``aggregate`` as
    eventsourcing's ``mutate`` would; raises where it would raise (the aggregate is then not to be
    used). False, with nothing done, for an event left to eventsourcing."""
    found = MUTATORS.get(topic)
    if found is None or "class_version" in state:
        return False
    fn, params = found
    if version != aggregate.version + 1:  # as eventsourcing's OriginatorVersionError
        raise ValueError(f"version {version} does not follow {aggregate.version}")
    # the event's own originator_id and originator_version replace any in its state: neither is a parameter
    fn(aggregate, **{k: v for k, v in state.items() if k in params})
    aggregate.version = version
    aggregate.modified_on = state["timestamp"]  # eventsourcing reads the event's timestamp: missing, it raises
    return True
