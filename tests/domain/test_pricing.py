"""DESIGN 1.1: integer floor arithmetic, charged = reward + fee, no reward when gateway-served or failed."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from basis.domain.pricing import (
    PriceTerms,
    PricingError,
    PricingTable,
    UnknownModel,
    parse_amount,
    price,
    worst_case_charge,
)

tokens = st.integers(min_value=0, max_value=10**7)
weights = st.integers(min_value=0, max_value=10**21)
bps = st.integers(min_value=0, max_value=10_000)
multipliers = st.integers(min_value=1, max_value=100_000)
terms_st = st.builds(PriceTerms, weights, weights, multipliers, bps)


@given(tokens, tokens, terms_st)
def test_charge_is_the_published_floor_formula(p, o, terms):
    charge = price(p, o, terms, terms.contributor_reward_bps)
    numerator = (p * terms.prompt_weight + o * terms.output_weight) * terms.multiplier_bps
    assert charge.charged == numerator // 10_000
    assert charge.charged * 10_000 <= numerator < (charge.charged + 1) * 10_000
    assert charge.reward == charge.charged * terms.contributor_reward_bps // 10_000
    assert all(type(x) is int for x in (charge.charged, charge.reward, charge.fee))


@given(tokens, tokens, terms_st, st.sampled_from(["contributor", "gateway"]),
       st.sampled_from(["completed", "cancelled", "failed"]))
def test_charged_is_reward_plus_fee_and_reward_rules(p, o, terms, served_by, outcome):
    reward_bps = terms.reward_bps(served_by, outcome)
    charge = price(p, o, terms, reward_bps)
    assert charge.charged == charge.reward + charge.fee
    assert 0 <= charge.reward <= charge.charged and charge.fee >= 0
    if served_by == "gateway" or outcome == "failed":
        assert reward_bps == 0 and charge.reward == 0 and charge.fee == charge.charged


@given(tokens, tokens, tokens, terms_st)
def test_charge_is_monotone_in_tokens(p, o, extra, terms):
    base = price(p, o, terms, 0).charged
    assert price(p + extra, o, terms, 0).charged >= base
    assert price(p, o + extra, terms, 0).charged >= base
    assert worst_case_charge(p, o + extra, terms) >= price(p, o, terms, 0).charged


@pytest.mark.parametrize("bad", [1.5, -1, "3", None, True])
def test_non_integer_or_negative_amounts_are_refused(bad):
    with pytest.raises(PricingError):
        PriceTerms(bad, 1, 10_000, 8000)


@pytest.mark.parametrize("text", ["-5", "1.5", "1e18", "", "abc", "007", " 1 2", "\uff11\uff12"])
def test_parse_amount_refuses_anything_but_decimal_integers(text):
    with pytest.raises(PricingError):
        parse_amount(text)


def test_parse_amount_accepts_big_integers():
    assert parse_amount("1000000000000000000000") == 10**21
    assert parse_amount("1_000") == 1000


def test_seed_models_are_in_the_one_pricing_table():
    table = PricingTable.load()
    assert {m: (s.context_window, s.multiplier_bps) for m, s in table.models.items()} == {
        "basis-default": (8192, 10_000), "basis-small": (8192, 5_000), "basis-large": (32768, 30_000)}
    with pytest.raises(UnknownModel):
        table.terms_for("gpt-4")
    terms = table.terms_for("basis-large")
    assert terms.multiplier_bps == 30_000 and terms.prompt_weight == table.prompt_weight
