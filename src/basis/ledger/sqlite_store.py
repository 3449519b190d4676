"""eventsourcing's SQLite factory with a chosen ``PRAGMA synchronous``.

WAL with ``synchronous=NORMAL`` (the default here) makes a commit durable against a crash of
the process (SIGKILL included) without an fsync per commit: only an OS crash or power loss can
drop the last commits. ``BASIS_SQLITE_SYNCHRONOUS=FULL`` fsyncs every commit (about 4 ms on
these disks); group commit amortises that under load.
"""

from __future__ import annotations

from eventsourcing.sqlite import SQLiteFactory

LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")


class TunedSQLiteFactory(SQLiteFactory):
    def __init__(self, env) -> None:
        super().__init__(env)
        level = (env.get("SQLITE_SYNCHRONOUS") or "NORMAL").upper()
        if level not in LEVELS:
            raise ValueError(f"BASIS_SQLITE_SYNCHRONOUS must be one of {LEVELS}")
        pool = self.datastore.pool
        create = pool._create_connection

        def create_tuned():
            conn = create()
            conn._sqlite_conn.execute(f"PRAGMA synchronous={level}")
            return conn

        pool._create_connection = create_tuned  # type: ignore[method-assign]
