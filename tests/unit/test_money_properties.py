"""Money under hostile input: properties of the request type, the response type and the
contracts' `Money`, checked with hypothesis against a reference model of the contract.

CONTRACT.md: money is a decimal string with two places in responses ("19.99"); requests
may send a string or a number; more than two decimals, zero or negative is 422. The
reference below says which *values* are amounts (positive, a whole number of cents, at
most `MAX_AMOUNT`, the NUMERIC(12, 2) column); "19.990" is 19.99 and therefore an amount.
How a string may spell an amount is what the OpenAPI document promises (the `pattern`
of AmountIn's JSON schema, read from the module, so the two cannot drift apart); numbers
may use an exponent (`1e2` is a JSON number like any other).

Every check goes through pydantic (`TypeAdapter(AmountIn)` and `CreateOrder`, the model
`POST /orders` validates), so "rejected" means a `ValidationError`, which the API turns
into a 422; any other exception fails the test.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from checkout_api.schemas.money import CENT, MAX_AMOUNT, AmountIn
from checkout_api.schemas.orders import CreateOrder, PaymentSummary
from contracts import Money

BOUNDED = settings(max_examples=200, deadline=None, database=None)

AMOUNT_IN: TypeAdapter[Decimal] = TypeAdapter(AmountIn)
MONEY: TypeAdapter[Decimal] = TypeAdapter(Money)
TWO_PLACES = re.compile(r"\d+\.\d{2}", re.ASCII)


def _documented_pattern() -> re.Pattern[str]:
    """The string form the API documents for a request amount (ECMA regex: ASCII \\d)."""
    [string] = [s for s in AMOUNT_IN.json_schema()["anyOf"] if s.get("type") == "string"]
    return re.compile(string["pattern"], re.ASCII)


DOCUMENTED = _documented_pattern()
MAX_CENTS = int(MAX_AMOUNT * 100)


class Rejected:
    """The outcome of a refused amount (a ValidationError naming `amount`)."""

    def __repr__(self) -> str:
        return "REJECTED"


REJECTED = Rejected()


def is_amount(value: Decimal) -> bool:
    """The reference model: which values the contract accepts."""
    return value.is_finite() and 0 < value <= MAX_AMOUNT and value == value.quantize(CENT)


def via_type(value: Any) -> Decimal | Rejected:
    try:
        return AMOUNT_IN.validate_python(value)
    except ValidationError:
        return REJECTED


def _errors_name_only_amount(exc: ValidationError) -> bool:
    return [tuple(e["loc"]) for e in exc.errors()] == [("amount",)]


def body(amount: Any) -> dict[str, Any]:
    return {
        "order_name": "Poster",
        "amount": amount,
        "customer": {"email": "jane@example.com", "name": "Jane"},
    }


def json_body(amount_literal: str) -> str:
    """A `POST /orders` body with `amount_literal` spliced in as raw JSON."""
    return (
        '{"order_name": "Poster", "customer": {"email": "jane@example.com", "name": "Jane"}, '
        f'"amount": {amount_literal}}}'
    )


def via_order(value: Any) -> Decimal | Rejected:
    """Validate through CreateOrder from Python values (what FastAPI does after json.loads)."""
    try:
        return CreateOrder.model_validate(body(value)).amount
    except ValidationError as exc:
        error = exc
    assert _errors_name_only_amount(error), error.errors()
    return REJECTED


def api_json(raw: str) -> Any:
    """Decode a body as `POST /orders` does (checkout_api/exact_json.py): numbers with a
    fraction become Decimal, never float, so the validator judges the number as sent."""
    return json.loads(raw, parse_float=Decimal)


def via_order_json(amount_literal: str) -> Decimal | Rejected:
    """Validate a raw JSON body the way the API decodes it."""
    return via_order(api_json(json_body(amount_literal))["amount"])


def short_id(value: Any) -> str:
    """A test id: repr cut short (an int of 5000 digits has no repr at all)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**100:
        return f"int of {value.bit_length()} bits{' (negative)' if value < 0 else ''}"
    return repr(value)[:30]


def accepted(outcome: Decimal | Rejected) -> Decimal:
    assert isinstance(outcome, Decimal), "expected the amount to be accepted"
    return outcome


# ---- strategies ---------------------------------------------------------------------

