"""The saga's rules under any order of messages: properties of `saga.state_machine.decide`.

`decide` is pure, so hypothesis can drive it through any sequence of deliveries:
duplicates, replies before the request, replies after the end, conflicting replies.
A small model of the shell (`saga.orchestrator`) sits around it: an inbox of applied
message ids (a redelivered copy is skipped) and the effects that were commanded.

What must hold for every sequence:

- PAID and FAILED never change once reached;
- at most one charge is commanded per checkout, and at most one settlement
  (CompletePayment or FailPayment), never both;
- the state is always one the effects explain (STARTED: none yet; PAYMENT_PENDING:
  the charge; PAID/FAILED: the charge and its settlement), and moves only along
  STARTED -> PAYMENT_PENDING -> PAID | FAILED;
- replaying a message that changed the state is a no-op, with or without the inbox;
- a message that does not fit is reported the module's way: same state, no effects,
  `changed` false, a `<Type>.ignored` step whose status is the state and whose detail
  says "<Type> does not apply to a <STATE> checkout".
"""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from saga import state_machine as sm
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
    PAYMENT_DEADLINE,
    CancelDeadline,
    CheckoutState,
    CompletePayment,
    Effect,
    FailPayment,
    RefundLateCharge,
    RequestPayment,
    SetDeadline,
    Transition,
    decide,
)

BOUNDED = settings(max_examples=200, deadline=None, database=None)

CHECKOUT = uuid.uuid4()

FINAL = {CheckoutState.PAID, CheckoutState.FAILED}
# Every move the state may make (besides staying where it is).
LEGAL_MOVES = {
    (CheckoutState.STARTED, CheckoutState.PAYMENT_PENDING),
    (CheckoutState.PAYMENT_PENDING, CheckoutState.PAID),
    (CheckoutState.PAYMENT_PENDING, CheckoutState.FAILED),
}
# The only (state, input type) pairs that do something.
APPLIES = {
    (CheckoutState.STARTED, "CheckoutRequested"),
    (CheckoutState.PAYMENT_PENDING, "PaymentSucceeded"),
    (CheckoutState.PAYMENT_PENDING, "PaymentDeclined"),
    (CheckoutState.PAYMENT_PENDING, "PaymentNotFound"),
    (CheckoutState.PAYMENT_PENDING, "DeadlineReached"),
    (CheckoutState.FAILED, "PaymentSucceeded"),  # a late success: refunded
    (CheckoutState.FAILED, "PaymentUnanswered"),  # a look for one unanswered: look again
}
# Pairs that change nothing but are recorded as what they are (not as ignored).
RECORDED = {
    (CheckoutState.PAYMENT_PENDING, "PaymentUnanswered"),
    # a look for a late charge that found none taken
    (CheckoutState.FAILED, "PaymentNotFound"),
    (CheckoutState.FAILED, "PaymentDeclined"),
}

# ---- messages -----------------------------------------------------------------------

text = st.text(min_size=1, max_size=40)
attempts = st.integers(min_value=1, max_value=10)

requested = st.builds(CheckoutRequested, checkout_id=st.just(CHECKOUT))
succeeded = st.builds(
    PaymentSucceeded,
    checkout_id=st.just(CHECKOUT),
    provider_payment_id=text,
    attempts=attempts,
)
declined = st.builds(
    PaymentDeclined,
    checkout_id=st.just(CHECKOUT),
    reason=text,
    attempts=attempts,
)
due = st.builds(
    DeadlineReached,
    checkout_id=st.just(CHECKOUT),
    kind=st.just(PAYMENT_DEADLINE),
    fired=st.integers(min_value=0, max_value=20),
)
look = st.builds(
    DeadlineReached,
    checkout_id=st.just(CHECKOUT),
    kind=st.just(LATE_CHARGE_DEADLINE),
    fired=st.integers(min_value=0, max_value=20),
    age=st.floats(min_value=0, max_value=1000),
)
not_found = st.builds(PaymentNotFound, checkout_id=st.just(CHECKOUT))
unanswered = st.builds(PaymentUnanswered, checkout_id=st.just(CHECKOUT), error=text)
messages: st.SearchStrategy[SagaInput] = st.one_of(
    requested, succeeded, declined, due, look, not_found, unanswered
)
states = st.sampled_from(CheckoutState)


