"""Settlement HTTP API: batches, reward proofs (for claims), receipt inclusion proofs, withdrawals.

Dependencies come from ``request.app.state.runtime``: ``settings``, ``ledger``, ``reader()``,
``deployment`` (manifest dict or None) and ``web3`` (Web3 or None).

- ``GET /v1/settlement/batches`` (public): newest first, ``?limit=&before=<seq>``.
- ``GET /v1/settlement/batches/{batch_id}`` (public): one batch with its receipt hashes and rewards.
- ``GET /v1/settlement/status`` (public): the settlement thread's and the chain indexer's state.
- ``GET /v1/settlement/proofs/{worker}`` (public): the worker's cumulative reward in the rewards
  root the distributor has *accepted* (claims prove only against it; newer roots may still be
  pending their delay), its Merkle proof, the root and the batch id (what ``claim`` needs).
  ``?batch_id=`` asks for a given confirmed batch's root instead (e.g. one about to be accepted).
- ``GET /v1/settlement/receipts/{job_id}/proof`` (public): a settled receipt's inclusion proof.
- ``POST /v1/withdrawals``: ``{"account"?: uuid, "recipient", "amount", "nonce", "expiry", "signature",
  "ttl"?}`` — an EIP-712 ``WithdrawalRequest`` signed by an address that deposited for the account,
  to such an address (the bearer key, if sent, only names the account) -> an EIP-712 voucher to
  submit to ``CreditVault.withdraw``. See ``basis.settlement.withdrawals`` and docs/settlement.md.
- ``GET /v1/withdrawals`` (bearer key): the account's vouchers and their status.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from basis.domain.merkle import StandardMerkleTree, receipts_tree, rewards_tree
from basis.domain.pricing import PricingError
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
def list_batches(request: Request, limit: int = 20,
                 before: int | None = Query(None, ge=-(2**63), le=2**63 - 1)) -> Any:  # the store's int64
    if not 1 <= limit <= 100:
        return error(400, "limit must be between 1 and 100", "invalid_request_error", param="limit")
    rows = _runtime(request).reader().batches(limit=limit + 1, before=before)
    return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit}


@router.get("/v1/settlement/status")
def settlement_status(request: Request) -> Any:
    """The settlement thread and the chain indexer: ok | retrying | halted (the chain lost a
    confirmed batch) | reorg (indexed blocks were reorganised), with the last error and the next try."""
    status = getattr(_runtime(request), "settlement_status", lambda: None)()
    if status is None:
        return {"object": "settlement_status", "settlement": {"status": "off"}, "indexer": {"status": "off"}}
    return {"object": "settlement_status", **status}


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


class WithdrawalBody(BaseModel):
    """Every field optional here so that a missing one gets the API's own error, not a 422."""

    account: str | None = Field(default=None, description="the account's UUID (default: the bearer key's account)")
    recipient: str | None = Field(default=None, description="an address that deposited for the account")
    amount: str | None = Field(default=None, description="base units as a decimal string")
    nonce: str | None = Field(default=None, description="the signer's request nonce, a decimal uint256, used once")
    expiry: str | int | None = Field(default=None, description="chain time after which the request is refused")
    signature: str | None = Field(default=None, description="EIP-712 WithdrawalRequest signature (0x + 130 hex)")
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


def _bearer_account(request: Request) -> UUID | JSONResponse | None:
    auth = request.headers.get("authorization", "")
    if not auth:
        return None
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    account_id = _runtime(request).ledger.authenticate(key) if key else None
    if account_id is None:
        return error(401, "invalid or missing API key", "invalid_request_error", "invalid_api_key")
    return account_id


def _withdrawal_account(request: Request, body: WithdrawalBody) -> UUID | JSONResponse:
    """The account named in the body, else the bearer key's (the key only names it: the signature
    decides). Both given and different: refused."""
    keyed = _bearer_account(request)
    if isinstance(keyed, JSONResponse):
        return keyed
    named = None
    if body.account is not None:
        try:
            named = UUID(body.account)
        except ValueError:
            return error(400, "account must be the account's UUID", "invalid_request_error", "invalid_account",
                         "account")
    if named is not None and keyed is not None and named != keyed:
        return error(403, "the API key belongs to another account than the one named", "permission_error",
                     "account_mismatch", "account")
    account_id = named or keyed
    if account_id is None:
        return error(401, "name the account (account) or send its API key; the withdrawal itself needs the "
                     "signature of an address that deposited for it", "invalid_request_error", "invalid_api_key")
    return account_id


@router.post("/v1/withdrawals")
def create_withdrawal(request: Request, body: WithdrawalBody) -> Any:
    account_id = _withdrawal_account(request, body)
    if isinstance(account_id, JSONResponse):
        return account_id
    chain = _chain(request)
    if chain is None:
        return error(503, "the credit vault is pending: withdrawals open once it is deployed", "server_error",
                     "vault_pending", retry=False)
    from basis.settlement.withdrawals import WithdrawalError, request_withdrawal

    rt = _runtime(request)
    try:
        return request_withdrawal(rt.ledger, chain, rt.settings.settlement_key(), account_id=account_id,
                                  recipient=body.recipient or "", amount=body.amount, nonce=body.nonce,
                                  expiry=body.expiry, signature=body.signature, ttl=body.ttl)
    except InsufficientCredit as exc:
        return error(402, str(exc), "insufficient_quota", "insufficient_credit")
    except UnknownAccount as exc:
        return error(404, str(exc), "invalid_request_error", "account_not_found", "account")
    except WithdrawalError as exc:
        type_ = {401: "invalid_request_error", 403: "permission_error", 503: "server_error"}.get(
            exc.status, "invalid_request_error")
        return error(exc.status, str(exc), type_, exc.code, exc.param,
                     retry=False if exc.status in (409, 503) else None)
    except PricingError as exc:
        return error(400, str(exc), "invalid_request_error", "invalid_amount", "amount")
    except LedgerError as exc:
        return error(409, str(exc), "invalid_request_error", exc.code, retry=False)


@router.get("/v1/withdrawals")
def list_withdrawals(request: Request) -> Any:
    account_id = _account(request)
    if isinstance(account_id, JSONResponse):
        return account_id
    rows = _runtime(request).reader().withdrawals(str(account_id))
    return {"object": "list", "data": [{**r, "amount": r["amount"]} for r in rows]}
