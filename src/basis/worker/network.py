"""What a worker reads from the gateway over HTTP: its base URL and its published network facts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit


def http_base(gateway: str) -> str:
    """``ws://host:port/v1/workers/connect`` or ``http://host:port`` -> ``http://host:port``."""
    parts = urlsplit(gateway)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def fetch_network(gateway: str, timeout: float = 30.0) -> dict[str, Any]:
    import httpx

    resp = httpx.get(f"{http_base(gateway)}/v1/network", timeout=timeout)
    resp.raise_for_status()
    return resp.json()


def worker_home() -> Path:
    """Where the worker keeps its store: ``BASIS_WORKER_HOME``, else ``$BASIS_HOME/worker``."""
    explicit = os.environ.get("BASIS_WORKER_HOME")
    return Path(explicit) if explicit else Path(os.environ.get("BASIS_HOME", ".basis")) / "worker"
