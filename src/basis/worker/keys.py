"""Worker key files: a text file holding one 0x-hex private key (its address earns rewards)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from eth_account import Account

_KEY_RE = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


def load_key(path: str | os.PathLike[str]) -> str:
    text = Path(path).read_text().strip()
    if not _KEY_RE.match(text):
        raise ValueError(f"{path}: expected a 0x-hex private key (64 hex digits)")
    return text if text.startswith("0x") else "0x" + text


def new_key_file(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Create a new key, write it with mode 0600 (never overwrite). Returns (key, address)."""
    p = Path(path)
    acct = Account.create()
    key = "0x" + bytes(acct.key).hex().removeprefix("0x")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.chmod(p, 0o600)
    return key, acct.address
