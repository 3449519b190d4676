"""Compile contracts/src with solc-js (through scripts/solc) via py-solc-x.

Artifacts (ABI, bytecode, compiler version, source hash) are cached by source hash under
``$BASIS_HOME/cache/solc/`` and also SHIPPED in the package (``basis/chain/artifacts/*.json``),
so deploying needs neither node nor the sources. ``basis contracts compile --write`` (or
``python -m basis.chain.compiler --write``) regenerates the shipped files; a test recompiles and
compares them, so a contract change without regenerating fails CI.

Settings mirror foundry.toml (optimizer 10000 runs, EVM cancun, no metadata hash), so forge
and Python build the same bytecode.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basis.chain.paths import ARTIFACTS_DIR, basis_home, repo_root, require_node_modules, solc_shim

CONTRACTS = ("BasisToken", "CreditVault", "RewardDistributor")

SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 10_000},
    "evmVersion": "cancun",
    "metadata": {"bytecodeHash": "none"},
    "remappings": [
        "@openzeppelin/contracts/=node_modules/@openzeppelin/contracts/",
    ],
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}


class CompileError(RuntimeError):
    pass


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str  # 0x-prefixed creation code
    deployed_bytecode: str
    compiler_version: str
    source_hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "contractName": self.name,
            "abi": self.abi,
            "bytecode": self.bytecode,
            "deployedBytecode": self.deployed_bytecode,
            "compiler": self.compiler_version,
            "sourceHash": self.source_hash,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Artifact:
        return cls(
            data["contractName"],
            data["abi"],
            data["bytecode"],
            data["deployedBytecode"],
            data["compiler"],
            data["sourceHash"],
        )


def _sources(root: Path) -> dict[str, str]:
    src = root / "contracts" / "src"
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(src.rglob("*.sol"))}


def _package_version(nm: Path, name: str) -> str:
    return json.loads((nm / name / "package.json").read_text())["version"]


def source_hash(root: Path | None = None) -> str:
    """sha256 over our sources, the compile settings and the pinned solc/OpenZeppelin versions."""
    root = root or _root()
    nm = require_node_modules()
    h = hashlib.sha256()
    payload = {
        "sources": _sources(root),
        "settings": SETTINGS,
        "solc": _package_version(nm, "solc"),
        "openzeppelin": _package_version(nm, "@openzeppelin/contracts"),
    }
    h.update(json.dumps(payload, sort_keys=True).encode())
    return h.hexdigest()


def _root() -> Path:
    root = repo_root()
    if root is None:
        raise CompileError("contracts/ sources not found: compiling needs the source checkout")
    return root


def compile_contracts(*, use_cache: bool = True, cache_dir: Path | None = None) -> dict[str, Artifact]:
    """Compile (or load from cache) every contract in CONTRACTS."""
    import solcx  # imported lazily: the runtime path only loads shipped artifacts

    root = _root()
    digest = source_hash(root)
    cache = (cache_dir or basis_home() / "cache" / "solc") / f"{digest}.json"
    if use_cache and cache.is_file():
        data = json.loads(cache.read_text())
        return {n: Artifact.from_json(a) for n, a in data.items()}

    shim = solc_shim()
    sources = {path: {"content": text} for path, text in _sources(root).items()}
    input_json = {"language": "Solidity", "sources": sources, "settings": SETTINGS}
    try:
        out = solcx.compile_standard(
            input_json, solc_binary=shim, base_path=str(root), allow_paths=[str(root)]
        )
    except solcx.exceptions.SolcError as exc:
        raise CompileError(str(exc)) from exc
    errors = [e for e in out.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompileError("\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors))
    version = str(solcx.wrapper.get_version_str_from_solc_binary(shim))
    artifacts: dict[str, Artifact] = {}
    for path, contracts in out["contracts"].items():
        if not path.startswith("contracts/src/"):
            continue
        for name, c in contracts.items():
            if name in CONTRACTS:
                artifacts[name] = Artifact(
                    name=name,
                    abi=c["abi"],
                    bytecode="0x" + c["evm"]["bytecode"]["object"],
                    deployed_bytecode="0x" + c["evm"]["deployedBytecode"]["object"],
                    compiler_version=version,
                    source_hash=digest,
                )
    missing = set(CONTRACTS) - set(artifacts)
    if missing:
        raise CompileError(f"contracts missing from compiler output: {sorted(missing)}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({n: a.to_json() for n, a in artifacts.items()}))
    tmp.replace(cache)
    return artifacts


def write_shipped(artifacts: dict[str, Artifact], directory: Path = ARTIFACTS_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, art in sorted(artifacts.items()):
        p = directory / f"{name}.json"
        p.write_text(json.dumps(art.to_json(), indent=1, sort_keys=True) + "\n")
        written.append(p)
    return written


def load_shipped(directory: Path = ARTIFACTS_DIR) -> dict[str, Artifact]:
    """The artifacts shipped inside the package (no node, no sources needed)."""
    out = {}
    for name in CONTRACTS:
        p = directory / f"{name}.json"
        if not p.is_file():
            raise CompileError(f"shipped artifact {p} missing: run `basis contracts compile --write`")
        out[name] = Artifact.from_json(json.loads(p.read_text()))
    return out


def load_artifacts() -> dict[str, Artifact]:
    """Shipped artifacts; the deploy path uses these."""
    return load_shipped()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    arts = compile_contracts(use_cache="--no-cache" not in args)
    if "--write" in args:
        for p in write_shipped(arts):
            print(p)
    else:
        for n, a in sorted(arts.items()):
            print(n, a.compiler_version, len(a.bytecode) // 2 - 1, "bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
