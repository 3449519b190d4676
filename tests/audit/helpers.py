"""Shared by the export/audit tests: a ledger that holds every kind of secret, the CLI as an
operator and an auditor run it, and tools to tamper with an export as an attacker would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from basis.ledger.export import GENESIS_HEAD, body, canonical, next_head, with_head
from basis.ledger.service import Ledger

WORKER = "0x" + "ab" * 20
COMPLETION = "The secret completion text: Paris is the capital of France."
IDEMPOTENCY_KEY = "client-idem-key-7f3a9c"
REQUEST_HASH = "client-request-hash-0b1e"


def fill(ledger: Ledger) -> dict[str, str]:
    """An account with an API key and a grant, a completed contributor job sent with an
    Idempotency-Key whose completion text is kept, a gateway job and a failed one."""
    account_id, api_key = ledger.create_api_key("alice")
    ledger.grant("alice", 5 * 10**21, memo="launch promotion")
    job_id = uuid.uuid4()
    ledger.run(ledger.accept_job(job_id=job_id, account_id=account_id, model="basis-default", prompt_tokens=12,
                                 max_output_tokens=64, idempotency_key=IDEMPOTENCY_KEY, request_hash=REQUEST_HASH,
                                 assignment=("contributor", WORKER)))
    ledger.run(ledger.finish_job(job_id, outcome="completed", output_tokens=20, finish_reason="stop",
                                 output_text=COMPLETION, worker_usage={"completion_tokens": 20}))
    for served_by, outcome, tokens in (("gateway", "completed", 7), ("contributor", "failed", 3)):
        jid = uuid.uuid4()
        ledger.run(ledger.accept_job(job_id=jid, account_id=account_id, model="basis-default", prompt_tokens=5,
                                     max_output_tokens=32,
                                     assignment=(served_by, WORKER if served_by == "contributor" else None)))
        ledger.run(ledger.finish_job(jid, outcome=outcome, output_tokens=tokens))
    return {"api_key": api_key, "job_id": str(job_id), "account_id": str(account_id)}


def basis(args: list[str], home: Path, cwd: Path | None = None, stdout=None) -> subprocess.CompletedProcess:
    """The real CLI in its own process, with only BASIS_HOME set (no other BASIS_ variable leaks in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASIS_")}
    env["BASIS_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "basis.cli.main", *args], env=env, cwd=cwd, timeout=180,
                          stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def position_of(line: str) -> int:
    return json.loads(line)["position"]


def rechain(lines: list[str], start: int = 0) -> list[str]:
    """Recompute every head from line ``start`` on, as a forger who rewrote history would."""
    out = list(lines[:start])
    head = bytes.fromhex(json.loads(lines[start - 1])["head"][2:]) if start else GENESIS_HEAD
    for line in lines[start:]:
        obj = json.loads(line)
        text = body(obj["position"], obj["stream"], obj["version"], obj["topic"], canonical(obj["state"]))
        head = next_head(head, text)
        out.append(with_head(head, text))
    return out
