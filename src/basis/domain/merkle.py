"""OpenZeppelin StandardMerkleTree in pure Python (DESIGN 1.5).

Same layout as `@openzeppelin/merkle-tree` (format ``standard-v1``):

- leaf = ``keccak256(bytes.concat(keccak256(abi.encode(values...))))``
- leaves sorted by hash, stored at the end of a flat array ``tree`` in reverse order
- each node ``tree[i] = keccak256(sort(tree[2i+1], tree[2i+2]))`` (pairs hashed in sorted order)
- proofs verify with OpenZeppelin's ``MerkleProof.verify``.

Receipts tree: ``StandardMerkleTree.of([(receipt_hash,), ...], ["bytes32"])``.
Rewards tree: ``StandardMerkleTree.of([(worker, cumulative), ...], ["address", "uint256"])``.

Pure: eth_abi + eth_hash only; no web3, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

FORMAT = "standard-v1"

RECEIPTS_ENCODING: tuple[str, ...] = ("bytes32",)
REWARDS_ENCODING: tuple[str, ...] = ("address", "uint256")


class MerkleError(ValueError):
    pass


def _to_bytes32(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        b = bytes(value)
    elif isinstance(value, str):
        h = value[2:] if value.startswith(("0x", "0X")) else value
        try:
            b = bytes.fromhex(h)
        except ValueError as exc:
            raise MerkleError(f"not hex: {value!r}") from exc
    else:
        raise MerkleError(f"bytes32 value must be bytes or hex, got {type(value).__name__}")
    if len(b) != 32:
        raise MerkleError(f"bytes32 value must be 32 bytes, got {len(b)}")
    return b


def _normalize(value: Sequence[Any], encoding: Sequence[str]) -> tuple[Any, ...]:
    if len(value) != len(encoding):
        raise MerkleError(f"value has {len(value)} fields, encoding has {len(encoding)}")
    out: list[Any] = []
    for v, t in zip(value, encoding, strict=True):
        if t == "address":
            out.append(to_checksum_address(v))
        elif t == "bytes32":
            out.append(_to_bytes32(v))
        elif t.startswith(("uint", "int")):
            if isinstance(v, bool) or not isinstance(v, int):
                raise MerkleError(f"{t} value must be int, got {type(v).__name__}")
            out.append(v)
        else:
            out.append(v)
    return tuple(out)


def hash_pair(a: bytes, b: bytes) -> bytes:
    """OpenZeppelin's commutative pair hash."""
    return keccak(a + b) if a <= b else keccak(b + a)


def leaf_hash(value: Sequence[Any], encoding: Sequence[str]) -> bytes:
    """``keccak256(bytes.concat(keccak256(abi.encode(value...))))``."""
    return keccak(keccak(abi_encode(list(encoding), list(_normalize(value, encoding)))))


def process_proof(leaf: bytes, proof: Sequence[bytes]) -> bytes:
    node = leaf
    for sibling in proof:
        node = hash_pair(node, _to_bytes32(sibling))
    return node


@dataclass(frozen=True)
class _Entry:
    value: tuple[Any, ...]
    tree_index: int


