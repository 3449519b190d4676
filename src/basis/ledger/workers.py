"""Worker aggregate: a contributor's reward address and what it advertises."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import Aggregate, event

from basis.ledger import ids


class Worker(Aggregate):
    TOPIC = "basis:Worker"

    class Created(Aggregate.Created):
        TOPIC = "basis:Worker.Created.v1"

    @staticmethod
    def create_id(address: str) -> UUID:
        return ids.worker_id(address)

    @event("Registered", topic="basis:Worker.Registered.v1")
    def __init__(self, address: str) -> None:
        self.address = address.lower()
        self.models: list[str] = []

    @event("Advertised", topic="basis:Worker.Advertised.v1")
    def advertise(self, models: list[str], software: str = "") -> None:
        self.models = sorted(models)
