"""The checkout saga as a pure state machine: (state, input) -> transition. No I/O.

```
STARTED ──CheckoutRequested──▶ PAYMENT_PENDING ──PaymentSucceeded──▶ PAID
                                 │   ▲      ├──PaymentDeclined────▶ FAILED
                   DeadlineReached   │      └──PaymentNotFound────▶ FAILED (payment_timeout)
                 (ask the service)───┘  PaymentUnanswered: stays, asked again later
FAILED ──PaymentSucceeded (a late answer)──▶ FAILED, the charge refunded
   ├──DeadlineReached(late_charge): look for a charge that landed after all
   │                                (again, until the late-charge window is over)
   └──PaymentUnanswered: look again soon
```
PAID and FAILED are final. An input that does not fit the current state (a late
duplicate outcome, a repeated request, a deadline after the end) changes nothing; its
transition says so in `step`, so the checkout's history shows it.

Time is an input like any other: entering PAYMENT_PENDING sets the payment deadline,
leaving it cancels it; when it comes due the saga asks the Payment Service what became
of the charge (`ReconcilePayment`) and sets the deadline again with a growing backoff,
so an unanswered question is asked again. A charge that succeeds after the checkout
ended FAILED is refunded: nobody pays for a failed checkout.

A checkout failed by its reconciliation (no charge found: `payment_timeout`) may still
be charged by a call that was on its way then: the payment step refuses every call
after the end, but one already sent lands when it lands, and its answer may never
reach the saga (the saga killed, the connection reset while it waited). So that end
sets one more deadline, `late_charge`: it asks the Payment Service again, the first
time after `CHECKOUT_PAYMENT_DEADLINE`, then with the reconciliation's backoff, until
the checkout has been FAILED longer than the late-charge window (`late_charge_window`:
how long a call already on its way can still land, derived from the HTTP settings),
the last look at or after it. A charge found is a late success like any other
(refunded), and stops the looking; a look left unanswered (the service down) is asked
again, so the last look is always one the service answered.

Each transition is applied where its input arises, in one transaction: the first by
the API (`checkout_api.usecases.checkout_order`, in the checkout's own statement), the
payment outcomes by the payment step through the shell (`saga.orchestrator`), a
deadline by the claimer that found it due (`saga.deadlines`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from saga.inputs import (
    CheckoutRequested,
    DeadlineReached,
    PaymentDeclined,
    PaymentNotFound,
    PaymentSucceeded,
    PaymentUnanswered,
    SagaInput,
)

# Re-exported: the checkout's deadline effects and history lines are the shared ones.
# A `SetDeadline` without `after` is due after the configured time for its kind
# (`CHECKOUT_PAYMENT_DEADLINE`).
from saga.transitions import CancelDeadline as CancelDeadline
from saga.transitions import SetDeadline as SetDeadline
from saga.transitions import Step as Step
from saga.transitions import after_attempts, doubling_backoff, ignored

PAYMENT_DEADLINE = "payment"
PAYMENT_TIMEOUT = "payment_timeout"
LATE_CHARGE_DEADLINE = "late_charge"
LATE_CHARGE_WINDOW = 18.0
"""Seconds after a checkout failed by its reconciliation during which a charge already on
its way may still land, with the HTTP defaults (`late_charge_window`)."""
# Seconds until a reconciliation is asked again: doubling from the first, at most the cap.
RECONCILE_BACKOFF_FIRST = 5.0
RECONCILE_BACKOFF_CAP = 300.0


class CheckoutState(StrEnum):
    STARTED = "STARTED"
    PAYMENT_PENDING = "PAYMENT_PENDING"
    PAID = "PAID"
    FAILED = "FAILED"

    @property
    def is_final(self) -> bool:
        return self in (CheckoutState.PAID, CheckoutState.FAILED)


@dataclass(frozen=True)
class RequestPayment:
    """Create the PENDING payment and send `ChargePayment` to the payment step."""


@dataclass(frozen=True)
class CompletePayment:
    """Payment SUCCESSFUL, order PAID, publish `OrderPaid`."""

    provider_payment_id: str


@dataclass(frozen=True)
class FailPayment:
    """Payment FAILED, order FAILED, publish `OrderPaymentFailed`."""

    reason: str


@dataclass(frozen=True)
class ReconcilePayment:
    """Send `ReconcilePayment`: ask the Payment Service for the charge made with the key."""


@dataclass(frozen=True)
class RefundLateCharge:
    """A charge succeeded after the checkout ended FAILED: record it and refund it."""

    provider_payment_id: str


Effect = (
    RequestPayment
    | CompletePayment
    | FailPayment
    | SetDeadline
    | CancelDeadline
    | ReconcilePayment
    | RefundLateCharge
)


@dataclass(frozen=True)
class Transition:
    """What applying an input means: the new state, its history line and its effects."""

    state: CheckoutState
    step: Step
    effects: tuple[Effect, ...] = ()
    failure_reason: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.effects)


def reconcile_backoff(fired: int) -> float:
    """Seconds until the `fired`-th reconciliation (1-based) is followed by the next."""
    return doubling_backoff(fired, RECONCILE_BACKOFF_FIRST, RECONCILE_BACKOFF_CAP)


def late_charge_window(http_timeout: float, http_attempts: int, max_backoff: float) -> float:
    """Seconds after a checkout failed within which a charge already on its way can land.

    The payment step checks the checkout's state before it calls (`saga.payment_step`),
    so a call it makes for a checkout that then fails began before the failure. That
    call is tried at most `http_attempts` times in process, each bounded by
    `http_timeout`, with at most `max_backoff` between them: its last request is sent
    within `http_attempts * (http_timeout + max_backoff)` of the check. One more
    `http_timeout` is the margin for a request the service still finishes after the
    client gave up on it."""
    return http_attempts * (http_timeout + max_backoff) + http_timeout


def decide(
    state: CheckoutState, message: SagaInput, *, late_window: float = LATE_CHARGE_WINDOW
) -> Transition:
    """The saga's rules; every (state, input) pair has an answer. `late_window`: the
    late-charge window (`late_charge_window`), in seconds."""
    pending, failed = CheckoutState.PAYMENT_PENDING, CheckoutState.FAILED
    stop_waiting = CancelDeadline(PAYMENT_DEADLINE)
    match state, message:
        case CheckoutState.STARTED, CheckoutRequested():
            return Transition(
                pending,
                Step("payment.requested", pending, "charge sent"),
                (RequestPayment(), SetDeadline(PAYMENT_DEADLINE)),
            )
        case CheckoutState.PAYMENT_PENDING, PaymentSucceeded(provider_payment_id=ref):
            return Transition(
                CheckoutState.PAID,
                Step(
                    "payment.succeeded",
                    CheckoutState.PAID,
                    f"provider payment {ref}{after_attempts(message.attempts)}{_found(message)}",
                ),
                (CompletePayment(ref), stop_waiting),
            )
        case CheckoutState.PAYMENT_PENDING, PaymentDeclined(reason=reason):
            return Transition(
                failed,
                Step(
                    "payment.declined",
                    failed,
                    f"{reason}{after_attempts(message.attempts)}{_found(message)}",
                ),
                (FailPayment(reason), stop_waiting),
                failure_reason=reason,
            )
        case CheckoutState.PAYMENT_PENDING, PaymentNotFound():
            return Transition(
                failed,
                Step(
                    "payment.timed_out",
                    failed,
                    "reconciliation: the Payment Service has no charge with the checkout's key",
                ),
                (FailPayment(PAYMENT_TIMEOUT), stop_waiting, SetDeadline(LATE_CHARGE_DEADLINE)),
                failure_reason=PAYMENT_TIMEOUT,
            )
        case CheckoutState.PAYMENT_PENDING, DeadlineReached(kind="payment", fired=fired):
            again = reconcile_backoff(fired + 1)
            return Transition(
                pending,
                Step(
                    "deadline.fired",
                    pending,
                    f"payment deadline (time {fired + 1}): asking the Payment Service; "
                    f"again in {again:g} s unless it answers",
                ),
                (ReconcilePayment(), SetDeadline(PAYMENT_DEADLINE, again)),
            )
        case CheckoutState.PAYMENT_PENDING, PaymentUnanswered(error=error):
            # Nothing to do but wait: the deadline, set again when it fired, asks again.
            return Transition(
                pending,
                Step(
                    "payment.reconciliation",
                    pending,
                    f"no answer ({error}); asking again when the deadline fires",
                ),
            )
        case CheckoutState.FAILED, PaymentSucceeded(provider_payment_id=ref):
            return Transition(
                failed,
                Step(
                    "payment.late_success",
                    failed,
                    f"provider payment {ref} succeeded after the checkout failed: refunding it",
                ),
                (RefundLateCharge(ref), CancelDeadline(LATE_CHARGE_DEADLINE)),
            )
        case CheckoutState.FAILED, DeadlineReached(kind="late_charge", fired=fired, age=age):
            look = fired + 1
            more: tuple[Effect, ...] = ()
            if age < late_window:
                # The last look falls at or after the window's end, never before it.
                after = min(reconcile_backoff(look), late_window - age)
                more = (SetDeadline(LATE_CHARGE_DEADLINE, after),)
                then = f"; again in {after:g} s"
            else:
                then = "; the last: no charge on its way can land any more"
            return Transition(
                failed,
                Step(
                    "late_charge.lookup",
                    failed,
                    f"asking the Payment Service for a charge that landed after the checkout "
                    f"failed (look {look}, {age:.0f} s after it failed, window "
                    f"{late_window:g} s){then}",
                ),
                (ReconcilePayment(), *more),
            )
        case CheckoutState.FAILED, PaymentNotFound() | PaymentDeclined():
            # A look for a late charge (or a replayed charge command's lookup) found none
            # taken: nothing to refund, and the looks go on as they were.
            found = (
                "no charge with the checkout's key"
                if isinstance(message, PaymentNotFound)
                else f"the charge was declined ({message.reason})"
            )
            return Transition(
                failed,
                Step(
                    "late_charge.none",
                    failed,
                    f"looked for a charge that landed after the checkout failed: {found}; "
                    "nothing to refund",
                ),
            )
        case CheckoutState.FAILED, PaymentUnanswered(error=error):
            # A look for a late charge went unanswered: it may have been the last one, so
            # ask again (the deadline keeps its start: the window does not move).
            return Transition(
                failed,
                Step(
                    "late_charge.unanswered",
                    failed,
                    f"no answer ({error}); looking for a late charge again in "
                    f"{RECONCILE_BACKOFF_FIRST:g} s",
                ),
                (SetDeadline(LATE_CHARGE_DEADLINE, RECONCILE_BACKOFF_FIRST),),
            )
        case _:
            return Transition(state, ignored(message.message_type, state, "checkout"))


def _found(message: PaymentSucceeded | PaymentDeclined) -> str:
    return " (found by reconciliation)" if message.reconciled else ""
