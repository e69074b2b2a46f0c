"""The saga's rules, exhaustively: every state against every input."""

from __future__ import annotations

import itertools
import math
import uuid
from dataclasses import replace

import pytest

from checkout_api.usecases.checkout_order import first_transition
from saga.inputs import (
    CheckoutRequested,
    DeadlineReached,
    PaymentDeclined,
    PaymentNotFound,
    PaymentSucceeded,
    PaymentUnanswered,
    SagaInput,
)
from saga.state_machine import (
    LATE_CHARGE_DEADLINE,
    LATE_CHARGE_WINDOW,
    PAYMENT_DEADLINE,
    RECONCILE_BACKOFF_FIRST,
    CancelDeadline,
    CheckoutState,
    CompletePayment,
    Effect,
    FailPayment,
    ReconcilePayment,
    RefundLateCharge,
    RequestPayment,
    SetDeadline,
    Transition,
    decide,
    late_charge_window,
    reconcile_backoff,
)

CHECKOUT = uuid.uuid4()
REQUESTED = CheckoutRequested(checkout_id=CHECKOUT)
SUCCEEDED = PaymentSucceeded(checkout_id=CHECKOUT, provider_payment_id="p-1")
DECLINED = PaymentDeclined(checkout_id=CHECKOUT, reason="card_declined")
DUE = DeadlineReached(checkout_id=CHECKOUT, kind=PAYMENT_DEADLINE)
NOT_FOUND = PaymentNotFound(checkout_id=CHECKOUT)
UNANSWERED = PaymentUnanswered(checkout_id=CHECKOUT, error="payments service answered 503")
LOOK = DeadlineReached(checkout_id=CHECKOUT, kind=LATE_CHARGE_DEADLINE)
MESSAGES: list[SagaInput] = [REQUESTED, SUCCEEDED, DECLINED, DUE, NOT_FOUND, UNANSWERED, LOOK]
STOP = CancelDeadline(PAYMENT_DEADLINE)

P, S = CheckoutState.PAYMENT_PENDING, CheckoutState
# (state, input) -> (new state, effects, step name); every pair not listed is ignored.
EXPECTED: dict[tuple[CheckoutState, str], tuple[CheckoutState, tuple[Effect, ...], str]] = {
    (S.STARTED, "CheckoutRequested"): (
        P,
        (RequestPayment(), SetDeadline(PAYMENT_DEADLINE)),
        "payment.requested",
    ),
    (P, "PaymentSucceeded"): (S.PAID, (CompletePayment("p-1"), STOP), "payment.succeeded"),
    (P, "PaymentDeclined"): (S.FAILED, (FailPayment("card_declined"), STOP), "payment.declined"),
    (P, "PaymentNotFound"): (
        S.FAILED,
        (FailPayment("payment_timeout"), STOP, SetDeadline(LATE_CHARGE_DEADLINE)),
        "payment.timed_out",
    ),
    (P, "DeadlineReached"): (
        P,
        (ReconcilePayment(), SetDeadline(PAYMENT_DEADLINE, reconcile_backoff(1))),
        "deadline.fired",
    ),
    (P, "PaymentUnanswered"): (P, (), "payment.reconciliation"),
    (S.FAILED, "PaymentSucceeded"): (
        S.FAILED,
        (RefundLateCharge("p-1"), CancelDeadline(LATE_CHARGE_DEADLINE)),
        "payment.late_success",
    ),
    # A look for a late charge (or a replayed charge command's lookup) found none taken:
    # recorded as such, nothing to do.
    (S.FAILED, "PaymentNotFound"): (S.FAILED, (), "late_charge.none"),
    (S.FAILED, "PaymentDeclined"): (S.FAILED, (), "late_charge.none"),
    # A look for a late charge (or a final checkout's charge command's lookup) went
    # unanswered: look again.
    (S.FAILED, "PaymentUnanswered"): (
        S.FAILED,
        (SetDeadline(LATE_CHARGE_DEADLINE, RECONCILE_BACKOFF_FIRST),),
        "late_charge.unanswered",
    ),
}
# The late-charge deadline in FAILED: looks again (by kind, so keyed apart from DUE's).
LOOKS_AGAIN = (
    S.FAILED,
    (ReconcilePayment(), SetDeadline(LATE_CHARGE_DEADLINE, reconcile_backoff(1))),
    "late_charge.lookup",
)


@pytest.mark.parametrize(
    ("state", "message"),
    list(itertools.product(CheckoutState, MESSAGES)),
    ids=lambda v: getattr(v, "message_type", str(v)),
)
def test_every_state_and_input(state: CheckoutState, message: SagaInput) -> None:
    transition = decide(state, message)
    expected = EXPECTED.get((state, message.message_type))
    if message == LOOK:
        expected = LOOKS_AGAIN if state is S.FAILED else None
    elif message == DUE and state is S.FAILED:
        expected = None
    if expected is None:
        assert transition.state is state
        assert transition.effects == ()
        assert transition.step.name == f"{message.message_type}.ignored"
        assert not transition.changed
    else:
        assert (transition.state, transition.effects, transition.step.name) == expected
        assert transition.step.status == transition.state


def test_final_states_never_change() -> None:
    for state in (CheckoutState.PAID, CheckoutState.FAILED):
        assert state.is_final
        for message in MESSAGES:
            assert decide(state, message).state is state


def test_every_way_out_of_payment_pending_cancels_the_deadline() -> None:
    for message in MESSAGES:
        transition = decide(CheckoutState.PAYMENT_PENDING, message)
        if transition.state.is_final:
            assert STOP in transition.effects, message


def test_decline_records_its_reason() -> None:
    transition = decide(CheckoutState.PAYMENT_PENDING, DECLINED)
    assert transition.failure_reason == "card_declined"
    assert transition.step.detail == "card_declined"


