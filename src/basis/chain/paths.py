"""Where the chain code finds the repository, node_modules, the toolchain and BASIS_HOME."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ARTIFACTS_DIR = PACKAGE_DIR / "artifacts"


class ToolchainMissing(RuntimeError):
    """node_modules (solc-js, Foundry) is not installed: run `npm ci` in the repository."""


def repo_root() -> Path | None:
    """The source checkout holding contracts/ (None for an installed wheel without sources)."""
    env = os.environ.get("BASIS_REPO_ROOT")
    if env:
        return Path(env).resolve()
    for parent in PACKAGE_DIR.parents:
        if (parent / "contracts" / "src").is_dir() and (parent / "foundry.toml").is_file():
            return parent
    return None


def node_modules() -> Path | None:
    """$BASIS_NODE_MODULES, else <repo>/node_modules; None when absent."""
    env = os.environ.get("BASIS_NODE_MODULES")
    if env:
        p = Path(env).resolve()
        return p if p.is_dir() else None
    root = repo_root()
    if root is not None and (root / "node_modules").is_dir():
        return root / "node_modules"
    return None


def require_node_modules() -> Path:
    nm = node_modules()
    if nm is None:
        raise ToolchainMissing(
            "node_modules not found: run `npm ci` at the repository root or set BASIS_NODE_MODULES"
        )
    return nm


def foundry_binary(tool: str) -> Path:
    """The real Foundry binary (never the node_modules/.bin wrapper, which exits 0 on failures)."""
    path = require_node_modules() / "@foundry-rs" / f"{tool}-linux-amd64" / "bin" / tool
    if not path.is_file():
        raise ToolchainMissing(f"{path} missing: run `npm ci`")
    return path


def solc_shim() -> Path:
    root = repo_root()
    if root is None or not (root / "scripts" / "solc").is_file():
        raise ToolchainMissing("scripts/solc shim not found (compiling needs a source checkout)")
    return root / "scripts" / "solc"


def basis_home() -> Path:
    """The same data directory as the ledger: $BASIS_HOME, else ./.basis."""
    from basis.config import Settings

    return Settings().home


def default_manifest_path() -> Path:
    return basis_home() / "deployment.json"
