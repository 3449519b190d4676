"""The worker's own store (DESIGN 1.7): an append-only, crash-safe log of what the gateway sent it.

One file per worker key under the worker's home (``<home>/receipts/<address>.jsonl``). Each
record is one line: the record's canonical JSON, a tab, and the first 16 hex digits of its
SHA-256; the line is written with one ``write`` on an ``O_APPEND`` descriptor and ``fsync``ed
before ``append`` returns, so once the worker acknowledges a receipt (after ``append``) it
survives SIGKILL and power loss. Nothing is ever rewritten in place.

Opening the store reads every line back. A tail that does not parse (a write cut short by a
crash, or damage) is never silently dropped: it is moved, byte for byte, to
``<file>.damaged-<offset>``, named in ``StoreOpen.damaged`` and logged as an error, and the log
continues after the last whole record. A damaged line followed by whole records is not a crash
artefact: opening refuses (``StoreCorrupt``) and leaves the file untouched.

Records: ``{"kind": "receipt", "job_id", "core", "hash", "signature", "received_at"}`` and
``{"kind": "verdict", "job_id", "hash", "verdict", "method", "tokens", "statistic",
"reward_forfeited", "ids_sha256", "received_at"}``. A receipt is accepted only if its hash is the
hash of its core, its signature recovers to the gateway's published signer, its core names this
worker and its amounts recompute (DESIGN 1.1/1.2); anything else raises ``ReceiptRejected``.

Never imports basis.ledger or basis.gateway (DESIGN 2): only the pure domain core.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from basis.domain.receipt import receipt_hash, recompute_problems
from basis.domain.signing import recover_signer

log = logging.getLogger("basis.worker.store")


class StoreCorrupt(RuntimeError):
    """A record before the tail is damaged: not a crash artefact; the file is left as it is."""


class ReceiptRejected(ValueError):
    """A receipt or verdict that the worker refuses to store (and says so to the gateway)."""


def _line(record: dict[str, Any]) -> bytes:
    body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return (body + "\t" + hashlib.sha256(body.encode()).hexdigest()[:16] + "\n").encode()


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        text = line.decode()
        body, _, check = text.rpartition("\t")
        if not body or hashlib.sha256(body.encode()).hexdigest()[:16] != check:
            return None
        rec = json.loads(body)
        return rec if isinstance(rec, dict) else None
    except (UnicodeDecodeError, ValueError):
        return None


@dataclass
class StoreOpen:
    records: int = 0
    damaged: list[Path] = field(default_factory=list)


class ReceiptStore:
    def __init__(self, home: Path, worker: str, *, gateway_signer: str | None = None) -> None:
        self.worker = worker.lower()
        self.gateway_signer = gateway_signer.lower() if gateway_signer else None
        self.path = Path(home) / "receipts" / f"{self.worker}.jsonl"
        self._lock = threading.Lock()
        self.receipts: dict[str, dict[str, Any]] = {}  # hash -> record
        self.verdicts: dict[str, dict[str, Any]] = {}  # hash -> latest verdict record
        self.opened = self._open()

    # -- opening -------------------------------------------------------------------------------
    def _open(self) -> StoreOpen:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        result = StoreOpen()
        new = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        if new:
            _fsync_dir(self.path.parent)
        data = _read_all(self._fd)
        offset = 0
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if last and line == b"":
                break  # the file ends with a newline: all whole
            rec = _parse(line) if not last else None  # a last piece without newline is cut short
            if rec is None:
                if any(_parse(later) is not None for later in lines[i + 1:-1]):
                    os.close(self._fd)
                    raise StoreCorrupt(f"{self.path}: record at byte {offset} is damaged and is not the tail; "
                                       "the file is left untouched for inspection")
                result.damaged.append(self._set_aside(data[offset:], offset))
                os.ftruncate(self._fd, offset)
                os.fsync(self._fd)
                break
            self._index(rec)
            result.records += 1
            offset += len(line) + 1
        return result

    def _set_aside(self, tail: bytes, offset: int) -> Path:
        side = self.path.with_name(f"{self.path.name}.damaged-{offset}")
        with open(side, "wb") as fh:
            fh.write(tail)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(self.path.parent)
        log.error("worker store %s: a damaged tail of %d bytes at offset %d (a write cut short) was moved to %s; "
                  "nothing acknowledged is in it", self.path, len(tail), offset, side)
        return side

    def _index(self, rec: dict[str, Any]) -> None:
        if rec.get("kind") == "receipt":
            self.receipts[rec["hash"]] = rec
        elif rec.get("kind") == "verdict":
            self.verdicts[rec["hash"]] = rec

    # -- appending ------------------------------------------------------------------------------
    def _append(self, rec: dict[str, Any]) -> None:
        line = _line(rec)
        with self._lock:
            written = os.write(self._fd, line)
            if written != len(line):  # a short write: the next open treats it as a damaged tail
                raise OSError(f"short write to {self.path} ({written} of {len(line)} bytes)")
            os.fsync(self._fd)
            self._index(rec)

    def check_receipt(self, core: Any, digest: str, signature: str) -> None:
        if not isinstance(core, dict):
            raise ReceiptRejected("core must be a JSON object")
        problems = recompute_problems(core)
        if problems:
            raise ReceiptRejected("; ".join(problems))
        actual = receipt_hash(core)
        if actual != digest:
            raise ReceiptRejected(f"hash {digest} is not the hash of its core ({actual})")
        try:
            signer = recover_signer(digest, signature).lower()
        except Exception as exc:
            raise ReceiptRejected(f"signature does not recover: {exc}") from exc
        if self.gateway_signer is None:
            raise ReceiptRejected("the gateway's published signer is unknown: refusing unverifiable receipts")
        if signer != self.gateway_signer:
            raise ReceiptRejected(f"signed by {signer}, not the gateway's published signer {self.gateway_signer}")
        if (core.get("worker") or "").lower() != self.worker:
            raise ReceiptRejected(f"receipt of worker {core.get('worker')}, not {self.worker}")

    def add_receipt(self, *, core: Any, hash: str, signature: str) -> bool:
        """Verify and durably store a receipt; False when it was already stored. Raises ReceiptRejected."""
        digest = hash.lower()
        self.check_receipt(core, digest, signature)
        if digest in self.receipts:
            return False
        self._append({"kind": "receipt", "job_id": core["job_id"], "core": core, "hash": digest,
                      "signature": signature, "received_at": int(time.time())})
        return True

    def add_verdict(self, *, job_id: str, hash: str, verdict: str, method: str = "", tokens: int = 0,
                    statistic: dict[str, Any] | None = None, reward_forfeited: bool = False,
                    ids_sha256: str | None = None) -> bool:
        digest = hash.lower()
        if digest not in self.receipts:
            raise ReceiptRejected(f"verdict for {digest}, a receipt this worker does not hold")
        if self.receipts[digest]["job_id"] != job_id:
            raise ReceiptRejected(f"verdict names job {job_id}, the receipt {digest} is job "
                                  f"{self.receipts[digest]['job_id']}")
        if verdict not in ("passed", "failed"):
            raise ReceiptRejected(f"unknown verdict {verdict!r}")
        rec = {"kind": "verdict", "job_id": job_id, "hash": digest, "verdict": verdict, "method": method,
               "tokens": int(tokens), "statistic": statistic or {}, "reward_forfeited": bool(reward_forfeited),
               "ids_sha256": ids_sha256, "received_at": int(time.time())}
        old = self.verdicts.get(digest)
        if old is not None and {k: v for k, v in old.items() if k != "received_at"} == {
                k: v for k, v in rec.items() if k != "received_at"}:
            return False
        self._append(rec)
        return True

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every whole record of a store file, read only (for audits and evidence)."""
    out = []
    for line in Path(path).read_bytes().split(b"\n"):
        rec = _parse(line) if line else None
        if rec is not None:
            out.append(rec)
    return out
