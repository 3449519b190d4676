"""Protocol messages (v1 to v3) and the authentication text (no llama needed)."""

from __future__ import annotations

import json

import pytest
from eth_account import Account
from pydantic import ValidationError

from basis.protocol import (
    Cancel,
    Challenge,
    Done,
    Error,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Job,
    ModelOffer,
    Reject,
    TokenLogprob,
    Tokens,
    Welcome,
    challenge_text,
    dump,
    parse_gateway_message,
    parse_message,
    parse_worker_message,
    recover_signer,
    sign_challenge,
    verify_challenge,
)

GATEWAY_SIDE = [
    Challenge(gateway_address="0x" + "ab" * 20, chain_id=8453, nonce="0x01", expires_at=1700000000),
    Welcome(worker_address="0x" + "cd" * 20, models=["basis-default"]),
    Reject(code="bad_signature", message="no"),
    HeartbeatAck(active_jobs=2),
    Job(job_id="j1", model="basis-default", prompt_ids=[2, 105], max_tokens=16, temperature=0.0, seed=7),
    Cancel(job_id="j1"),
    Job(job_id="j2", model="basis-default", prompt_ids=[2], max_tokens=4, logprobs=True, top_logprobs=20),
]
WORKER_SIDE = [
    Hello(
        protocol_version=1,
        worker_address="0x" + "cd" * 20,
        signature="0x" + "00" * 65,
        models=[ModelOffer(model="basis-default", binding_hash="0x" + "11" * 32, capacity=2)],
        software="x/1",
    ),
    Heartbeat(active_jobs=1),
    Tokens(job_id="j1", ids=[1, 2], text="hé"),
    Tokens(job_id="j2", ids=[7, 8], text="ab", logprobs=[TokenLogprob(logprob=-0.25, top=[(7, -0.25), (9, -1.5)]),
                                                        TokenLogprob(logprob=-3.0, top=[(4, -0.1), (5, -2.5)])]),
    Done(job_id="j1", finish_reason="length"),
    Error(job_id="j1", message="oops"),
]


@pytest.mark.parametrize("msg", GATEWAY_SIDE, ids=lambda m: m.type)
def test_gateway_messages_round_trip(msg):
    raw = dump(msg)
    assert json.loads(raw)["type"] == msg.type
    assert parse_gateway_message(raw) == msg == parse_message(raw)


@pytest.mark.parametrize("msg", WORKER_SIDE, ids=lambda m: m.type)
def test_worker_messages_round_trip(msg):
    raw = dump(msg)
    assert parse_worker_message(raw) == msg == parse_message(raw)


def test_v3_logprobs_fields_and_limits():
    tokens = parse_worker_message('{"type":"tokens","job_id":"j","ids":[5],"logprobs":[{"logprob":-1.5,'
                                  '"top":[[5,-1.5],[6,-2]]}]}')
    assert tokens.logprobs == [TokenLogprob(logprob=-1.5, top=[(5, -1.5), (6, -2.0)])]
    # a v2 frame has none; a v2 reader ignores the field (unknown fields are ignored)
    assert parse_worker_message('{"type":"tokens","job_id":"j","ids":[5]}').logprobs is None
    assert Job(job_id="j", model="m", prompt_ids=[1], max_tokens=1).logprobs is False
    with pytest.raises(ValidationError):
        Job(job_id="j", model="m", prompt_ids=[1], max_tokens=1, logprobs=True, top_logprobs=21)


def test_unknown_fields_ignored_and_bad_frames_rejected():
    m = parse_worker_message('{"type": "heartbeat", "active_jobs": 3, "future": 1}')
    assert m == Heartbeat(active_jobs=3)
    for bad in ['{"type": "nope"}', '{"type": "tokens", "ids": [1]}', "not json",
                '{"type": "done", "job_id": "j", "finish_reason": "cancelled"}']:
        with pytest.raises(ValidationError):
            parse_worker_message(bad)
    with pytest.raises(ValidationError):
        parse_gateway_message(dump(Heartbeat()))  # a worker frame is not a gateway frame


def test_challenge_text_is_canonical_and_binds_everything():
    kw = dict(gateway_address="0xAbC0000000000000000000000000000000000001", chain_id=8453,
              nonce="0xfeed", expires_at=1700000000)
    text = challenge_text(**kw)
    assert text == (
        "Basis worker authentication\nprotocol: 1\n"
        "gateway: 0xabc0000000000000000000000000000000000001\nchain_id: 8453\n"
        "nonce: 0xfeed\nexpires_at: 1700000000"
    )
    acct = Account.create()
    sig = sign_challenge(acct.key, text)
    assert len(sig) == 132 and sig.startswith("0x")
    assert recover_signer(text, sig) == acct.address
    assert verify_challenge(text, sig, acct.address.lower())
    for change in (dict(chain_id=1), dict(nonce="0xbeef"), dict(expires_at=1700000001),
                   dict(gateway_address="0x" + "99" * 20)):
        assert not verify_challenge(challenge_text(**{**kw, **change}), sig, acct.address)
    assert not verify_challenge(text, "0x1234", acct.address)