cents = st.integers(min_value=1, max_value=MAX_CENTS)
valid_amounts = cents.map(lambda c: Decimal(c).scaleb(-2))


@st.composite
def spellings(draw: st.DrawFn, amount: Decimal) -> str:
    """A plain-notation string for `amount`: "7", "7.0", "7.00", "7.000", "+7.", "07.5"."""
    whole, _, frac = f"{amount:.2f}".partition(".")
    frac = frac.rstrip("0") if draw(st.booleans()) else frac
    frac += "0" * draw(st.integers(0, 4))
    text = whole if not frac and draw(st.booleans()) else f"{whole}.{frac}"
    if whole == "0" and frac and draw(st.booleans()):
        text = f".{frac}"
    else:
        text = "0" * draw(st.integers(0, 2)) + text
    return ("+" if draw(st.booleans()) else "") + text


@st.composite
def sub_cent_amounts(draw: st.DrawFn) -> Decimal:
    """A positive value below the maximum that is not a whole number of cents."""
    places = draw(st.integers(3, 30))
    unit = 10 ** (places - 2)
    whole_cents = draw(st.integers(0, MAX_CENTS - 1))
    remainder = draw(st.integers(1, unit - 1))
    return Decimal(f"{whole_cents * unit + remainder}E-{places}")  # exact; scaleb rounds


non_positive = st.one_of(
    st.integers(min_value=-(10**15), max_value=0).map(lambda c: Decimal(c).scaleb(-2)),
    st.sampled_from([Decimal("0"), Decimal("-0"), Decimal("0E+10"), Decimal("-0.00")]),
)

WHITESPACE = [" ", "\t", "\n", "\r", "\v", "\f", "\u00a0", "\u2003", "\u3000", "\ufeff", "\u200b"]

