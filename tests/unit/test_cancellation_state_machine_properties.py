"""The cancellation saga under any order of inputs: properties of `decide`.

A small model of the shell sits around the pure machine: an inbox of applied message
ids (a redelivered copy is skipped), the effects commanded so far, and what the saga
has been told about the charge. Hypothesis throws at it the start in any situation,
then any inputs in any order: duplicates, reorderings (a refund's success before the
production answer), late replies (a checkout ending after the cancellation ended),
conflicting replies (production both cancelled and refused) and deadlines.

What must hold for every history:

- CANCELLED and REJECTED never change once reached;
- nothing is refunded that the saga was not told was charged (Requested(PAID) or
  CheckoutEnded(paid=True) applied), and never before production let the order go;
- at most one refund requested, at most one completed, at most one OrderCancelled;
- a REJECTED cancellation commands no refund and no cancelled order;
- a CANCELLED order that was charged was refunded (CompleteRefund), one that was not
  charged was not;
- the state moves only along the diagram of `saga.cancellation_state_machine`.
"""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

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
BOUNDED = settings(max_examples=300, deadline=None, database=None)

LEGAL_MOVES = {
    (S.REQUESTED, S.CANCELLED),
    (S.REQUESTED, S.WAITING_FOR_CHECKOUT),
    (S.REQUESTED, S.CANCELLING_PRODUCTION),
    (S.WAITING_FOR_CHECKOUT, S.CANCELLED),
    (S.WAITING_FOR_CHECKOUT, S.CANCELLING_PRODUCTION),
    (S.CANCELLING_PRODUCTION, S.REFUNDING),
    (S.CANCELLING_PRODUCTION, S.REJECTED),
    (S.REFUNDING, S.CANCELLED),
}

text = st.text(min_size=1, max_size=20)
inputs: st.SearchStrategy[CancellationInput] = st.one_of(
    st.builds(Requested, st.sampled_from(OrderSituation)),
    st.builds(CheckoutEnded, st.booleans()),
    st.just(ProductionCancelled()),
    st.builds(ProductionRefused, text),
    st.builds(RefundSucceeded, text, st.integers(min_value=1, max_value=9)),
    st.builds(DeadlineFired, text),
)


class Shell:
    """What the cancellation's shells do to one cancellation, without the database."""

    def __init__(self) -> None:
        self.state = S.REQUESTED
        self.inbox: set[uuid.UUID] = set()
        self.effects: list[Effect] = []
        self.history: list[CancellationState] = [self.state]
        self.charged = False  # an applied input said the order was charged
        self.production_released = False
        self.rejection_reason: str | None = None

    def deliver(self, message: CancellationInput, message_id: uuid.UUID) -> None:
        if message_id in self.inbox:
            return  # the inbox drops a redelivered copy
        self.inbox.add(message_id)
        before = self.state
        transition = decide(before, message)
        if not transition.changed:
            assert transition.state is before
            assert transition.step.name.endswith(".ignored")
        if transition.moved:
            match message:
                case Requested(situation=OrderSituation.PAID) | CheckoutEnded(paid=True):
                    self.charged = True
                case ProductionCancelled():
                    self.production_released = True
        for effect in transition.effects:
            if isinstance(effect, RequestRefund | ResendRefund):
                assert self.charged, "refund of what was never charged"
                assert self.production_released, "refund before production let the order go"
            self.effects.append(effect)
        self.state = transition.state
        if transition.rejection_reason is not None:
            self.rejection_reason = transition.rejection_reason
        self.history.append(self.state)

    def count(self, kind: type) -> int:
        return sum(isinstance(e, kind) for e in self.effects)

    def check(self) -> None:
        assert self.count(RequestRefund) <= 1
        assert self.count(CompleteRefund) <= 1
        assert self.count(CancelOrder) <= 1
        assert self.count(Reject) <= 1
        if self.count(CompleteRefund):
            assert self.count(RequestRefund) == 1
        for before, after in zip(self.history, self.history[1:], strict=False):
            assert before == after or (before, after) in LEGAL_MOVES, self.history
            if before.is_final:
                assert after == before, self.history
        if self.state is S.REJECTED:
            assert self.count(RequestRefund) == self.count(CompleteRefund) == 0
            assert self.count(CancelOrder) == 0
            assert self.rejection_reason is not None
        if self.state is S.CANCELLED:
            assert self.count(CancelOrder) == 1
            refunded = next(e for e in self.effects if isinstance(e, CancelOrder)).refunded
            assert refunded == self.charged == (self.count(CompleteRefund) == 1)
        else:
            assert self.count(CancelOrder) == 0
        if self.state is S.CANCELLING_PRODUCTION:
            assert self.count(CancelProduction) >= 1


class CancellationMachine(RuleBasedStateMachine):
    """Any start, then any inputs, fresh or redelivered, in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.shell = Shell()
        self.sent: list[tuple[CancellationInput, uuid.UUID]] = []

    @initialize(situation=st.sampled_from(OrderSituation))
    def start(self, situation: OrderSituation) -> None:
        self.deliver(Requested(situation), uuid.uuid4())

    def deliver(self, message: CancellationInput, message_id: uuid.UUID) -> None:
        self.sent.append((message, message_id))
        self.shell.deliver(message, message_id)

    @rule(message=inputs)
    def fresh(self, message: CancellationInput) -> None:
        self.deliver(message, uuid.uuid4())

    @rule(data=st.data())
    def redelivered(self, data: st.DataObject) -> None:
        message, message_id = data.draw(st.sampled_from(self.sent))
        self.deliver(message, message_id)

    @rule(message=inputs)
    def without_inbox(self, message: CancellationInput) -> None:
        """The same input twice under different ids (a repeated reply): still harmless."""
        self.deliver(message, uuid.uuid4())
        self.deliver(message, uuid.uuid4())

    @invariant()
    def holds(self) -> None:
        self.shell.check()


CancellationMachine.TestCase.settings = BOUNDED
TestCancellationMachine = CancellationMachine.TestCase


@BOUNDED
@given(st.sampled_from(S), inputs)
def test_an_ignored_input_changes_nothing(
    state: CancellationState, message: CancellationInput
) -> None:
    transition = decide(state, message)
    assert transition.changed == (transition.moved or bool(transition.effects))
    if not transition.changed:
        assert transition.state is state
        assert transition.effects == ()
        assert transition.rejection_reason is None


@BOUNDED
@given(st.lists(inputs, max_size=12))
def test_the_happy_path_of_a_paid_order_survives_noise(noise: list[CancellationInput]) -> None:
    """The real replies, in their order, with any noise before, between and after."""
    shell = Shell()
    shell.deliver(Requested(OrderSituation.PAID), uuid.uuid4())
    replies: list[CancellationInput] = [ProductionCancelled(), RefundSucceeded("r")]
    for message in replies:
        shell.deliver(message, uuid.uuid4())
    for message in noise:
        shell.deliver(message, uuid.uuid4())
    shell.check()
    assert shell.state is S.CANCELLED
    assert shell.count(CompleteRefund) == 1
