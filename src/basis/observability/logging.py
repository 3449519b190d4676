"""Structured logs: one JSON object per line (ts, level, logger, msg, job_id in a job's context,
plus any ``extra=`` fields), for the gateway, the worker and the CLI.

    configure_logging("INFO")                 # JSON lines on stderr
    with job_context(job_id):
        log.info("job accepted", extra={"model": "basis-default", "prompt_tokens": 12})
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json as jsonlib
import logging
import sys
import traceback
from collections.abc import Iterator
from contextvars import ContextVar
from typing import IO, Any

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "current_job_id", "job_context"]

_JOB_ID: ContextVar[str | None] = ContextVar("basis_job_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def current_job_id() -> str | None:
    return _JOB_ID.get()


@contextlib.contextmanager
def job_context(job_id: Any) -> Iterator[None]:
    """Tag every record logged inside (this task or thread, and tasks it starts) with ``job_id``."""
    token = _JOB_ID.set(str(job_id) if job_id is not None else None)
    try:
        yield
    finally:
        _JOB_ID.reset(token)


class _JobIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = _JOB_ID.get()
        return True


def _timestamp(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and k != "job_id" and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """ts, level, logger, msg, job_id (when set), extras, then exc/stack when present."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname, "logger": record.name,
                               "msg": record.getMessage()}
        job_id = getattr(record, "job_id", None) or _JOB_ID.get()
        if job_id is not None:
            out["job_id"] = job_id
        for key, value in _extras(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.stack_info:
            out["stack"] = record.stack_info
        return jsonlib.dumps(out, default=_fallback, ensure_ascii=False, separators=(",", ":"))


def _fallback(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)  # UUID, Path, datetime, Decimal-free ints stay ints above


class TextFormatter(logging.Formatter):
    """Human lines for a terminal: time level logger [job] msg key=value…"""

    def format(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", None) or _JOB_ID.get()
        parts = [_timestamp(record), f"{record.levelname:<7}", record.name]
        if job_id:
            parts.append(f"[{job_id}]")
        parts.append(record.getMessage())
        parts += [f"{k}={v}" for k, v in _extras(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return line


def configure_logging(level: int | str = "INFO", json: bool = True, stream: IO[str] | None = None) -> logging.Handler:
    """Replace the root logger's handlers with one stream handler (stderr by default) writing JSON
    lines (or human text with ``json=False``). Safe to call again: it replaces its own handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler.addFilter(_JobIdFilter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)
    return handler
