from __future__ import annotations

import threading
import time
import uuid
from types import SimpleNamespace

import uvicorn
from fastapi import FastAPI

from basis.chain.anvil import free_port
from basis.gateway.settlement.router import router
from basis.ledger.service import Ledger


def run_job(ledger: Ledger, account_id, *, worker: str | None, output_tokens: int = 42, prompt_tokens: int = 10,
            outcome: str = "completed", max_output_tokens: int = 100):
    job_id = uuid.uuid4()
    ledger.run(ledger.accept_job(job_id=job_id, account_id=account_id, model="basis-default",
                                 prompt_tokens=prompt_tokens, max_output_tokens=max_output_tokens))
    ledger.run(ledger.assign_job(job_id, "contributor" if worker else "gateway", worker))
    receipt = ledger.run(ledger.finish_job(job_id, outcome=outcome, output_tokens=output_tokens))
    return job_id, receipt


def app_for(env) -> FastAPI:
    app = FastAPI()
    app.include_router(router)
    app.state.runtime = SimpleNamespace(settings=env.settings, ledger=env.ledger, reader=env.reader,
                                        deployment=env.manifest, web3=env.w3)
    return app


class Server:
    """A real uvicorn server on a free port, in a thread."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def withdrawal_request(env, signer_key: str, account_id, *, recipient: str, amount: int, nonce: int,
                       expiry: int | None = None, ttl: int | None = None) -> dict:
    """The body of ``POST /v1/withdrawals``: an EIP-712 WithdrawalRequest signed by ``signer_key``."""
    from basis.chain.vouchers import WithdrawalRequest, sign_withdrawal_request
    from basis.domain.account_id import to_bytes32

    if expiry is None:
        expiry = int(env.w3.eth.get_block("latest")["timestamp"]) + 600
    request = WithdrawalRequest(account=to_bytes32(account_id), recipient=recipient, amount=amount, nonce=nonce,
                                expiry=expiry)
    signature = sign_withdrawal_request(signer_key, request, chain_id=env.chain.chain_id, vault=env.chain.vault)
    body = {"account": str(account_id), "recipient": request.recipient, "amount": str(amount), "nonce": str(nonce),
            "expiry": expiry, "signature": "0x" + signature.hex()}
    if ttl is not None:
        body["ttl"] = ttl
    return body
