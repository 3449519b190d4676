"""One verifier per check across gateways on one PostgreSQL store.

Every gateway's verifier reads the pending checks from its own views, and the views of gateways
sharing a store hold the same checks: each was scored once per gateway (the second verdict is
refused, but the reference model's CPU was spent twice: with two gateways on two cores the
scoring was most of the gateways' extra CPU per request). A verifier now claims a check with a
session advisory lock keyed by the job before it reads and scores it, so the gateways share the
checks instead of repeating them; the holder records its verdict before letting go, so the next
claimant reads the verdict and skips. The lock dies with its holder's connection: a killed
gateway's claims are free at once. If the lock cannot be had (no connection), the verifier
checks anyway: a repeated score costs CPU, never a second verdict. SQLite: one machine, no claims.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Any

log = logging.getLogger(__name__)


def _claim_key(job_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"basis-check:{job_id}".encode(), digest_size=8).digest(), "big",
                          signed=True)


class CheckClaims:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.postgres = "POSTGRES_DBNAME" in env
        self._conn: Any = None
        self.skipped = 0  # checks another verifier held

    def claim(self, job_id: str) -> bool:
        """True: this verifier checks the job (then ``release`` it); False: another one is on it."""
        if not self.postgres:
            return True
        import psycopg

        try:
            if self._conn is None:
                e = self.env
                self._conn = psycopg.connect(host=e.get("POSTGRES_HOST"), port=e.get("POSTGRES_PORT"),
                                             dbname=e.get("POSTGRES_DBNAME"), user=e.get("POSTGRES_USER"),
                                             password=e.get("POSTGRES_PASSWORD"), autocommit=True,
                                             application_name="basis-verifier", connect_timeout=10)
            got = bool(self._conn.execute("SELECT pg_try_advisory_lock(%s)", (_claim_key(job_id),)).fetchone()[0])
        except psycopg.Error as exc:
            log.warning("could not claim check %s (%s); checking it anyway", job_id, exc)
            self.close()
            return True
        self.skipped += not got
        return got

    def release(self, job_id: str) -> None:
        if self._conn is None:
            return
        import psycopg

        try:
            self._conn.execute("SELECT pg_advisory_unlock(%s)", (_claim_key(job_id),))
        except psycopg.Error:  # closing the session frees the claim
            self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