class Delivered:
    """One message as delivered: its body and its AMQP message_id."""

    def __init__(self, body: SagaInput, message_id: uuid.UUID) -> None:
        self.body = body
        self.message_id = message_id
        self.changed: bool | None = None  # what its first delivery did

    def __repr__(self) -> str:
        return f"Delivered({self.body.message_type}, {str(self.message_id)[:8]})"


@st.composite
def deliveries(draw: st.DrawFn) -> list[Delivered]:
    """A delivery history: fresh messages in any order, with redelivered copies mixed in."""
    fresh = [Delivered(m, uuid.uuid4()) for m in draw(st.lists(messages, max_size=8))]
    if not fresh:
        return []
    copies = draw(st.lists(st.sampled_from(fresh), max_size=8))
    return draw(st.permutations(fresh + copies))


# ---- the model of the shell ---------------------------------------------------------


class Saga:
    """What `CheckoutSaga.handle` does to one checkout, without the database."""

    def __init__(self) -> None:
        self.state = CheckoutState.STARTED
        self.inbox: set[uuid.UUID] = set()
        self.effects: list[Effect] = []
        self.history: list[CheckoutState] = [self.state]
        self.failure_reason: str | None = None

    def deliver(self, delivery: Delivered) -> Transition | None:
        """Apply one delivery; None when the inbox has it already (a duplicate)."""
        if delivery.message_id in self.inbox:
            return None
        self.inbox.add(delivery.message_id)
        before = self.state
        transition = decide(before, delivery.body)
        check_transition(before, delivery.body, transition)
        delivery.changed = transition.state is not before  # it moved the checkout on
        self.effects.extend(transition.effects)
        if transition.state != before:
            self.state = transition.state
            self.failure_reason = transition.failure_reason
        self.history.append(self.state)
        return transition

    def count(self, kind: type) -> int:
        return sum(isinstance(e, kind) for e in self.effects)

    def check(self) -> None:
        """The invariants every history keeps."""
        charges = self.count(RequestPayment)
        completed, failed = self.count(CompletePayment), self.count(FailPayment)
        assert charges <= 1, self.effects
        assert completed + failed <= 1, self.effects
        expected = {
            CheckoutState.STARTED: (0, 0, 0),
            CheckoutState.PAYMENT_PENDING: (1, 0, 0),
            CheckoutState.PAID: (1, 1, 0),
            CheckoutState.FAILED: (1, 0, 1),
        }[self.state]
        assert (charges, completed, failed) == expected, (self.state, self.effects)
        assert (self.failure_reason is not None) == (self.state is CheckoutState.FAILED)
        # A refund only ever follows a failure; the deadline is set by the request and
        # cancelled by the settlement, and never outlives it.
        if self.count(RefundLateCharge):
            assert self.state is CheckoutState.FAILED
        if self.state.is_final:
            assert self.effects.count(CancelDeadline(PAYMENT_DEADLINE)) == 1, self.effects
        # The look for a late charge follows a timeout only, and a late success ends it.
        if SetDeadline(LATE_CHARGE_DEADLINE) in self.effects:
            assert self.failure_reason == "payment_timeout", self.effects
        if CancelDeadline(LATE_CHARGE_DEADLINE) in self.effects:
            assert self.count(RefundLateCharge), self.effects
        if self.state is CheckoutState.PAYMENT_PENDING:
            assert self.count(SetDeadline) >= 1
            assert not self.count(CancelDeadline)
        for before, after in zip(self.history, self.history[1:], strict=False):
            assert before == after or (before, after) in LEGAL_MOVES, self.history
            if before in FINAL:
                assert after == before, self.history


