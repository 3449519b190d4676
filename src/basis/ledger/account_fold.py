"""The account aggregates of an export, folded page by page as it is imported (``basis audit
--events``), on the projection's process, from the states that process has decoded for the views
(each account event's state was decoded twice before, once there and once on the receipts'
process, which folded them from the store: about 1.2 CPU-s per 1,000,020 events). Rebuilt after
the import on the first process they kept it busy after everything else was done. What results
equals each account rebuilt from its stream by the repository (``LedgerSnapshot.get``), or is not
used: the caller takes it only for an export read without a problem and whose account streams hold
account events only (``pure``); an account whose stream its aggregate refuses is left out, and
rebuilt, and named, by the checks."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from basis.ledger.account_mutators import apply_plain
from basis.ledger.store import LedgerStore

ACCOUNT_TOPICS = "basis:Account."  # every event of the Account aggregate: basis:Account.<Name>.v1
OPENED = "basis:Account.Opened.v1"
_REFUSED = object()  # an account whose stream its aggregate refused


class AccountFold:
    def __init__(self, store: LedgerStore, limit: int) -> None:
        self.mapper = store.mapper
        self.convert_id = store.recorder.convert_originator_id  # type: ignore[attr-defined]
        self.limit = limit
        self.aggregates: dict[UUID, Any] = {}
        # each stream's id as stored -> its UUID: converted once, not per event (at most ``limit``)
        self.streams: dict[Any, UUID] = {}
        self.failed = False  # a page could not be folded: nothing folded is used (the checks rebuild all)

    def page(self, rows: Iterable[tuple[Any, int, str, bytes, dict[str, Any]]]) -> None:
        """Fold a page's events, in log order: (stream id as stored, version, topic, stored state,
        that state as the store's transcoder decodes it). Only account events are read; a state is
        only read, never changed (the projection reads the same objects). Never raises: it runs
        beside the projection, whose results must not depend on it."""
        if self.failed:
            return
        try:
            self._page(rows)
        except Exception:
            self.failed = True

    def _page(self, rows: Iterable[tuple[Any, int, str, bytes, dict[str, Any]]]) -> None:
        aggregates, streams = self.aggregates, self.streams
        for raw_id, version, topic, stored, state in rows:
            if not topic.startswith(ACCOUNT_TOPICS):
                continue
            stream = streams.get(raw_id)
            if stream is None:
                stream = self.convert_id(raw_id)
                if len(streams) < self.limit:
                    streams[raw_id] = stream
            aggregate = aggregates.get(stream)
            if aggregate is None:
                if version != 1 or topic != OPENED or len(aggregates) >= self.limit:
                    continue  # not followed: the checks rebuild it
            elif aggregate is _REFUSED:
                continue
            try:
                # an opened account's events by plain functions (``account_mutators``: a fifth of
                # eventsourcing's cost), the rest as the repository applies them
                if aggregate is None or not apply_plain(aggregate, version, topic, state):
                    event = self.mapper.to_domain_event(StoredEvent(originator_id=stream, originator_version=version,
                                                                    topic=topic, state=stored))
                    aggregates[stream] = event.mutate(aggregate)
            except Exception:  # the checks rebuild it from the store and name what refused it
                aggregates[stream] = _REFUSED

    def result(self) -> dict[str, dict[str, int]] | None:
        """Each account folded, by id: its ``snapshot_view()``; None when a page could not be read."""
        if self.failed:
            return None
        return {str(stream): agg.snapshot_view() for stream, agg in self.aggregates.items()
                if agg is not _REFUSED and agg is not None}

    @staticmethod
    def pure(events_db: str, events_table: str) -> bool:
        """Whether every stream that opens as an account holds account events only (else the fold,
        which reads account events only, could differ from the repository's rebuild)."""
        db = sqlite3.connect(events_db)
        try:
            return db.execute(
                f"SELECT 1 FROM {events_table} WHERE originator_id IN (SELECT originator_id FROM {events_table} "
                f"WHERE topic = ? AND originator_version = 1) AND substr(topic, 1, {len(ACCOUNT_TOPICS)}) != ? "
                "LIMIT 1", (OPENED, ACCOUNT_TOPICS)).fetchone() is None
        finally:
            db.close()
