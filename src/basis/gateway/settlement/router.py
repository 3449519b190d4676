"""Settlement HTTP API: batches, reward proofs (for claims), receipt inclusion proofs, withdrawals.

Dependencies come from ``request.app.state.runtime``: ``settings``, ``ledger``, ``reader()``,
``deployment`` (manifest dict or None) and ``web3`` (Web3 or None).

- ``GET /v1/settlement/batches`` (public): newest first, ``?limit=&before=<seq>``.
- ``GET /v1/settlement/batches/{batch_id}`` (public): one batch with its receipt hashes and rewards.
- ``GET /v1/settlement/proofs/{worker}`` (public): the worker's cumulative reward in the rewards
  root the distributor has *accepted* (claims prove only against it; newer roots may still be
  pending their delay), its Merkle proof, the root and the batch id (what ``claim`` needs).
  ``?batch_id=`` asks for a given confirmed batch's root instead (e.g. one about to be accepted).
- ``GET /v1/settlement/receipts/{job_id}/proof`` (public): a settled receipt's inclusion proof.
- ``POST /v1/withdrawals`` (bearer key): ``{"recipient": "0x..", "amount": "<base units>" | null,
  "ttl": seconds}`` -> an EIP-712 voucher to submit to ``CreditVault.withdraw``.
- ``GET /v1/withdrawals`` (bearer key): the account's vouchers and their status.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from basis.domain.merkle import StandardMerkleTree, receipts_tree, rewards_tree
from basis.domain.pricing import PricingError, parse_amount
from basis.ledger.errors import InsufficientCredit, LedgerError, UnknownAccount

router = APIRouter(tags=["settlement"])

_trees: OrderedDict[str, StandardMerkleTree] = OrderedDict()
_trees_lock = threading.Lock()


def error(status: int, message: str, type_: str, code: str | None = None, param: str | None = None,
          retry: bool | None = None) -> JSONResponse:
    headers = {"x-should-retry": "false"} if retry is False else None
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": type_, "param": param, "code": code}})


def _runtime(request: Request) -> Any:
    return request.app.state.runtime


def _tree(key: str, build) -> StandardMerkleTree:
    with _trees_lock:
        tree = _trees.get(key)
        if tree is not None:
            _trees.move_to_end(key)
            return tree
    tree = build()
    with _trees_lock:
        _trees[key] = tree
        while len(_trees) > 8:
            _trees.popitem(last=False)
    return tree


@router.get("/v1/settlement/batches")
def list_batches(request: Request, limit: int = 20, before: int | None = None) -> Any:
    if not 1 <= limit <= 100:
        return error(400, "limit must be between 1 and 100", "invalid_request_error", param="limit")
    rows = _runtime(request).reader().batches(limit=limit + 1, before=before)
    return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit}


@router.get("/v1/settlement/batches/{batch_id}")
def get_batch(request: Request, batch_id: str) -> Any:
    row = _runtime(request).reader().batch(batch_id)
    if row is None:
        return error(404, f"no settlement batch {batch_id}", "invalid_request_error", "batch_not_found", "batch_id")
    return row


def _accepted_batch(request: Request, reader: Any) -> dict[str, Any] | None:
    """The confirmed batch whose rewards root the distributor accepted (latest confirmed without a chain)."""
    chain = _chain(request)
    if chain is None:
        return reader.latest_confirmed_batch()
    accepted = "0x" + chain.contracts.accepted_batch().hex()
    if accepted == "0x" + "00" * 32:
        return None
    return reader.batch(accepted)


@router.get("/v1/settlement/proofs/{worker}")
def reward_proof(request: Request, worker: str, batch_id: str | None = None) -> Any:
    address = worker.lower()
    if len(address) != 42 or not address.startswith("0x"):
        return error(400, "worker must be a 0x address", "invalid_request_error", "invalid_address", "worker")
    reader = _runtime(request).reader()
    if batch_id is not None:
        batch = reader.batch(batch_id)
        if batch is None or batch.get("status") != "confirmed":
            return error(404, f"no confirmed batch {batch_id}", "invalid_request_error", "batch_not_found", "batch_id")
    else:
        batch = _accepted_batch(request, reader)
    rewards = {w.lower(): int(c) for w, c in batch["rewards"]} if batch else {}
    if address not in rewards:
        return error(404, f"no settled rewards for {worker} yet", "invalid_request_error", "no_rewards", "worker")
    tree = _tree("rewards:" + batch["batch_id"], lambda: rewards_tree(list(rewards.items())))
    claimed = sum(int(c["amount"]) for c in reader.claims(address))
    cumulative = rewards[address]
    return {
        "object": "reward_proof", "worker": address, "cumulative": str(cumulative),
        "proof": tree.proof_hex((address, cumulative)), "rewards_root": batch["rewards_root"],
        "batch_id": batch["batch_id"], "block": batch["block"], "claimed": str(claimed),
        "claimable": str(max(0, cumulative - claimed)), "distributor": batch["distributor"],
        "chain_id": batch["chain_id"],
    }


@router.get("/v1/settlement/receipts/{job_id}/proof")
def receipt_proof(request: Request, job_id: str) -> Any:
    reader = _runtime(request).reader()
    receipt = reader.receipt(job_id)
    if receipt is None or receipt["status"] != "settled":
        return error(404, f"no settled receipt {job_id}", "invalid_request_error", "receipt_not_settled", "job_id")
    s = receipt["settlement"]
    batch = reader.batch(s["batch_id"])
    if batch is None:
        return error(404, f"batch {s['batch_id']} not found", "invalid_request_error", "batch_not_found", "job_id")
    tree = _tree("receipts:" + batch["batch_id"], lambda: receipts_tree(batch["receipt_hashes"]))
    return {"object": "receipt_proof", "job_id": job_id, "hash": receipt["hash"], "batch_id": s["batch_id"],
            "leaf_index": s["leaf_index"], "receipts_root": batch["receipts_root"],
            "proof": tree.proof_hex(s["leaf_index"]), "tx_hash": s["tx_hash"], "chain_id": s["chain_id"]}


class WithdrawalRequest(BaseModel):
    recipient: str
    amount: str | None = Field(default=None, description="base units as a decimal string; null: all withdrawable")
    ttl: int = Field(default=3600, description="seconds of chain time the voucher stays valid")


def _account(request: Request) -> UUID | JSONResponse:
    auth = request.headers.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    account_id = _runtime(request).ledger.authenticate(key) if key else None
    if account_id is None:
        return error(401, "invalid or missing API key", "invalid_request_error", "invalid_api_key")
    return account_id


def _chain(request: Request):
    rt = _runtime(request)
    if rt.deployment is None or rt.web3 is None:
        return None
    cached = getattr(request.app.state, "settlement_chain", None)
    if cached is None or cached.manifest is not rt.deployment:
        from basis.settlement.chain import Chain

        cached = Chain(rt.web3, rt.deployment)
        request.app.state.settlement_chain = cached
    return cached


@router.post("/v1/withdrawals")
def create_withdrawal(request: Request, body: WithdrawalRequest) -> Any:
    account_id = _account(request)
    if isinstance(account_id, JSONResponse):
        return account_id
    chain = _chain(request)
    if chain is None:
        return error(503, "the credit vault is pending: withdrawals open once it is deployed", "server_error",
                     "vault_pending", retry=False)
    amount = None
    if body.amount is not None:
        try:
            amount = parse_amount(body.amount)
        except PricingError as exc:
            return error(400, str(exc), "invalid_request_error", "invalid_amount", "amount")
        if amount <= 0:
            return error(400, "amount must be positive", "invalid_request_error", "invalid_amount", "amount")
    from basis.settlement.withdrawals import WithdrawalError, request_withdrawal

    rt = _runtime(request)
    try:
        return request_withdrawal(rt.ledger, chain, rt.settings.settlement_key(), account_id=account_id,
                                  recipient=body.recipient, amount=amount, ttl=body.ttl)
    except InsufficientCredit as exc:
        return error(402, str(exc), "insufficient_quota", "insufficient_credit")
    except UnknownAccount as exc:
        return error(401, str(exc), "invalid_request_error", "invalid_api_key")
    except WithdrawalError as exc:
        return error(400, str(exc), "invalid_request_error", "invalid_withdrawal")
    except LedgerError as exc:
        return error(409, str(exc), "invalid_request_error", exc.code, retry=False)


@router.get("/v1/withdrawals")
def list_withdrawals(request: Request) -> Any:
    account_id = _account(request)
    if isinstance(account_id, JSONResponse):
        return account_id
    rows = _runtime(request).reader().withdrawals(str(account_id))
    return {"object": "list", "data": [{**r, "amount": r["amount"]} for r in rows]}