def check_transition(state: CheckoutState, message: SagaInput, transition: Transition) -> None:
    """One step against the module's own rules, for any state and message."""
    assert isinstance(transition.state, CheckoutState)
    assert transition.changed == bool(transition.effects)
    late_look = isinstance(message, DeadlineReached) and message.kind == LATE_CHARGE_DEADLINE
    if late_look and state is CheckoutState.FAILED:
        # A look for a late charge: in FAILED only, and it never moves the checkout.
        assert transition.state is state
        assert transition.effects[0] == sm.ReconcilePayment()
        assert transition.step.name == "late_charge.lookup"
        return
    if (state, message.message_type) in APPLIES and not late_look:
        assert transition.changed
        assert transition.state is state or (state, transition.state) in LEGAL_MOVES
        assert transition.step.status == transition.state
        return
    if (state, message.message_type) in RECORDED:
        assert transition.state is state
        assert not transition.changed
        assert not transition.step.name.endswith(".ignored")
        return
    # The module's way of reporting a message that does not fit: nothing changes,
    # and the step says so (the shell writes it to the checkout's history).
    assert transition.state is state
    assert transition.effects == ()
    assert not transition.changed
    assert transition.failure_reason is None
    assert transition.step.name == f"{message.message_type}.ignored"
    assert transition.step.status == state
    assert transition.step.detail == f"{message.message_type} does not apply to a {state} checkout"


# ---- properties of one step ---------------------------------------------------------


@BOUNDED
@given(states, messages)
def test_every_state_and_message_has_a_lawful_answer(
    state: CheckoutState, message: SagaInput
) -> None:
    check_transition(state, message, decide(state, message))


@BOUNDED
@given(st.sampled_from(sorted(FINAL)), messages)
def test_final_states_never_change(state: CheckoutState, message: SagaInput) -> None:
    transition = decide(state, message)
    assert transition.state is state
    # Nothing happens after the end, but for the look for a late charge and a late
    # success's refund (which ends the look).
    late = (RefundLateCharge, CancelDeadline, SetDeadline, sm.ReconcilePayment)
    assert all(isinstance(e, late) for e in transition.effects)
    assert all(
        e.kind == LATE_CHARGE_DEADLINE
        for e in transition.effects
        if isinstance(e, SetDeadline | CancelDeadline)
    )
    assert CancelDeadline(PAYMENT_DEADLINE) not in transition.effects
    assert state is CheckoutState.FAILED or transition.effects == ()


@BOUNDED
@given(states, messages)
def test_applying_the_same_message_twice_is_the_same_as_once(
    state: CheckoutState, message: SagaInput
) -> None:
    """An input that moved the state is idempotent on its own: the second copy finds a
    state it does not fit. One that leaves the state where it is (a deadline, which
    fires again later by design; a late success) is kept from repeating by the shell:
    the inbox, and the deadline's row fired in the transaction that re-sets it."""
    first = decide(state, message)
    again = decide(first.state, message)
    assert again.state is first.state
    if first.state is not state:
        assert again.effects == ()


@BOUNDED
@given(succeeded)
def test_payment_succeeded_carries_the_provider_reference(message: PaymentSucceeded) -> None:
    transition = decide(CheckoutState.PAYMENT_PENDING, message)
    assert transition.effects == (
        CompletePayment(message.provider_payment_id),
        CancelDeadline(PAYMENT_DEADLINE),
    )
    assert message.provider_payment_id in (transition.step.detail or "")
    assert (f"after {message.attempts} attempts" in (transition.step.detail or "")) == (
        message.attempts > 1
    )


@BOUNDED
@given(declined)
def test_payment_declined_records_its_reason(message: PaymentDeclined) -> None:
    transition = decide(CheckoutState.PAYMENT_PENDING, message)
    assert transition.effects == (FailPayment(message.reason), CancelDeadline(PAYMENT_DEADLINE))
    assert transition.failure_reason == message.reason


# ---- properties of whole histories --------------------------------------------------


@BOUNDED
@given(deliveries())
def test_any_history_keeps_the_invariants(history: list[Delivered]) -> None:
    saga = Saga()
    for delivery in history:
        saga.deliver(delivery)
        saga.check()


