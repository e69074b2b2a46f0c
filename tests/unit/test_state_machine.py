"""The saga's rules, exhaustively: every state against every message."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import replace

import pytest

from checkout_api.usecases.checkout_order import first_transition
from saga.inputs import CheckoutRequested, PaymentDeclined, PaymentSucceeded, SagaInput
from saga.state_machine import (
    CheckoutState,
    CompletePayment,
    FailPayment,
    RequestPayment,
    decide,
)

CHECKOUT = uuid.uuid4()
REQUESTED = CheckoutRequested(checkout_id=CHECKOUT)
SUCCEEDED = PaymentSucceeded(checkout_id=CHECKOUT, provider_payment_id="p-1")
DECLINED = PaymentDeclined(checkout_id=CHECKOUT, reason="card_declined")
MESSAGES: list[SagaInput] = [REQUESTED, SUCCEEDED, DECLINED]

EXPECTED = {
    (CheckoutState.STARTED, "CheckoutRequested"): (CheckoutState.PAYMENT_PENDING, RequestPayment()),
    (CheckoutState.PAYMENT_PENDING, "PaymentSucceeded"): (
        CheckoutState.PAID,
        CompletePayment("p-1"),
    ),
    (CheckoutState.PAYMENT_PENDING, "PaymentDeclined"): (
        CheckoutState.FAILED,
        FailPayment("card_declined"),
    ),
}


@pytest.mark.parametrize(
    ("state", "message"),
    list(itertools.product(CheckoutState, MESSAGES)),
    ids=lambda v: getattr(v, "message_type", str(v)),
)
def test_every_state_and_message(state: CheckoutState, message: SagaInput) -> None:
    transition = decide(state, message)
    expected = EXPECTED.get((state, message.message_type))
    if expected is None:
        assert transition.state is state
        assert transition.effects == ()
        assert transition.step.name.endswith(".ignored")
        assert not transition.changed
    else:
        assert (transition.state, transition.effects) == (expected[0], (expected[1],))
        assert transition.changed


def test_final_states_accept_nothing() -> None:
    for state in (CheckoutState.PAID, CheckoutState.FAILED):
        assert state.is_final
        for message in MESSAGES:
            assert decide(state, message).state is state


def test_decline_records_its_reason() -> None:
    transition = decide(CheckoutState.PAYMENT_PENDING, DECLINED)
    assert transition.failure_reason == "card_declined"
    assert transition.step.detail == "card_declined"


def test_a_duplicate_reply_after_paid_is_ignored_not_reapplied() -> None:
    paid = decide(CheckoutState.PAYMENT_PENDING, SUCCEEDED).state
    again = decide(paid, SUCCEEDED)
    assert again.state is CheckoutState.PAID
    assert again.effects == ()


def test_retried_outcomes_say_how_many_attempts_they_took() -> None:
    retried = replace(SUCCEEDED, attempts=3)
    assert decide(CheckoutState.PAYMENT_PENDING, retried).step.detail == (
        "provider payment p-1 after 3 attempts"
    )
    assert decide(CheckoutState.PAYMENT_PENDING, SUCCEEDED).step.detail == "provider payment p-1"


def test_the_api_applies_the_first_transition_as_the_state_machine_decides_it() -> None:
    transition = first_transition(CHECKOUT)
    assert transition == decide(CheckoutState.STARTED, REQUESTED)
    assert transition.state is CheckoutState.PAYMENT_PENDING
    assert (transition.step.name, transition.step.detail) == ("payment.requested", "charge sent")
    assert transition.effects == (RequestPayment(),)