def test_no_charge_found_fails_with_payment_timeout() -> None:
    transition = decide(CheckoutState.PAYMENT_PENDING, NOT_FOUND)
    assert transition.failure_reason == "payment_timeout"


def test_an_outcome_found_by_reconciliation_says_so() -> None:
    found = replace(SUCCEEDED, reconciled=True)
    detail = decide(CheckoutState.PAYMENT_PENDING, found).step.detail
    assert detail == "provider payment p-1 (found by reconciliation)"
    declined = replace(DECLINED, reconciled=True)
    assert decide(CheckoutState.PAYMENT_PENDING, declined).failure_reason == "card_declined"


def test_an_unanswered_reconciliation_keeps_waiting_and_says_why() -> None:
    transition = decide(CheckoutState.PAYMENT_PENDING, UNANSWERED)
    assert transition.state is CheckoutState.PAYMENT_PENDING
    assert "payments service answered 503" in (transition.step.detail or "")


def test_each_firing_waits_longer_up_to_the_cap() -> None:
    waits = [
        decide(CheckoutState.PAYMENT_PENDING, replace(DUE, fired=n)).effects[1] for n in range(12)
    ]
    found = [w.after for w in waits if isinstance(w, SetDeadline)]
    afters = [a for a in found if a is not None]
    assert afters == found  # every wait a number (sorting would fail on a None)
    assert afters[:4] == [5.0, 10.0, 20.0, 40.0]
    assert afters == sorted(afters)
    assert max(afters) == 300.0


def test_a_deadline_of_another_kind_is_ignored() -> None:
    other = replace(DUE, kind="cancellation")
    assert decide(CheckoutState.PAYMENT_PENDING, other).effects == ()


def test_a_late_success_after_paid_is_a_duplicate_not_a_refund() -> None:
    again = decide(CheckoutState.PAID, SUCCEEDED)
    assert again.state is CheckoutState.PAID
    assert again.effects == ()


def test_a_late_success_after_failed_is_refunded_and_the_checkout_stays_failed() -> None:
    late = decide(CheckoutState.FAILED, SUCCEEDED)
    assert late.state is CheckoutState.FAILED
    # Refunded, and no more looking for a late charge: this is it.
    assert late.effects == (RefundLateCharge("p-1"), CancelDeadline(LATE_CHARGE_DEADLINE))
    assert late.failure_reason is None  # the checkout's own reason is kept by the shell


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
    assert transition.effects == (RequestPayment(), SetDeadline(PAYMENT_DEADLINE))


def _looks(window: float) -> list[tuple[float, Transition]]:
    """Every look of a checkout failed by its reconciliation, each with its age: the first
    when the deadline set by the failure fires (at `first` seconds), then as each sets
    it again."""
    first = 4.0
    looks: list[tuple[float, Transition]] = []
    age: float | None = first
    while age is not None:
        assert len(looks) < 100, "the looks never end"
        look = decide(S.FAILED, replace(LOOK, fired=len(looks), age=age), late_window=window)
        looks.append((age, look))
        again = [e for e in look.effects if isinstance(e, SetDeadline)]
        age = age + again[0].after if again and again[0].after is not None else None
    return looks


@pytest.mark.parametrize("window", [0.5, 4.0, LATE_CHARGE_WINDOW, 54.0, 600.0])
def test_a_failed_checkout_looks_for_a_late_charge_until_none_can_land(window: float) -> None:
    looks = _looks(window)
    assert all(ReconcilePayment() in t.effects for _, t in looks)
    ages = [age for age, _ in looks]
    # The last look is the first at or after the window's end: no charge on its way can
    # land after it; every earlier one sets the next.
    assert ages[-1] >= window
    assert all(age < window for age in ages[:-1])
    assert not any(isinstance(e, SetDeadline) for e in looks[-1][1].effects)
    # Bounded: the backoff doubles, so a handful of looks cover even a long window.
    assert len(looks) <= 2 + math.ceil(math.log2(max(window, 2.0)))
    assert looks[-1][1].step.detail == (
        "asking the Payment Service for a charge that landed after the checkout failed "
        f"(look {len(looks)}, {ages[-1]:.0f} s after it failed, window {window:g} s); "
        "the last: no charge on its way can land any more"
    )


def test_the_looks_follow_the_backoff_within_the_window() -> None:
    ages = [age for age, _ in _looks(54.0)]
    assert ages == [4.0, 9.0, 19.0, 39.0, 54.0]


def test_the_late_charge_window_outlasts_every_attempt_of_a_call() -> None:
    # 3 attempts of 3 s with up to 2 s between them, and one timeout's margin: the
    # window of the defaults.
    assert late_charge_window(3.0, 3, 2.0) == LATE_CHARGE_WINDOW == 18.0
    assert late_charge_window(12.0, 3, 2.0) == 54.0
    assert late_charge_window(1.0, 1, 2.0) == 4.0


def test_an_unanswered_look_for_a_late_charge_asks_again() -> None:
    again = decide(S.FAILED, UNANSWERED)
    assert again.state is S.FAILED
    assert again.effects == (SetDeadline(LATE_CHARGE_DEADLINE, RECONCILE_BACKOFF_FIRST),)
    assert again.step.detail == (
        "no answer (payments service answered 503); looking for a late charge again in 5 s"
    )
    # A PAID checkout asks nothing (the payment step does not even look for it).
    assert decide(S.PAID, UNANSWERED).effects == ()


def test_only_a_timed_out_checkout_looks_for_a_late_charge() -> None:
    declined = decide(CheckoutState.PAYMENT_PENDING, DECLINED)
    assert not any(isinstance(e, SetDeadline) for e in declined.effects)
