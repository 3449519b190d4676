"""Thin typed wrappers over the deployed Basis contracts (web3.py), with event and error decoding.

Transactions are signed locally (eth-account) and sent raw, so any RPC works. A call that would
revert raises :class:`ChainRevert` carrying the custom error's name and arguments (decoded from
the ABIs), e.g. ``ChainRevert('BatchAlreadyPosted', {'batchId': b'...'})``; nothing is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError

from basis.chain.compiler import Artifact, load_artifacts
from basis.chain.vouchers import Withdrawal

_STANDARD_ERRORS = {
    bytes.fromhex("08c379a0"): ("Error", ["string"], ["message"]),
    bytes.fromhex("4e487b71"): ("Panic", ["uint256"], ["code"]),
}


class ChainRevert(RuntimeError):
    """A contract call reverted; ``name``/``args`` are the decoded custom error."""

    def __init__(self, name: str, args: dict[str, Any], data: bytes = b""):
        super().__init__(f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})")
        self.name = name
        self.args_ = args
        self.data = data

    @property
    def error_args(self) -> dict[str, Any]:
        return self.args_


class TransactionFailed(RuntimeError):
    def __init__(self, receipt: Any):
        super().__init__(f"transaction {receipt['transactionHash'].hex()} reverted (status 0)")
        self.receipt = receipt


@dataclass(frozen=True)
class DecodedEvent:
    name: str
    address: str
    args: dict[str, Any]
    log_index: int


@dataclass(frozen=True)
class TxResult:
    tx_hash: str
    block_number: int
    gas_used: int
    events: list[DecodedEvent]
    receipt: Any

    def event(self, name: str) -> DecodedEvent:
        found = [e for e in self.events if e.name == name]
        if len(found) != 1:
            raise LookupError(f"expected one {name} event, found {len(found)}")
        return found[0]


def _abi_type(inp: dict[str, Any]) -> str:
    t = inp["type"]
    if t.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in inp["components"]) + ")" + t[5:]
    return t


class ErrorDecoder:
    def __init__(self, abis: Sequence[list[dict[str, Any]]]):
        self._by_selector: dict[bytes, tuple[str, list[str], list[str]]] = dict(_STANDARD_ERRORS)
        for abi in abis:
            for item in abi:
                if item.get("type") != "error":
                    continue
                types = [_abi_type(i) for i in item["inputs"]]
                sig = f"{item['name']}({','.join(types)})"
                self._by_selector[function_signature_to_4byte_selector(sig)] = (
                    item["name"],
                    types,
                    [i["name"] for i in item["inputs"]],
                )

    def decode(self, data: bytes) -> ChainRevert:
        if len(data) < 4 or data[:4] not in self._by_selector:
            return ChainRevert("UnknownRevert", {"data": "0x" + data.hex()}, data)
        name, types, names = self._by_selector[data[:4]]
        values = abi_decode(types, data[4:]) if types else ()
        return ChainRevert(name, dict(zip(names, values, strict=True)), data)


def _revert_data(exc: Exception) -> bytes:
    data = getattr(exc, "data", None)
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        return bytes.fromhex(data[2:])
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    return b""


class Sender:
    """Signs and sends transactions from one local key."""

    def __init__(self, w3: Web3, private_key: str | bytes, decoder: ErrorDecoder | None = None):
        self.w3 = w3
        self.account: LocalAccount = Account.from_key(private_key)
        self.decoder = decoder or ErrorDecoder([])
        self._chain_id: int | None = None

    @property
    def address(self) -> str:
        return self.account.address

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    def _base_tx(self) -> dict[str, Any]:
        return {
            "from": self.address,
            "nonce": self.w3.eth.get_transaction_count(self.address, "pending"),
            "chainId": self.chain_id,
        }

    def transact(self, fn: Any, decode: tuple[Contract, ...] = ()) -> TxResult:
        """Simulate (raising ChainRevert), then sign, send and await ``fn`` (bound call or constructor)."""
        try:
            tx = fn.build_transaction(self._base_tx())
        except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
            raise self.decoder.decode(_revert_data(exc)) from exc
        signed = self.account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
        if receipt["status"] != 1:
            raise TransactionFailed(receipt)
        events = decode_events(receipt, decode)
        return TxResult(
            "0x" + bytes(tx_hash).hex(), int(receipt["blockNumber"]), int(receipt["gasUsed"]), events, receipt
        )


def decode_events(receipt: Any, contracts: Sequence[Contract]) -> list[DecodedEvent]:
    """Every log of ``receipt`` emitted by one of ``contracts``, decoded by its ABI."""
    by_address = {to_checksum_address(c.address): c for c in contracts}
    out: list[DecodedEvent] = []
    for log in receipt["logs"]:
        contract = by_address.get(to_checksum_address(log["address"]))
        if contract is None or not log["topics"]:
            continue
        topic0 = HexBytes(log["topics"][0])
        for ev_abi in (i for i in contract.abi if i.get("type") == "event"):
            ev = contract.events[ev_abi["name"]]()
            sig = f"{ev_abi['name']}({','.join(_abi_type(i) for i in ev_abi['inputs'])})"
            if Web3.keccak(text=sig) != topic0:
                continue
            decoded = ev.process_log(log)
            out.append(
                DecodedEvent(
                    ev_abi["name"],
                    to_checksum_address(log["address"]),
                    dict(decoded["args"]),
                    int(log["logIndex"]),
                )
            )
            break
    return sorted(out, key=lambda e: e.log_index)


def _b32(value: bytes | str) -> bytes:
    b = (
        bytes.fromhex(value[2:] if value.startswith("0x") else value)
        if isinstance(value, str)
        else bytes(value)
    )
    if len(b) != 32:
        raise ValueError("expected 32 bytes")
    return b


class BasisContracts:
    """The token, vault and distributor bound to one web3 connection."""

    def __init__(
        self,
        w3: Web3,
        *,
        token: str,
        vault: str,
        distributor: str,
        artifacts: dict[str, Artifact] | None = None,
    ):
        arts = artifacts or load_artifacts()
        self.w3 = w3
        self.token = w3.eth.contract(address=to_checksum_address(token), abi=arts["BasisToken"].abi)
        self.vault = w3.eth.contract(address=to_checksum_address(vault), abi=arts["CreditVault"].abi)
        self.distributor = w3.eth.contract(
            address=to_checksum_address(distributor), abi=arts["RewardDistributor"].abi
        )
        self.decoder = ErrorDecoder([a.abi for a in arts.values()])
        self._all = (self.token, self.vault, self.distributor)

    @classmethod
    def from_manifest(cls, w3: Web3, manifest: dict[str, Any]) -> BasisContracts:
        c = manifest["contracts"]
        return cls(
            w3,
            token=c["token"]["address"],
            vault=c["vault"]["address"],
            distributor=c["distributor"]["address"],
        )

    def sender(self, private_key: str | bytes) -> Sender:
        return Sender(self.w3, private_key, self.decoder)

    def _send(self, sender: Sender, fn: Any) -> TxResult:
        return sender.transact(fn, self._all)

    def _call(self, fn: Any) -> Any:
        try:
            return fn.call()
        except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
            raise self.decoder.decode(_revert_data(exc)) from exc

    # --------------------------------------------------------------- token
    def balance_of(self, address: str) -> int:
        return int(self.token.functions.balanceOf(to_checksum_address(address)).call())

    def approve(self, sender: Sender, spender: str, amount: int) -> TxResult:
        return self._send(sender, self.token.functions.approve(to_checksum_address(spender), amount))

    def mint(self, sender: Sender, to: str, amount: int) -> TxResult:
        """Stand-in token only (owner)."""
        return self._send(sender, self.token.functions.mint(to_checksum_address(to), amount))

    # --------------------------------------------------------------- vault
    def deposit(self, sender: Sender, amount: int, account: bytes, *, approve: bool = True) -> TxResult:
        """Deposit ``amount`` credited to ``account`` (bytes32, see basis.domain.account_id)."""
        if approve:
            allowance = int(self.token.functions.allowance(sender.address, self.vault.address).call())
            if allowance < amount:
                self.approve(sender, self.vault.address, amount)
        return self._send(sender, self.vault.functions.deposit(amount, _b32(account)))

    def settle(
        self,
        sender: Sender,
        *,
        batch_id: bytes,
        to_distributor: int,
        to_treasury: int,
        reward_top_up: int,
        rewards_root: bytes,
        receipts_root: bytes,
        ledger_position: int,
        ledger_head: bytes,
    ) -> TxResult:
        """Operator: settle one batch, post its roots and anchor the ledger in one transaction."""
        return self._send(
            sender,
            self.vault.functions.settle(
                _b32(batch_id),
                to_distributor,
                to_treasury,
                reward_top_up,
                _b32(rewards_root),
                _b32(receipts_root),
                ledger_position,
                _b32(ledger_head),
            ),
        )

    def withdraw(self, sender: Sender, voucher: Withdrawal, signature: bytes) -> TxResult:
        return self._send(
            sender,
            self.vault.functions.withdraw(
                voucher.account,
                voucher.recipient,
                voucher.amount,
                voucher.nonce,
                voucher.expiry,
                bytes(signature),
            ),
        )

    def nonce_used(self, nonce: int) -> bool:
        return bool(self.vault.functions.nonceUsed(nonce).call())

    def hash_withdrawal(self, voucher: Withdrawal) -> bytes:
        return bytes(
            self.vault.functions.hashWithdrawal(
                voucher.account, voucher.recipient, voucher.amount, voucher.nonce, voucher.expiry
            ).call()
        )

    def vault_totals(self) -> dict[str, int]:
        f = self.vault.functions
        return {
            "deposited": int(f.totalDeposited().call()),
            "settled": int(f.totalSettled().call()),
            "withdrawn": int(f.totalWithdrawn().call()),
            "reward_top_up": int(f.totalRewardTopUp().call()),
        }

    # --------------------------------------------------------- distributor
    def post_root(
        self, sender: Sender, *, batch_id: bytes, rewards_root: bytes, receipts_root: bytes
    ) -> TxResult:
        """Direct root post (only when the distributor's poster is an EOA, not the vault)."""
        return self._send(
            sender,
            self.distributor.functions.postRoot(_b32(batch_id), _b32(rewards_root), _b32(receipts_root)),
        )

    def claim(self, sender: Sender, *, worker: str, cumulative: int, proof: Sequence[bytes]) -> TxResult:
        return self._send(
            sender,
            self.distributor.functions.claim(
                to_checksum_address(worker), cumulative, [_b32(p) for p in proof]
            ),
        )

    def claimed(self, worker: str) -> int:
        return int(self.distributor.functions.claimed(to_checksum_address(worker)).call())

    def rewards_root(self) -> bytes:
        """The accepted rewards root (claims prove against it)."""
        return bytes(self.distributor.functions.rewardsRoot().call())

    # Rewards-root delay: posted roots are pending until accepted (anyone, after the delay) or
    # revoked (owner, before acceptance); claims prove against the accepted root only.
    def root_delay(self) -> int:
        return int(self.distributor.functions.ROOT_DELAY().call())

    def accepted_batch(self) -> bytes:
        return bytes(self.distributor.functions.acceptedBatch().call())

    def pending_root_of(self, batch_id: bytes) -> tuple[bytes, int, int]:
        """(root, valid_at, seq) of a batch's pending rewards root; seq 0: none pending."""
        root, valid_at, seq = self.distributor.functions.pendingRootOf(_b32(batch_id)).call()
        return bytes(root), int(valid_at), int(seq)

    def accepted_seq(self) -> int:
        return int(self.distributor.functions.acceptedSeq().call())

    def accept_root(self, sender: Sender, batch_id: bytes) -> TxResult:
        return self._send(sender, self.distributor.functions.acceptRoot(_b32(batch_id)))

    def revoke_root(self, sender: Sender, batch_id: bytes) -> TxResult:
        """Owner: revoke a batch's pending rewards root during its delay."""
        return self._send(sender, self.distributor.functions.revokeRoot(_b32(batch_id)))

    def receipts_root_of(self, batch_id: bytes) -> bytes:
        return bytes(self.distributor.functions.receiptsRootOf(_b32(batch_id)).call())

    def verify_receipt(self, batch_id: bytes, receipt_hash: bytes, proof: Sequence[bytes]) -> bool:
        return bool(
            self._call(
                self.distributor.functions.verifyReceipt(
                    _b32(batch_id), _b32(receipt_hash), [_b32(p) for p in proof]
                )
            )
        )
