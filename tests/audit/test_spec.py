"""docs/audit.md is enough to verify an export without Basis: its standard-library verifier, run
as an outsider would, agrees with the exporter and refuses what the audit refuses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from web3 import Web3

from basis.ledger.export import GENESIS_HEX, export
from basis.ledger.service import Ledger
from basis.settlement.chain import TOPICS
from tests.audit.helpers import fill, position_of, read_lines, write_lines

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def verifier(tmp_path: Path) -> Path:
    text = DOC.read_text()
    code = re.search(r"<!-- verify_export.py -->\n```python\n(.*?)```", text, re.S).group(1)
    path = tmp_path / "verify_export.py"
    path.write_text(code)
    return path


def run(script: Path, *args: str) -> subprocess.CompletedProcess:
    # -I: isolated mode, so nothing of Basis is importable
    return subprocess.run([sys.executable, "-I", str(script), *args], capture_output=True, text=True, timeout=60)


def test_the_documented_verifier_agrees_with_the_exporter(settings, tmp_path):
    ledger = Ledger(settings)
    fill(ledger)
    path = tmp_path / "ledger.jsonl"
    with open(path, "w") as fh:
        point = export(ledger.store, fh)
    ledger.close()
    script = verifier(tmp_path)
    lines = read_lines(path)
    mid = json.loads(lines[len(lines) // 2])
    proc = run(script, str(path), str(mid["position"]), mid["head"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"chain ok: {len(lines)} lines through position {point.position}, "
                                   f"head {point.head_hex}")
    altered = [x.replace('"prompt_tokens":12', '"prompt_tokens":13') for x in lines]
    bad = next(position_of(x) for x, y in zip(altered, lines, strict=True) if x != y)
    proc = run(script, str(write_lines(tmp_path / "bad.jsonl", altered)))
    assert proc.returncode == 1 and proc.stderr.strip() == f"position {bad}: the head does not follow"
    proc = run(script, str(path), str(mid["position"]), "0x" + "00" * 32)
    assert proc.returncode == 1 and "anchored on chain differs" in proc.stderr


def test_the_documented_constants_are_the_code_s():
    text = DOC.read_text()
    assert f"= {GENESIS_HEX}" in text
    assert "topic0 = 0x" + TOPICS["LedgerAnchored"].hex().removeprefix("0x") in text
    signature = "settle(bytes32,uint256,uint256,uint256,bytes32,bytes32,uint64,bytes32)"
    assert f"selector `0x{Web3.keccak(text=signature)[:4].hex().removeprefix('0x')}`" in text
