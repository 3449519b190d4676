"""DESIGN 1.2: RFC 8785 canonical core, SHA-256 hash that ignores the envelope, EIP-191 signature."""

import hashlib
import json
import uuid

import pytest
import rfc8785
from eth_account import Account
from eth_account.messages import encode_defunct
from hypothesis import given
from hypothesis import strategies as st

from basis.domain.pricing import PriceTerms
from basis.domain.receipt import (
    CORE_KEYS,
    ReceiptError,
    build_core,
    canonical_json,
    receipt_hash,
    recompute_problems,
)
from basis.domain.signing import ReceiptSigner, recover_signer

TERMS = PriceTerms(10**12, 4 * 10**12, 10_000, 8000)


def core_for(**overrides):
    args = dict(job_id=uuid.UUID(int=7), model="basis-default", served_by="contributor",
                worker="0x" + "ab" * 20, outcome="completed", prompt_tokens=12, output_tokens=34, terms=TERMS)
    args.update(overrides)
    return build_core(**args)


def test_rfc8785_published_example_3_2_2():
    # RFC 8785 section 3.2.2 input and its canonical output.
    text = ('{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
            ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
            ' "literals": [null, true, false]}')
    expected = ('{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
                '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}')
    assert rfc8785.dumps(json.loads(text)) == expected.encode()


def test_rfc8785_published_sorting_example_3_2_3():
    obj = {"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
           "1": "One", "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control",
           "\u00f6": "Latin Small Letter O With Diaeresis"}
    order = [k for k in json.loads(rfc8785.dumps(obj))]
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_core_has_exactly_the_published_keys_and_types():
    core = core_for()
    assert set(core) == set(CORE_KEYS)
    assert core["charged"] == str((12 * 10**12 + 34 * 4 * 10**12) * 10_000 // 10_000)
    assert core["reward"] == str(int(core["charged"]) * 8000 // 10_000)
    assert core["job_id"] == "00000000-0000-0000-0000-000000000007"
    assert receipt_hash(core) == "0x" + hashlib.sha256(canonical_json(core)).hexdigest()
    assert not recompute_problems(core)


def test_gateway_and_failed_receipts_carry_no_reward():
    gw = core_for(served_by="gateway", worker=None)
    assert gw["reward_bps"] == 0 and gw["reward"] == "0" and gw["worker"] is None
    failed = core_for(outcome="failed")
    assert failed["reward_bps"] == 0 and failed["reward"] == "0"
    with pytest.raises(ReceiptError):
        core_for(served_by="gateway")


envelopes = st.fixed_dictionaries({
    "status": st.sampled_from(["issued", "settled"]),
    "signature": st.text(max_size=10),
    "settlement": st.none()
    | st.fixed_dictionaries({"batch_id": st.text(max_size=5), "leaf_index": st.integers(0, 99)}),
    "issued_at": st.text(max_size=10),
})


@given(envelopes)
def test_hash_ignores_every_envelope_change(envelope):
    core = core_for()
    receipt = {"core": core, **envelope}
    assert receipt_hash(receipt["core"]) == receipt_hash(core_for())


@given(st.sampled_from(CORE_KEYS), st.integers(min_value=1, max_value=10**6))
def test_hash_changes_with_any_core_field(key, bump):
    core = core_for()
    changed = dict(core)
    value = core[key]
    if isinstance(value, bool) or value is None:
        changed[key] = "0x" + "cd" * 20
    elif isinstance(value, int):
        changed[key] = value + bump
    else:
        changed[key] = value + str(bump)
    assert receipt_hash(changed) != receipt_hash(core)


def test_signature_is_eip191_over_the_raw_hash_bytes_and_recovers():
    acct = Account.create()
    signer = ReceiptSigner(acct.key.hex())
    digest = receipt_hash(core_for())
    sig = signer.sign_hash(digest)
    assert len(sig) == 132 and int(sig[-2:], 16) in (27, 28)
    expected = Account.sign_message(encode_defunct(primitive=bytes.fromhex(digest[2:])), acct.key)
    assert bytes.fromhex(sig[2:]) == bytes(expected.signature)
    assert recover_signer(digest, sig) == acct.address == signer.address


def test_recompute_names_a_tampered_amount():
    core = core_for()
    core["charged"] = str(int(core["charged"]) + 1)
    problems = recompute_problems(core)
    assert any("charged" in p for p in problems)


flat_values = (st.none() | st.integers(min_value=0, max_value=2**53 - 1)
               | st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=12)
               | st.text(max_size=6) | st.integers(min_value=-(2**60), max_value=2**60) | st.booleans())


@given(st.dictionaries(st.text(max_size=8), flat_values, max_size=16))
def test_fast_canonical_json_equals_rfc8785(obj):
    try:
        expected = rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError:
        return  # outside JCS's domain (e.g. integers beyond 2^53): only the core's shape matters
    assert canonical_json(obj) == expected