NON_FINITE = [
    "NaN",
    "nan",
    "-NaN",
    "sNaN",
    "Infinity",
    "-Infinity",
    "inf",
    "+inf",
    "Inf",
    float("nan"),
    float("inf"),
    float("-inf"),
    Decimal("NaN"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
]

HUGE = [
    "1e999999",
    "1E+999999999",
    "-1e999999",
    "1e-999999",
    "9" * 5000,
    "0." + "0" * 5000 + "1",
    10**5000,
    -(10**5000),
    1e308,
    5e-324,
    Decimal("1E+999999999999"),
    Decimal("1E-999999999999"),
    Decimal("9" * 100),
]

NOT_NUMBERS: list[Any] = [
    None,
    True,
    False,
    [],
    ["19.99"],
    {},
    {"amount": "19.99"},
    b"19.99",
    bytearray(b"19.99"),
    1 + 2j,
    "",
    ".",
    "+",
    "-",
    "..5",
    "1.2.3",
    "19,99",
    "1,000.00",
    "$19.99",
    "19.99 USD",
    "1_000",
    "0x10",
    "1e2",
    "\u0661\u0662",  # Arabic-Indic digits
    "\uff11\uff19.\uff19\uff19",  # full-width digits
    "19.99\x00",
    "Infinityx",
]


# ---- valid amounts ------------------------------------------------------------------


@BOUNDED
@given(valid_amounts)
@example(Decimal("0.01"))
@example(MAX_AMOUNT)
def test_every_amount_round_trips_through_its_two_place_string(amount: Decimal) -> None:
    text = MONEY.dump_python(amount, mode="json")
    assert TWO_PLACES.fullmatch(text), text
    assert DOCUMENTED.fullmatch(text), text  # what we send, we also accept
    parsed = accepted(via_type(text))
    assert parsed == amount
    assert str(parsed) == text  # always quantised to cents: the same two places back
    assert MONEY.dump_python(parsed, mode="json") == text


@BOUNDED
@given(valid_amounts.flatmap(lambda a: st.tuples(st.just(a), spellings(a))))
def test_a_spelling_is_accepted_exactly_when_the_documented_pattern_allows_it(
    pair: tuple[Decimal, str],
) -> None:
    """ "7", "7.0", "007.50", "+7", "7.", ".5": each either parses to its value (and
    answers with two places) or is refused, as the documented pattern says."""
    amount, text = pair
    if DOCUMENTED.fullmatch(text):
        assert accepted(via_type(text)) == amount
        assert accepted(via_order(text)) == amount
        assert str(accepted(via_order_json(json.dumps(text)))) == f"{amount:.2f}"
    else:
        assert via_type(text) is REJECTED
        assert via_order(text) is REJECTED


@BOUNDED
@given(valid_amounts)
def test_a_number_and_a_string_give_the_same_amount(amount: Decimal) -> None:
    # 12 significant digits at most: every amount is exactly the float's shortest repr.
    as_float = float(amount)
    assert accepted(via_order(as_float)) == accepted(via_order(str(amount))) == amount
    number_literal = repr(as_float) if "e" not in repr(as_float) else str(amount)
    assert accepted(via_order_json(number_literal)) == amount
    assert accepted(via_order_json(json.dumps(str(amount)))) == amount
    if amount == amount.to_integral_value():
        assert accepted(via_order(int(amount))) == amount
        assert accepted(via_order_json(str(int(amount)))) == amount


@BOUNDED
@given(valid_amounts, st.integers(0, 3))
def test_responses_always_carry_two_places(amount: Decimal, extra_zeros: int) -> None:
    # However the stored Decimal is spelled (7, 7.0, 7.000), the response says "7.00".
    plain = f"{amount.normalize():f}"
    if extra_zeros:
        plain += ("" if "." in plain else ".") + "0" * extra_zeros
    stored = Decimal(plain)
    assert stored == amount
    summary = PaymentSummary.model_validate(
        {
            "payment_id": "6f0c1a52-7c5e-4c1b-9b43-3f7d6f0a9a10",
            "status": "PENDING",
            "amount": stored,
        }
    )
    dumped = json.loads(summary.model_dump_json())["amount"]
    assert dumped == f"{amount:.2f}"
    assert TWO_PLACES.fullmatch(dumped)


# ---- the reference model, for any input of each kind --------------------------------


@BOUNDED
@given(st.floats(allow_nan=True, allow_infinity=True))
@example(0.1 + 0.2)
@example(19.99 * 3)
@example(1.1 + 2.2)
@example(0.07 * 100)
def test_floats_are_taken_at_their_shortest_repr_never_rounded(value: float) -> None:
    """A float is accepted exactly when its shortest repr is an amount, and then as that
    value: 0.1 + 0.2 (0.30000000000000004) is refused, never rounded to 0.30."""
    outcome = via_order(value)
    if math.isfinite(value) and is_amount(Decimal(repr(value))):
        assert outcome == Decimal(repr(value))
    else:
        assert outcome is REJECTED


@BOUNDED
@given(st.integers())
@example(10**5000)
@example(-(10**5000))
def test_integers_are_amounts_when_in_range(value: int) -> None:
    outcome = via_order(value)
    if 0 < value <= MAX_AMOUNT:
        assert outcome == Decimal(value)
    else:
        assert outcome is REJECTED


@BOUNDED
@given(st.decimals(allow_nan=True, allow_infinity=True))
def test_decimals_follow_the_reference_model(value: Decimal) -> None:
    outcome = via_type(value)
    if is_amount(value):
        assert outcome == value
    else:
        assert outcome is REJECTED


@BOUNDED
@given(
    st.one_of(
        st.text(),
        st.text(alphabet="0123456789.+-eE_, \t", max_size=20),
        st.from_regex(r"[+-]?\d{0,14}(\.\d{0,6})?", fullmatch=True),
        st.from_regex(r"\d{20,60}(\.\d{0,40})?", fullmatch=True),  # beyond Decimal's precision
        st.from_regex(DOCUMENTED, fullmatch=True),
    )
)
@example("9" * 28)
@example("9" * 27 + ".5")
@example("1" + "0" * 40)
def test_any_string_is_accepted_only_in_the_documented_form(text: str) -> None:
    outcome = via_order(text)
    if DOCUMENTED.fullmatch(text):
        assert is_amount(Decimal(text)), "the documented pattern admits a non-amount"
        assert outcome == Decimal(text)
    else:
        assert outcome is REJECTED


# ---- rejections ---------------------------------------------------------------------


@BOUNDED
@given(sub_cent_amounts())
@example(Decimal("19.999"))
@example(Decimal("0.001"))
@example(Decimal("9999999999.991"))
def test_more_than_two_places_is_rejected_as_string_and_as_number(value: Decimal) -> None:
    assert via_type(value) is REJECTED
    assert via_order(f"{value:f}") is REJECTED
    assert via_order_json(json.dumps(f"{value:f}")) is REJECTED
    # As a JSON number too: the API decodes numbers exactly, however many digits.
    assert via_order_json(f"{value:f}") is REJECTED
    if len(value.as_tuple().digits) <= 15:  # a float that holds it exactly
        assert via_order(float(value)) is REJECTED


@BOUNDED
@given(non_positive)
def test_zero_and_negative_are_rejected(value: Decimal) -> None:
    assert via_type(value) is REJECTED
    assert via_order(f"{value:f}") is REJECTED
    assert via_order(float(value)) is REJECTED
    assert via_order_json(f"{value:f}") is REJECTED
    if value == value.to_integral_value():
        assert via_order(int(value)) is REJECTED


@BOUNDED
@given(valid_amounts, st.sampled_from(WHITESPACE), st.sampled_from(["lead", "trail", "inside"]))
def test_whitespace_anywhere_is_rejected(amount: Decimal, space: str, where: str) -> None:
    text = f"{amount:.2f}"
    spaced = {
        "lead": space + text,
        "trail": text + space,
        "inside": text[:1] + space + text[1:],
    }[where]
    assert via_order(spaced) is REJECTED
    assert via_order_json(json.dumps(spaced)) is REJECTED


@pytest.mark.parametrize("value", NON_FINITE, ids=short_id)
def test_nan_and_infinity_are_rejected(value: Any) -> None:
    assert via_type(value) is REJECTED
    assert via_order(value) is REJECTED


@pytest.mark.parametrize(
    "literal", ["NaN", "Infinity", "-Infinity", "1e999999", "-1e999999", "1e-999999"]
)
def test_non_finite_json_numbers_are_rejected(literal: str) -> None:
    # Python's json module reads NaN and Infinity; 1e999999 overflows to inf.
    assert via_order_json(literal) is REJECTED


@pytest.mark.parametrize("value", HUGE, ids=short_id)
def test_huge_and_tiny_magnitudes_are_rejected(value: Any) -> None:
    assert via_type(value) is REJECTED
    assert via_order(value) is REJECTED


@pytest.mark.parametrize("value", NOT_NUMBERS, ids=short_id)
def test_non_numbers_are_rejected(value: Any) -> None:
    assert via_type(value) is REJECTED
    assert via_order(value) is REJECTED


@BOUNDED
@given(
    st.one_of(
        st.none(),
        st.booleans(),
        st.binary(),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.complex_numbers(),
    )
)
def test_values_of_other_types_are_rejected(value: Any) -> None:
    assert via_type(value) is REJECTED
    assert via_order(value) is REJECTED


def test_an_over_long_json_integer_is_not_a_crash() -> None:
    """5000 digits: pydantic's parser refuses the number, json.loads (FastAPI) raises
    ValueError before validation (Python's int digit limit; FastAPI answers 400)."""
    literal = "1" + "0" * 5000
    with pytest.raises(ValidationError):
        CreateOrder.model_validate_json(json_body(literal))
    with pytest.raises(ValueError, match="digits"):
        json.loads(json_body(literal))


@pytest.mark.parametrize(
    "literal",
    ["19.9900000000000000001", "0.1000000000000000055511151231", "9999999999.9900000000000001"],
)
def test_json_numbers_with_more_digits_than_a_float_holds_are_rejected(literal: str) -> None:
    """A float would round these to two places; the API's exact decoding does not."""
    assert via_order_json(literal) is REJECTED


# contracts.Money (what consumers parse message amounts with) once accepted any finite
# Decimal: 1E+999999 became a 1,000,003-character string in the payment request.
@pytest.mark.parametrize(
    "value", ["-5.00", "0", "0.001", "1e999999", "\u0661\u0662", "1_0", "99999999999"]
)
def test_message_amounts_outside_the_contract_are_rejected(value: str) -> None:
    with pytest.raises(ValidationError):
        MONEY.validate_json(json.dumps(value))


@BOUNDED
@given(valid_amounts)
def test_message_amounts_round_trip(amount: Decimal) -> None:
    """The contracts' Money: what the saga and consumers exchange, two places each way."""
    wire = MONEY.dump_json(amount)
    assert json.loads(wire) == f"{amount:.2f}"
    assert MONEY.validate_json(wire) == amount
