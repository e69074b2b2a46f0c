"""The checkout saga as a pure state machine: (state, message) -> transition. No I/O.

```
STARTED ──CheckoutRequested──▶ PAYMENT_PENDING ──PaymentSucceeded──▶ PAID
                                       └────────PaymentDeclined───▶ FAILED
```
PAID and FAILED are final. An input that does not fit the current state (a late
duplicate outcome, a repeated request) changes nothing; its transition says so in
`step`, so the checkout's history shows it.

Each transition is applied where its input arises, in one transaction: the first by
the API (`checkout_api.usecases.checkout_order`, in the checkout's own statement), the
payment outcomes by the payment step through the shell (`saga.orchestrator`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from saga.inputs import CheckoutRequested, PaymentDeclined, PaymentSucceeded, SagaInput


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


Effect = RequestPayment | CompletePayment | FailPayment


@dataclass(frozen=True)
class Step:
    """One line of the checkout's history."""

    name: str
    status: str
    detail: str | None = None


@dataclass(frozen=True)
class Transition:
    """What applying a message means: the new state, its history line and its effects."""

    state: CheckoutState
    step: Step
    effects: tuple[Effect, ...] = ()
    failure_reason: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.effects)


def decide(state: CheckoutState, message: SagaInput) -> Transition:
    """The saga's rules; every (state, message) pair has an answer."""
    match state, message:
        case CheckoutState.STARTED, CheckoutRequested():
            return Transition(
                CheckoutState.PAYMENT_PENDING,
                Step("payment.requested", CheckoutState.PAYMENT_PENDING, "charge sent"),
                (RequestPayment(),),
            )
        case CheckoutState.PAYMENT_PENDING, PaymentSucceeded(provider_payment_id=ref):
            return Transition(
                CheckoutState.PAID,
                Step(
                    "payment.succeeded",
                    CheckoutState.PAID,
                    f"provider payment {ref}{_after(message.attempts)}",
                ),
                (CompletePayment(ref),),
            )
        case CheckoutState.PAYMENT_PENDING, PaymentDeclined(reason=reason):
            return Transition(
                CheckoutState.FAILED,
                Step(
                    "payment.declined", CheckoutState.FAILED, f"{reason}{_after(message.attempts)}"
                ),
                (FailPayment(reason),),
                failure_reason=reason,
            )
        case _:
            return Transition(
                state,
                Step(
                    f"{message.message_type}.ignored",
                    state,
                    f"{message.message_type} does not apply to a {state} checkout",
                ),
            )


def _after(attempts: int) -> str:
    return f" after {attempts} attempts" if attempts > 1 else ""
