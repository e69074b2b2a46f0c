"""The cancellation saga as a pure state machine: (state, input) -> transition. No I/O.

```
REQUESTED ─Requested(UNPAID)──────────────────────────────────────────────────▶ CANCELLED
    │      └Requested(CHECKOUT_ACTIVE)─▶ WAITING_FOR_CHECKOUT ─CheckoutEnded(FAILED)─▶ CANCELLED
    │                                           └CheckoutEnded(PAID)─┐
    └─Requested(PAID)─────────────────────────────────────────────────┴▶ CANCELLING_PRODUCTION
CANCELLING_PRODUCTION ─ProductionCancelled─▶ REFUNDING ─RefundSucceeded─▶ CANCELLED
          └─ProductionRefused───────────────▶ REJECTED
```

The order of a paid order's steps follows the saga theory (Garcia-Molina and Salem,
1987; Richardson's compensatable / pivot / retriable): cancelling the production order
is the pivot, the one step that may say no, and when it does (409
`already_in_production`) the cancellation ends REJECTED and nothing else changes: the
charge stays. After the pivot only retriable steps follow: the refund is retried until
it succeeds (its command waits in a dead-letter queue past the retries, never dropped),
then the order is CANCELLED. Nothing is refunded before production has let the order
go, and nothing unless a checkout was PAID.

CANCELLED and REJECTED are final. An input that does not fit the state (a duplicate, a
reordered or a late reply) changes nothing; its transition says so in `step`, so the
cancellation's history shows it. A deadline firing (issue 13: a step that has waited
too long) sends the pending step's command again; the steps are idempotent (the key is
the cancellation), so at worst it is a harmless repeat. The shells apply the effects
and the new state in one transaction (`saga.cancellation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class CancellationState(StrEnum):
    REQUESTED = "REQUESTED"
    WAITING_FOR_CHECKOUT = "WAITING_FOR_CHECKOUT"
    CANCELLING_PRODUCTION = "CANCELLING_PRODUCTION"
    REFUNDING = "REFUNDING"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"

    @property
    def is_final(self) -> bool:
        return self in (CancellationState.CANCELLED, CancellationState.REJECTED)


class OrderSituation(StrEnum):
    """What the order is when the cancellation is requested (read under the order's lock)."""

    UNPAID = "UNPAID"  # PENDING or FAILED, no active checkout: nothing was charged
    CHECKOUT_ACTIVE = "CHECKOUT_ACTIVE"  # a charge may be under way: wait for its end
    PAID = "PAID"


# Inputs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requested:
    """The client asked to cancel (applied by the API, in the request's transaction)."""

    situation: OrderSituation
    name = "cancellation.requested"


@dataclass(frozen=True)
class CheckoutEnded:
    """The checkout the cancellation waits for reached its final state."""

    paid: bool
    name = "checkout.ended"


@dataclass(frozen=True)
class ProductionCancelled:
    """The Production Service let the order go (or had not seen it, and now never will)."""

    name = "production.cancelled"


@dataclass(frozen=True)
class ProductionRefused:
    """The Production Service answered 409: the order is already being made."""

    reason: str
    name = "production.refused"


@dataclass(frozen=True)
class RefundSucceeded:
    """The Payment Service refunded the payment."""

    provider_refund_id: str
    attempts: int = 1
    name = "refund.succeeded"


@dataclass(frozen=True)
class DeadlineFired:
    """A deadline set for the cancellation came due (issue 13)."""

    kind: str
    name = "deadline.fired"


CancellationInput = (
    Requested
    | CheckoutEnded
    | ProductionCancelled
    | ProductionRefused
    | RefundSucceeded
    | DeadlineFired
)

# Effects -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CancelOrder:
    """Order CANCELLED, publish `OrderCancelled` (with the refund when there was one)."""

    refunded: bool


@dataclass(frozen=True)
class CancelProduction:
    """Send `CancelProductionOrder` to the production cancellation step."""


@dataclass(frozen=True)
class RequestRefund:
    """Record the PENDING refund of the order's payment and send `RefundPayment`."""


@dataclass(frozen=True)
class ResendRefund:
    """Send `RefundPayment` again for the refund already recorded (same key)."""


@dataclass(frozen=True)
class CompleteRefund:
    """Refund SUCCEEDED, payment REFUNDED, publish `OrderPaymentRefunded`."""

    provider_refund_id: str


@dataclass(frozen=True)
class Reject:
    """Publish `OrderCancellationRejected`; the order, its payment and production stay."""

    reason: str


Effect = CancelOrder | CancelProduction | RequestRefund | ResendRefund | CompleteRefund | Reject


@dataclass(frozen=True)
class Step:
    """One line of the cancellation's history."""

    name: str
    status: str
    detail: str | None = None


@dataclass(frozen=True)
class Transition:
    """What applying an input means: the new state, its history line and its effects."""

    state: CancellationState
    step: Step
    effects: tuple[Effect, ...] = ()
    rejection_reason: str | None = None
    moved: bool = True

    @property
    def changed(self) -> bool:
        """Whether the state or anything outside it changes (False: ignored)."""
        return self.moved or bool(self.effects)


S = CancellationState


def decide(state: CancellationState, message: CancellationInput) -> Transition:
    """The saga's rules; every (state, input) pair has an answer."""
    match state, message:
        case S.REQUESTED, Requested(situation=OrderSituation.UNPAID):
            return Transition(
                S.CANCELLED,
                Step("order.cancelled", S.CANCELLED, "nothing was charged: no refund"),
                (CancelOrder(refunded=False),),
            )
        case S.REQUESTED, Requested(situation=OrderSituation.CHECKOUT_ACTIVE):
            return Transition(
                S.WAITING_FOR_CHECKOUT,
                Step(
                    "checkout.awaited",
                    S.WAITING_FOR_CHECKOUT,
                    "a checkout of the order is under way; waiting for its end",
                ),
            )
        case S.REQUESTED, Requested(situation=OrderSituation.PAID):
            return _cancel_production("the order is paid")
        case S.WAITING_FOR_CHECKOUT, CheckoutEnded(paid=False):
            return Transition(
                S.CANCELLED,
                Step("order.cancelled", S.CANCELLED, "the checkout failed: nothing to refund"),
                (CancelOrder(refunded=False),),
            )
        case S.WAITING_FOR_CHECKOUT, CheckoutEnded(paid=True):
            return _cancel_production("the checkout ended PAID")
        case S.CANCELLING_PRODUCTION, ProductionCancelled():
            return Transition(
                S.REFUNDING,
                Step("refund.requested", S.REFUNDING, "production cancelled; refunding in full"),
                (RequestRefund(),),
            )
        case S.CANCELLING_PRODUCTION, ProductionRefused(reason=reason):
            return Transition(
                S.REJECTED,
                Step("cancellation.rejected", S.REJECTED, f"production refused: {reason}"),
                (Reject(reason),),
                rejection_reason=reason,
            )
        case S.REFUNDING, RefundSucceeded(provider_refund_id=ref, attempts=attempts):
            after = f" after {attempts} attempts" if attempts > 1 else ""
            return Transition(
                S.CANCELLED,
                Step("order.cancelled", S.CANCELLED, f"refunded (provider refund {ref}){after}"),
                (CompleteRefund(ref), CancelOrder(refunded=True)),
            )
        case S.CANCELLING_PRODUCTION, DeadlineFired(kind=kind):
            return Transition(
                state,
                Step("production.cancel.resent", state, f"deadline {kind}: asking again"),
                (CancelProduction(),),
                moved=False,
            )
        case S.REFUNDING, DeadlineFired(kind=kind):
            return Transition(
                state,
                Step("refund.resent", state, f"deadline {kind}: asking again"),
                (ResendRefund(),),
                moved=False,
            )
        case _:
            return Transition(
                state,
                Step(
                    f"{message.name}.ignored",
                    state,
                    f"{message.name} does not apply to a {state} cancellation",
                ),
                moved=False,
            )


def _cancel_production(why: str) -> Transition:
    return Transition(
        S.CANCELLING_PRODUCTION,
        Step(
            "production.cancel.requested",
            S.CANCELLING_PRODUCTION,
            f"{why}; cancelling its production order first",
        ),
        (CancelProduction(),),
    )
