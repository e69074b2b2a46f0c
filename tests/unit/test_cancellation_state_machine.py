"""The cancellation saga's rules, exhaustively: every state against every input."""

from __future__ import annotations

import itertools

import pytest

from saga.cancellation_state_machine import (
    CancellationInput,
    CancellationState,
    CancelOrder,
    CancelProduction,
    CheckoutEnded,
    CompleteRefund,
    DeadlineFired,
    Effect,
    OrderSituation,
    ProductionCancelled,
    ProductionRefused,
    RefundSucceeded,
    Reject,
    Requested,
    RequestRefund,
    ResendRefund,
    decide,
)

S = CancellationState

INPUTS: dict[str, CancellationInput] = {
    "requested-unpaid": Requested(OrderSituation.UNPAID),
    "requested-active": Requested(OrderSituation.CHECKOUT_ACTIVE),
    "requested-paid": Requested(OrderSituation.PAID),
    "checkout-paid": CheckoutEnded(paid=True),
    "checkout-failed": CheckoutEnded(paid=False),
    "production-cancelled": ProductionCancelled(),
    "production-refused": ProductionRefused("already_in_production"),
    "refund-succeeded": RefundSucceeded("r-1", attempts=3),
    "deadline": DeadlineFired("step"),
}

EXPECTED: dict[tuple[CancellationState, str], tuple[CancellationState, tuple[Effect, ...]]] = {
    (S.REQUESTED, "requested-unpaid"): (S.CANCELLED, (CancelOrder(refunded=False),)),
    (S.REQUESTED, "requested-active"): (S.WAITING_FOR_CHECKOUT, ()),
    (S.REQUESTED, "requested-paid"): (S.CANCELLING_PRODUCTION, (CancelProduction(),)),
    (S.WAITING_FOR_CHECKOUT, "checkout-failed"): (S.CANCELLED, (CancelOrder(refunded=False),)),
    (S.WAITING_FOR_CHECKOUT, "checkout-paid"): (S.CANCELLING_PRODUCTION, (CancelProduction(),)),
    (S.CANCELLING_PRODUCTION, "production-cancelled"): (S.REFUNDING, (RequestRefund(),)),
    (S.CANCELLING_PRODUCTION, "production-refused"): (
        S.REJECTED,
        (Reject("already_in_production"),),
    ),
    (S.REFUNDING, "refund-succeeded"): (
        S.CANCELLED,
        (CompleteRefund("r-1"), CancelOrder(refunded=True)),
    ),
    # A deadline re-sends the pending step's command (idempotent) and stays.
    (S.CANCELLING_PRODUCTION, "deadline"): (S.CANCELLING_PRODUCTION, (CancelProduction(),)),
    (S.REFUNDING, "deadline"): (S.REFUNDING, (ResendRefund(),)),
}


@pytest.mark.parametrize(
    ("state", "name"), list(itertools.product(S, INPUTS)), ids=lambda v: str(v)
)
def test_every_state_and_input(state: CancellationState, name: str) -> None:
    message = INPUTS[name]
    transition = decide(state, message)
    expected = EXPECTED.get((state, name))
    if expected is None:
        assert transition.state is state
        assert transition.effects == ()
        assert not transition.changed
        assert transition.step.name == f"{message.name}.ignored"
        assert transition.step.detail == f"{message.name} does not apply to a {state} cancellation"
    else:
        assert (transition.state, transition.effects) == expected
        assert transition.changed
        assert transition.step.status == transition.state


def test_final_states_are_final() -> None:
    for state in S:
        assert state.is_final == (state in (S.CANCELLED, S.REJECTED))
        if state.is_final:
            assert all(not decide(state, m).changed for m in INPUTS.values())


def test_a_refusal_names_its_reason_and_changes_nothing_else() -> None:
    transition = decide(S.CANCELLING_PRODUCTION, ProductionRefused("already_in_production"))
    assert transition.rejection_reason == "already_in_production"
    assert not any(
        isinstance(e, CancelOrder | RequestRefund | CompleteRefund) for e in transition.effects
    )


def test_only_a_refund_in_hand_cancels_a_paid_order_with_refunded_true() -> None:
    for state, message in itertools.product(S, INPUTS.values()):
        effects = decide(state, message).effects
        if CancelOrder(refunded=True) in effects:
            assert any(isinstance(e, CompleteRefund) for e in effects)


def test_steps_name_attempts_when_the_refund_took_several() -> None:
    detail = decide(S.REFUNDING, RefundSucceeded("r-9", attempts=3)).step.detail
    assert detail == "refunded (provider refund r-9) after 3 attempts"
    assert (
        decide(S.REFUNDING, RefundSucceeded("r-9")).step.detail == "refunded (provider refund r-9)"
    )
