"""Where `basis audit --events` runs with one process alone: each phase's start, end and process CPU
on each of its processes, and the CPU-seconds run alone after the reading (the projection's pages
after the first process began to wait for it, the part of its closing after that, and the checks).

    PYTHONPATH=src python scripts/audit_events_timeline.py HOME EXPORT.jsonl [LOG]

HOME: the ledger's home (its operator key names the signer); the functions are wrapped here, so the
forked processes log too (one line per call, appended to LOG)."""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

T0 = time.time()


def _wrap(owner: Any, attr: str, name: str, log: str) -> None:
    original = getattr(owner, attr)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t, c = time.time(), time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            with open(log, "a") as fh:
                fh.write(f"{os.getpid()} {name} {t - T0:.3f} {time.time() - T0:.3f} {time.process_time() - c:.3f}\n")

    setattr(owner, attr, timed)


def main() -> int:
    import basis.cli.audit_events as audit_events
    import basis.ledger.audit as audit
    import basis.ledger.export_replay as export_replay
    import basis.ledger.receipt_audit as receipt_audit
    import basis.ledger.replay as replay
    from basis.config import Settings
    from basis.domain.signing import ReceiptSigner

    home, export = sys.argv[1], Path(sys.argv[2])
    log = sys.argv[3] if len(sys.argv) > 3 else "/tmp/audit-events-timeline.log"
    open(log, "w").close()
    for owner, attr, name in [
            (replay, "index_streams", "index_streams"), (replay, "check_streams", "check_streams"),
            (audit_events, "read_export", "read_export"), (audit_events, "audit", "audit"),
            (export_replay.ExportReplay, "account_views", "account_views"),
            (export_replay.ExportReplay, "finish", "finish"),
            (export_replay._PageProjection, "project", "projection.page"),
            (export_replay._PageProjection, "finish", "projection.finish"),
            (receipt_audit, "_check_in_worker", "receipts.page"),
            (audit, "_check_money", "_check_money"), (audit, "_check_key_caps", "_check_key_caps")]:
        _wrap(owner, attr, name, log)
    settings = Settings(home=Path(home), database_url=None)
    report, summary = audit_events.audit_events([export], signer=ReceiptSigner(settings.operator_key()).address)
    print(f"ok={report.ok} events={summary['events']} wall={time.time() - T0:.2f} s")
    with open(log) as fh:
        rows = [(r[0], r[1], float(r[2]), float(r[3]), float(r[4])) for r in (line.split() for line in fh)]
    for pid, name, start, end, cpu in sorted((r for r in rows if r[1] not in ("projection.page", "receipts.page")),
                                             key=lambda r: r[2]):
        print(f"{pid} {name:20s} {start:8.2f} {end:8.2f}  cpu {cpu:6.2f}")
    for kind in ("projection.page", "receipts.page"):
        pages = [r for r in rows if r[1] == kind]
        if pages:
            print(f"{kind}: {len(pages)} pages, {min(r[2] for r in pages):.2f}-{max(r[3] for r in pages):.2f}, "
                  f"cpu {sum(r[4] for r in pages):.2f}")

    def first(name: str) -> tuple[str, str, float, float, float]:
        return next(r for r in rows if r[1] == name)

    waits, read_end = first("account_views")[2], first("index_streams")[2]
    late = [r for r in rows if r[1] == "projection.page" and r[3] > read_end]
    alone_pages = sum(r[4] for r in rows if r[1] == "projection.page" and r[3] > waits)
    _, _, fs, fe, fcpu = first("projection.finish")
    alone_finish = fcpu * max(0.0, fe - max(fs, waits)) / max(fe - fs, 1e-9)
    checks = first("audit")[4]
    print(f"alone after the reading: projection pages {alone_pages:.2f} + its closing {alone_finish:.2f} + checks "
          f"{checks:.2f} = {alone_pages + alone_finish + checks:.2f} CPU-s; pages projected after the reading ended: "
          f"{len(late)}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