@BOUNDED
@given(deliveries(), st.data())
def test_replaying_a_message_that_changed_the_state_is_a_no_op(
    history: list[Delivered], data: st.DataObject
) -> None:
    """Even without the inbox (a copy under a new message_id, as a republished outbox
    row after a lost confirm would be): nothing it commanded is commanded again."""
    saga = Saga()
    applied: list[Delivered] = []
    for delivery in history:
        transition = saga.deliver(delivery)
        if transition is not None and delivery.changed:
            applied.append(delivery)
    if not applied:
        return
    replay = data.draw(st.sampled_from(applied))
    before = (saga.state, list(saga.effects))
    assert saga.deliver(replay) is None  # the inbox has it
    transition = saga.deliver(Delivered(replay.body, uuid.uuid4()))  # a fresh id
    assert transition is not None
    assert not transition.changed
    assert (saga.state, saga.effects) == before
    saga.check()


@BOUNDED
@given(deliveries())
def test_the_outcome_is_decided_by_the_first_reply_after_the_request(
    history: list[Delivered],
) -> None:
    """Out-of-order and conflicting outcomes: the first outcome that arrives while the
    payment is pending settles it; every other one is ignored (a deadline or an
    unanswered reconciliation settles nothing)."""
    saga = Saga()
    seen: set[uuid.UUID] = set()
    requested_yet = False
    deciding: SagaInput | None = None
    for delivery in history:
        if delivery.message_id not in seen:
            seen.add(delivery.message_id)
            if isinstance(delivery.body, CheckoutRequested):
                requested_yet = True
            elif (
                requested_yet
                and deciding is None
                and isinstance(delivery.body, PaymentSucceeded | PaymentDeclined | PaymentNotFound)
            ):
                deciding = delivery.body
        saga.deliver(delivery)
    if deciding is None:
        expected = CheckoutState.PAYMENT_PENDING if requested_yet else CheckoutState.STARTED
    elif isinstance(deciding, PaymentSucceeded):
        expected = CheckoutState.PAID
    else:
        expected = CheckoutState.FAILED
    assert saga.state is expected


# ---- the same, as a state machine hypothesis explores -------------------------------


class SagaMachine(RuleBasedStateMachine):
    """Deliver new messages, redeliver old ones, replay applied ones under new ids."""

    delivered = Bundle("delivered")

    @initialize()
    def start(self) -> None:
        self.saga = Saga()
        self.reached_final: CheckoutState | None = None

    @rule(target=delivered, message=messages)
    def deliver_new(self, message: SagaInput) -> Delivered:
        delivery = Delivered(message, uuid.uuid4())
        assert self.saga.deliver(delivery) is not None
        return delivery

    @rule(delivery=delivered)
    def redeliver(self, delivery: Delivered) -> None:
        before = (self.saga.state, len(self.saga.effects), len(self.saga.history))
        assert self.saga.deliver(delivery) is None
        assert (self.saga.state, len(self.saga.effects), len(self.saga.history)) == before

    @rule(delivery=consumes(delivered))
    def replay_under_a_new_id(self, delivery: Delivered) -> None:
        """A copy with a new message_id, which the inbox cannot recognise."""
        state, effects = self.saga.state, len(self.saga.effects)
        transition = self.saga.deliver(Delivered(delivery.body, uuid.uuid4()))
        assert transition is not None
        if delivery.changed:
            # A message that took effect never takes effect again.
            assert not transition.changed
            assert (self.saga.state, len(self.saga.effects)) == (state, effects)
        # One that was ignored (a reply before the request) may apply now: that is
        # a first application, and the invariants below still hold.

    @invariant()
    def keeps_the_invariants(self) -> None:
        self.saga.check()

    @invariant()
    def final_stays_final(self) -> None:
        if self.reached_final is not None:
            assert self.saga.state is self.reached_final
        elif self.saga.state in FINAL:
            self.reached_final = self.saga.state


SagaMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=20, deadline=None, database=None
)
test_saga_state_machine = SagaMachine.TestCase
