"""On-disk cache of what a GGUF's vocabulary costs seconds to compute: its per-id byte tables
(two ``llama_token_to_piece`` calls per id, ~1 s for Gemma 3's 262k ids) and its binding hash.

A gateway restarted after a crash computed the same tables from the same file minutes ago; reading
them back keeps that CPU off its restart. Entries are keyed by the file's identity (resolved path,
size, mtime, inode), the llama-cpp-python version that rendered the pieces and the Python version
(marshal's format), the way Python keys its ``.pyc`` files: hashing the file itself would read
hundreds of MB on every start. A missing,
stale or unreadable entry is recomputed, never trusted; a cache that cannot be written is skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import sys
from pathlib import Path
from typing import Any

_FORMAT = "basis-vocab-cache-v1"


def cache_dir() -> Path:
    """``$BASIS_VOCAB_CACHE``, else beside the assembled default model (``basis_home()``)."""
    env = os.environ.get("BASIS_VOCAB_CACHE")
    if env:
        return Path(env).expanduser()
    from basis.models.gguf import basis_home

    return basis_home() / "vocab-cache"


def file_key(path: str | os.PathLike[str]) -> str | None:
    """The cache key of a GGUF file as it is now; None if it cannot be stat'ed."""
    try:
        resolved = str(Path(path).resolve())
        st = os.stat(resolved)
    except OSError:
        return None
    try:
        from importlib.metadata import version

        renderer = version("llama_cpp_python")
    except Exception:  # an unknown renderer version still keys consistently
        renderer = "unknown"
    ident = f"{_FORMAT}\n{sys.version}\n{resolved}\n{st.st_size}\n{st.st_mtime_ns}\n{st.st_ino}\n{renderer}"
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def load(key: str | None, kind: str) -> Any:
    """The cached ``kind`` ("tables" or "binding") under ``key``, or None."""
    if key is None:
        return None
    try:
        data = (cache_dir() / f"{key}.{kind}").read_bytes()
        value = marshal.loads(data)
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(value, dict) or value.get("format") != _FORMAT or value.get("key") != key:
        return None
    return value.get("value")


def store(key: str | None, kind: str, value: Any) -> None:
    """Write atomically (tmp + rename), so a reader never sees half an entry; errors are ignored."""
    if key is None:
        return
    directory = cache_dir()
    tmp = directory / f".{key}.{kind}.{os.getpid()}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(marshal.dumps({"format": _FORMAT, "key": key, "value": value}))
        os.replace(tmp, directory / f"{key}.{kind}")
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
