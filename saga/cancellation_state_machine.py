"""The cancellation saga as a pure state machine: (state, input) -> transition. No I/O.

```
REQUESTED ─Requested(UNPAID)──────────────────────────────────────────────────▶ CANCELLED
    │      └Requested(CHECKOUT_ACTIVE)─▶ WAITING_FOR_CHECKOUT ─CheckoutEnded(FAILED)─▶ CANCELLED
    │                                           └CheckoutEnded(PAID)─┐
    └─Requested(PAID)─────────────────────────────────────────────────┴▶ CANCELLING_PRODUCTION
CANCELLING_PRODUCTION ─ProductionCancelled─▶ REFUNDING ─RefundSucceeded─▶ CANCELLED
          └─ProductionRefused───────────────▶ REJECTED
WAITING_FOR_CHECKOUT ─DeadlineFired(checkout still active)─▶ WAITING_FOR_CHECKOUT, again later
                     └DeadlineFired(checkout ended: a repair)─▶ as CheckoutEnded
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
cancellation's history shows it. The shells apply the effects and the new state in one
transaction (`saga.cancellation`).

Time (CONTRACT.md section 8): a cancellation that waits for a checkout gets a deadline
(kind `checkout`), set by the transition into WAITING_FOR_CHECKOUT, due when the
checkout's own payment deadline has passed by `CHECKOUT_WAIT_MARGIN` (by then the
checkout has been reconciled, unless the Payment Service cannot be asked). The
checkout's end deletes it (`CheckoutEnded` cancels it in the same transaction). When it
fires, the claimer says what the checkout is now: still active, the cancellation keeps
waiting, the deadline set again with a growing backoff and the step saying so, so that
`checkout stuck` shows the cancellation with its deadline and the checkout it waits for;
already final (which the checkout's final transition should have seen: a repair, never
expected), the cancellation takes over as if the checkout's end had reached it.

CANCELLING_PRODUCTION and REFUNDING get no deadline: their commands are retried by the
broker's wait queues and parked in a dead-letter queue past the retries, which
`checkout stuck` lists with the replay that repairs it; a timer sending the command
again would race that parked copy (and a replay of it) for nothing. Their answer to a
deadline stays, for a row written by hand: the pending step's command sent again (the
steps are idempotent, the key is the cancellation: at worst a harmless repeat).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# Re-exported: the cancellation's deadline effects and history lines are the shared ones.
# A `SetDeadline` without `after` is due `CHECKOUT_WAIT_MARGIN` after the awaited
# checkout's payment deadline.
from saga.transitions import CancelDeadline as CancelDeadline
from saga.transitions import SetDeadline as SetDeadline
from saga.transitions import Step as Step
from saga.transitions import after_attempts, doubling_backoff, ignored


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
    fired: int = 0
    """How often this deadline fired before (its backoff grows with it)."""
    checkout: str | None = None
    """The awaited checkout's state when it fired (None: the cancellation has none)."""
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


Effect = (
    CancelOrder
    | CancelProduction
    | RequestRefund
    | ResendRefund
    | CompleteRefund
    | Reject
    | SetDeadline
    | CancelDeadline
)


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

CHECKOUT_DEADLINE = "checkout"
CHECKOUT_WAIT_MARGIN = 10.0
"""Seconds after the checkout's payment deadline that its cancellation looks again."""
WAIT_BACKOFF_CAP = 300.0


def wait_backoff(fired: int) -> float:
    """Seconds until the `fired`-th look at a still-active checkout (1-based) is followed
    by the next: doubling from the margin, at most the cap."""
    return doubling_backoff(fired, CHECKOUT_WAIT_MARGIN, WAIT_BACKOFF_CAP)


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
                (SetDeadline(CHECKOUT_DEADLINE),),
            )
        case S.REQUESTED, Requested(situation=OrderSituation.PAID):
            return _cancel_production("the order is paid")
        case S.WAITING_FOR_CHECKOUT, CheckoutEnded(paid=paid):
            return _checkout_ended(paid, CancelDeadline(CHECKOUT_DEADLINE))
        case S.WAITING_FOR_CHECKOUT, DeadlineFired(kind="checkout", checkout="PAID" | "FAILED"):
            # The fired row is deleted with this transition: nothing to cancel.
            return _checkout_ended(message.checkout == "PAID")
        case S.WAITING_FOR_CHECKOUT, DeadlineFired(kind="checkout", fired=fired):
            again = wait_backoff(fired + 1)
            still = f"still {message.checkout}" if message.checkout else "not found"
            return Transition(
                state,
                Step(
                    "deadline.fired",
                    state,
                    f"checkout deadline (time {fired + 1}): the checkout is {still}; "
                    f"waiting for its end, looking again in {again:g} s",
                ),
                (SetDeadline(CHECKOUT_DEADLINE, again),),
                moved=False,
            )
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
            after = after_attempts(attempts)
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
            return Transition(state, ignored(message.name, state, "cancellation"), moved=False)


def _checkout_ended(paid: bool, *effects: Effect) -> Transition:
    if paid:
        moved = _cancel_production("the checkout ended PAID")
        return Transition(moved.state, moved.step, (*moved.effects, *effects))
    return Transition(
        S.CANCELLED,
        Step("order.cancelled", S.CANCELLED, "the checkout failed: nothing to refund"),
        (CancelOrder(refunded=False), *effects),
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