class StandardMerkleTree:
    """Build with :meth:`of`; read :attr:`root`; prove with :meth:`proof`; check with :meth:`verify`."""

    def __init__(self, tree: list[bytes], entries: list[_Entry], encoding: tuple[str, ...]):
        self._tree = tree
        self._entries = entries
        self.leaf_encoding = encoding
        self._index_by_hash = {tree[e.tree_index]: i for i, e in enumerate(entries)}

    @classmethod
    def of(cls, values: Sequence[Sequence[Any]], leaf_encoding: Sequence[str]) -> StandardMerkleTree:
        encoding = tuple(leaf_encoding)
        if not values:
            raise MerkleError("Expected non-zero number of leaves")
        normalized = [_normalize(v, encoding) for v in values]
        hashed = sorted(((leaf_hash(v, encoding), i) for i, v in enumerate(normalized)), key=lambda x: x[0])
        n = len(hashed)
        size = 2 * n - 1
        tree: list[bytes] = [b""] * size
        for j, (h, _) in enumerate(hashed):
            tree[size - 1 - j] = h
        for i in range(size - 1 - n, -1, -1):
            tree[i] = hash_pair(tree[2 * i + 1], tree[2 * i + 2])
        tree_index_of = {orig: size - 1 - j for j, (_, orig) in enumerate(hashed)}
        entries = [_Entry(normalized[i], tree_index_of[i]) for i in range(n)]
        return cls(tree, entries, encoding)

    # ---------------------------------------------------------------- reading

    @property
    def root(self) -> bytes:
        return self._tree[0]

    @property
    def root_hex(self) -> str:
        return "0x" + self.root.hex()

    def __len__(self) -> int:
        return len(self._entries)

    def values(self) -> list[tuple[Any, ...]]:
        """Values in the order they were given (normalized: checksum addresses, bytes32 as bytes)."""
        return [e.value for e in self._entries]

    def leaf_index(self, value: Sequence[Any]) -> int:
        """Position (in input order) of ``value``; raises MerkleError when absent."""
        h = leaf_hash(value, self.leaf_encoding)
        try:
            return self._index_by_hash[h]
        except KeyError:
            raise MerkleError("Leaf is not in tree") from None

    def tree_index(self, index: int) -> int:
        return self._entries[index].tree_index

    def proof(self, index_or_value: int | Sequence[Any]) -> list[bytes]:
        """Sibling hashes from the leaf up, for ``MerkleProof.verify``."""
        index = index_or_value if isinstance(index_or_value, int) else self.leaf_index(index_or_value)
        if not 0 <= index < len(self._entries):
            raise MerkleError(f"index {index} out of range")
        i = self._entries[index].tree_index
        out: list[bytes] = []
        while i > 0:
            sibling = i + 1 if i % 2 == 1 else i - 1
            out.append(self._tree[sibling])
            i = (i - 1) // 2
        return out

    def proof_hex(self, index_or_value: int | Sequence[Any]) -> list[str]:
        return ["0x" + p.hex() for p in self.proof(index_or_value)]

    @staticmethod
    def verify(
        root: bytes | str, leaf_encoding: Sequence[str], value: Sequence[Any], proof: Sequence[bytes | str]
    ) -> bool:
        return process_proof(leaf_hash(value, leaf_encoding), [_to_bytes32(p) for p in proof]) == _to_bytes32(
            root
        )

    # --------------------------------------------------------------- dumping

    def dump(self) -> dict[str, Any]:
        """The ``standard-v1`` JSON shape of ``@openzeppelin/merkle-tree`` (values as hex/decimal text)."""

        def js(v: Any, t: str) -> Any:
            if t == "bytes32":
                return "0x" + v.hex()
            if t.startswith(("uint", "int")):
                return str(v)
            return v

        return {
            "format": FORMAT,
            "leafEncoding": list(self.leaf_encoding),
            "tree": ["0x" + h.hex() for h in self._tree],
            "values": [
                {
                    "value": [js(v, t) for v, t in zip(e.value, self.leaf_encoding, strict=True)],
                    "treeIndex": e.tree_index,
                }
                for e in self._entries
            ],
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> StandardMerkleTree:
        if data.get("format") != FORMAT:
            raise MerkleError(f"unknown format {data.get('format')!r}")
        encoding = tuple(data["leafEncoding"])
        tree = [_to_bytes32(h) for h in data["tree"]]
        entries = []
        for item in data["values"]:
            value = _normalize(
                [
                    int(v) if t.startswith(("uint", "int")) else v
                    for v, t in zip(item["value"], encoding, strict=True)
                ],
                encoding,
            )
            entries.append(_Entry(value, int(item["treeIndex"])))
        t = cls(tree, entries, encoding)
        t.validate()
        return t

    def validate(self) -> None:
        """Recheck every node and every leaf; raises MerkleError on any mismatch."""
        size = len(self._tree)
        for i in range(size):
            left = 2 * i + 1
            if left < size and hash_pair(self._tree[left], self._tree[left + 1]) != self._tree[i]:
                raise MerkleError(f"node {i} does not hash its children")
        for e in self._entries:
            if leaf_hash(e.value, self.leaf_encoding) != self._tree[e.tree_index]:
                raise MerkleError("leaf does not match its value")


def receipts_tree(receipt_hashes: Sequence[bytes | str]) -> StandardMerkleTree:
    """Tree of ``(bytes32 receipt_hash)`` leaves (hashes as raw bytes or ``0x`` hex)."""
    return StandardMerkleTree.of([(h,) for h in receipt_hashes], RECEIPTS_ENCODING)


def rewards_tree(cumulative: Sequence[tuple[str, int]]) -> StandardMerkleTree:
    """Tree of ``(address worker, uint256 cumulative_reward)`` leaves."""
    return StandardMerkleTree.of(list(cumulative), REWARDS_ENCODING)
