"""StandardMerkleTree: properties, recorded vectors, and a cross-check against @openzeppelin/merkle-tree."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from basis.domain.merkle import (
    MerkleError,
    StandardMerkleTree,
    leaf_hash,
    receipts_tree,
    rewards_tree,
)

REPO = Path(__file__).resolve().parents[2]
OZ_TREE = REPO / "node_modules" / "@openzeppelin" / "merkle-tree"

# Recorded with @openzeppelin/merkle-tree 1.0.8 (StandardMerkleTree.of(...).root / getProof).
REWARDS_VECTOR = [
    ("0x1111111111111111111111111111111111111111", 5 * 10**18),
    ("0x2222222222222222222222222222222222222222", 25 * 10**17),
    ("0x3333333333333333333333333333333333333333", 1),
]
REWARDS_ROOT = "0xd673f832e8ae578ea16450035956e30f27212b91d6cd26edbef07c90546302ff"
REWARDS_PROOF_0 = ["0x8d00bd8d33bd92e6ade0ba2d87958d59727515200df528502b93c99dd3fa0256"]
RECEIPTS_VECTOR = ["0x" + b * 32 for b in ("ab", "cd", "01", "ef", "02")]
RECEIPTS_ROOT = "0x2bd1dbfafdc3331451e33da329b3bbd576e212431ffb536fbe6e240e3a7530c7"
RECEIPTS_PROOF_2 = [
    "0x451a3cefa96295e2c5ad4c500638abfee673c5538f55943b56f6959b4d69687f",
    "0xaab31689213de3031c47ed902ccd8a9bcf75a19b6ac4596064469dfbe21b6f6e",
]

addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
amounts = st.integers(min_value=0, max_value=2**256 - 1)
hashes = st.binary(min_size=32, max_size=32)


def test_recorded_rewards_vector():
    t = rewards_tree(REWARDS_VECTOR)
    assert t.root_hex == REWARDS_ROOT
    assert t.proof_hex(0) == REWARDS_PROOF_0
    assert t.proof_hex(REWARDS_VECTOR[0]) == REWARDS_PROOF_0


def test_recorded_receipts_vector():
    t = receipts_tree(RECEIPTS_VECTOR)
    assert t.root_hex == RECEIPTS_ROOT
    assert t.proof_hex(2) == RECEIPTS_PROOF_2


def test_leaf_is_double_hashed_abi_encoding():
    h = bytes(range(32))
    assert leaf_hash((h,), ["bytes32"]) == keccak(keccak(h))


def test_single_leaf_root_is_leaf_and_proof_empty():
    t = receipts_tree(["0x" + "aa" * 32])
    assert t.root == leaf_hash(("0x" + "aa" * 32,), ["bytes32"])
    assert t.proof(0) == []


def test_empty_and_bad_inputs_rejected():
    with pytest.raises(MerkleError):
        receipts_tree([])
    with pytest.raises(MerkleError):
        receipts_tree(["0x1234"])
    with pytest.raises(MerkleError):
        rewards_tree([("0x" + "11" * 20, "5")])  # amounts are ints, never text
    t = rewards_tree(REWARDS_VECTOR)
    with pytest.raises(MerkleError):
        t.proof(("0x" + "44" * 20, 1))


def test_dump_load_roundtrip():
    t = rewards_tree(REWARDS_VECTOR)
    again = StandardMerkleTree.load(json.loads(json.dumps(t.dump())))
    assert again.root == t.root
    assert again.proof(1) == t.proof(1)
    bad = t.dump()
    bad["tree"][0] = "0x" + "00" * 32
    with pytest.raises(MerkleError):
        StandardMerkleTree.load(bad)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(addresses, amounts), min_size=1, max_size=40, unique_by=lambda x: x[0]))
def test_every_rewards_proof_verifies(values):
    t = rewards_tree(values)
    for i, v in enumerate(values):
        assert StandardMerkleTree.verify(t.root, ["address", "uint256"], v, t.proof(i))


@settings(max_examples=60, deadline=None)
@given(st.lists(hashes, min_size=1, max_size=64, unique=True), st.data())
def test_receipts_proofs_verify_and_reject_tampering(values, data):
    t = receipts_tree(values)
    i = data.draw(st.integers(0, len(values) - 1))
    proof = t.proof(i)
    assert StandardMerkleTree.verify(t.root, ["bytes32"], (values[i],), proof)
    other = data.draw(hashes.filter(lambda h: h not in values))
    assert not StandardMerkleTree.verify(t.root, ["bytes32"], (other,), proof)
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1))
        tampered = list(proof)
        tampered[j] = bytes([tampered[j][0] ^ 1]) + tampered[j][1:]
        assert not StandardMerkleTree.verify(t.root, ["bytes32"], (values[i],), tampered)


@settings(max_examples=30, deadline=None)
@given(st.lists(hashes, min_size=1, max_size=20, unique=True), st.randoms())
def test_root_independent_of_input_order(values, rnd):
    shuffled = list(values)
    rnd.shuffle(shuffled)
    assert receipts_tree(values).root == receipts_tree(shuffled).root


def test_matches_openzeppelin_js_library():
    node = shutil.which("node")
    if node is None or not OZ_TREE.exists():
        pytest.skip(
            "node or node_modules/@openzeppelin/merkle-tree absent (run `npm ci`); recorded vectors still ran"
        )
    rnd = random.Random(20240601)
    cases = []
    for n in (1, 2, 3, 4, 5, 7, 8, 13, 32, 33):
        rewards = [
            ("0x" + rnd.randbytes(20).hex(), rnd.getrandbits(rnd.choice((8, 64, 256)))) for _ in range(n)
        ]
        receipts = ["0x" + rnd.randbytes(32).hex() for _ in range(n)]
        cases.append({"types": ["address", "uint256"], "values": [[a, str(x)] for a, x in rewards]})
        cases.append({"types": ["bytes32"], "values": [[h] for h in receipts]})
    script = (
        "const {StandardMerkleTree}=require('@openzeppelin/merkle-tree');"
        "const cases=JSON.parse(require('fs').readFileSync(0,'utf8'));"
        "process.stdout.write(JSON.stringify(cases.map(c=>StandardMerkleTree.of(c.values,c.types).dump())));"
    )
    out = subprocess.run(
        [node, "-e", script],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        timeout=60,
    )
    dumps = json.loads(out.stdout)
    for case, js in zip(cases, dumps, strict=True):
        values = [
            tuple(int(x) if t == "uint256" else x for x, t in zip(v, case["types"], strict=True))
            for v in case["values"]
        ]
        py = StandardMerkleTree.of(values, case["types"]).dump()
        assert py["tree"] == js["tree"]
        assert [v["treeIndex"] for v in py["values"]] == [v["treeIndex"] for v in js["values"]]
        # And the JS dump loads and validates in Python.
        assert StandardMerkleTree.load(js).root == bytes.fromhex(js["tree"][0][2:])
