"""The checkout timeline without I/O: merging hand-made rows, ordering, rendering."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from rich.console import Console

from infra.timeline.record import Event, event, published_events
from operations.timeline.merge import (
    AuditRow,
    BrokerScan,
    CheckoutRow,
    EffectRow,
    Entry,
    LetterRow,
    OrderRow,
    OutboxRow,
    PaymentRow,
    Sources,
    StepRow,
    build,
    format_ms,
    order_entries,
)
from operations.timeline.render import print_trace, trace_json

T0 = datetime(2026, 11, 22, 9, 0, 0, tzinfo=UTC)
ORDER_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")
CHECKOUT_ID = uuid.UUID("00000000-0000-4000-8000-0000000000c1")
PAID_ID = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
CHARGE_ID = uuid.UUID("00000000-0000-4000-8000-0000000000a2")


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def order(status: str = "PAID") -> OrderRow:
    return OrderRow(ORDER_ID, "Poster", Decimal("19.99"), "EUR", status, T0, at(900))


def checkout(state: str = "PAID", checkout_id: uuid.UUID = CHECKOUT_ID) -> CheckoutRow:
    return CheckoutRow(checkout_id, ORDER_ID, state, None, "4bf92f3577b34da6", at(0), at(300))


def steps(checkout_id: uuid.UUID = CHECKOUT_ID) -> list[StepRow]:
    return [
        StepRow(checkout_id, "checkout.requested", "STARTED", at(0), "Idempotency-Key: k-1"),
        StepRow(checkout_id, "payment.requested", "PAYMENT_PENDING", at(100), "charge sent"),
        StepRow(checkout_id, "payment.succeeded", "PAID", at(300), "provider payment p-1"),
    ]


def paid_sources() -> Sources:
    """A paid checkout: steps, relay publishes, a payment attempt, three effects."""
    return Sources(
        order=order(),
        checkouts=[checkout()],
        now=at(10_000),
        steps=steps(),
        events=[
            # Deliberately not in time order: the merge sorts.
            Event(
                CHECKOUT_ID,
                "relay",
                "outbox.published",
                at(320),
                None,
                PAID_ID,
                "OrderPaid",
                20.0,
                "checkout.orders order.paid",
            ),
            Event(
                CHECKOUT_ID,
                "relay",
                "outbox.published",
                at(40),
                None,
                uuid.uuid4(),
                "CheckoutRequested",
                40.0,
                "checkout.internal checkout.requested",
            ),
            Event(
                CHECKOUT_ID,
                "payment",
                "payment.attempt",
                at(250),
                None,
                CHARGE_ID,
                "ChargePayment",
                110.0,
                "201 SUCCESSFUL",
            ),
            Event(
                CHECKOUT_ID,
                "invoice",
                "effect.applied",
                at(400),
                None,
                PAID_ID,
                "OrderPaid",
                5.0,
                None,
            ),
        ],
        payments=[
            PaymentRow(
                CHECKOUT_ID,
                uuid.uuid4(),
                Decimal("19.99"),
                "EUR",
                "SUCCESSFUL",
                "p-1",
                None,
                at(100),
                at(300),
            )
        ],
        effects=[
            EffectRow("invoice", CHECKOUT_ID, PAID_ID, at(398), "invoice i-1 CREATED"),
            EffectRow("email", CHECKOUT_ID, PAID_ID, at(450), "e-mail sent to j***@example.com"),
            EffectRow("production", CHECKOUT_ID, PAID_ID, at(500), "sent to production"),
        ],
    )


def test_entries_are_in_time_order_with_offsets_and_deltas() -> None:
    trace = build(paid_sources())
    [one] = trace.checkouts
    times = [e.at for e in one.entries]
    assert times == sorted(times)
    assert [(e.source, e.kind) for e in one.entries] == [
        ("api", "checkout.requested"),
        ("relay", "outbox.published"),
        ("saga", "saga.transition"),
        ("payment", "payment.attempt"),
        ("saga", "saga.transition"),
        ("relay", "outbox.published"),
        ("invoice", "effect.applied"),
        ("email", "effect.applied"),
        ("production", "effect.applied"),
    ]
    assert [e.offset_ms for e in one.entries] == [0, 40, 100, 250, 300, 320, 400, 450, 500]
    assert one.entries[0].delta_ms is None
    assert [e.delta_ms for e in one.entries[1:4]] == [40, 60, 150]
    assert one.span_ms == 500


def test_the_request_shows_its_idempotency_key_and_trace_id() -> None:
    [one] = build(paid_sources()).checkouts
    first = one.entries[0]
    assert first.source == "api"
    assert first.detail == "Idempotency-Key: k-1 · trace 4bf92f3577b34da6"
    assert one.idempotency_key == "k-1"


def test_the_key_is_read_from_the_step_the_api_writes_with_its_trace() -> None:
    # What the API writes: "Idempotency-Key: KEY; trace TRACE_ID" (the trace once).
    sources = paid_sources()
    written = "Idempotency-Key: k-1; trace 4bf92f3577b34da6"
    sources.steps[0] = dataclasses.replace(sources.steps[0], detail=written)
    [one] = build(sources).checkouts
    assert one.idempotency_key == "k-1"
    assert one.entries[0].detail == written


def test_transitions_name_the_state_before_and_after() -> None:
    [one] = build(paid_sources()).checkouts
    transitions = [e.what for e in one.entries if e.kind == "saga.transition"]
    assert transitions == [
        "payment.requested: STARTED → PAYMENT_PENDING",
        "payment.succeeded: PAYMENT_PENDING → PAID",
    ]


def test_an_effect_row_is_folded_into_the_consumers_own_event() -> None:
    [one] = build(paid_sources()).checkouts
    invoice = [e for e in one.entries if e.source == "invoice"]
    assert len(invoice) == 1
    assert invoice[0].at == at(400)  # the event's time, with its duration
    assert invoice[0].duration_ms == 5.0
    assert invoice[0].detail == "invoice i-1 CREATED"


def test_the_relay_lag_is_in_the_line() -> None:
    [one] = build(paid_sources()).checkouts
    published = [e for e in one.entries if e.kind == "outbox.published"]
    assert published[0].what == "CheckoutRequested published (lag 40 ms)"


def test_lines_at_the_same_time_keep_the_causal_order() -> None:
    sources = paid_sources()
    sources.events.append(
        Event(CHECKOUT_ID, "api", "http.request", at(0), None, None, None, 3.0, "POST 202")
    )
    sources.outbox = [
        OutboxRow(CHECKOUT_ID, uuid.uuid4(), "ChargePayment", "payment.charge", at(100))
    ]
    [one] = build(sources).checkouts
    assert [e.kind for e in one.entries[:4]] == [
        "http.request",
        "checkout.requested",
        "outbox.published",
        "saga.transition",
    ]
    at_100 = [e.kind for e in one.entries if e.at == at(100)]
    assert at_100 == ["saga.transition", "outbox.pending"]


def test_order_entries_is_stable_for_equal_times_and_ranks() -> None:
    entries = [
        Entry(at(5), "x", "k", "second"),
        Entry(at(5), "x", "k", "third"),
        Entry(at(1), "x", "k", "first"),
    ]
    assert [e.what for e in order_entries(entries)] == ["first", "second", "third"]


def dead_lettered_sources() -> Sources:
    """A paid checkout whose production message failed, was parked and replayed, and
    was dead-lettered again: still in the queue now."""
    sources = paid_sources()
    sources.effects = [e for e in sources.effects if e.consumer != "production"]
    sources.events += [
        Event(
            CHECKOUT_ID,
            "production",
            "message.retried",
            at(600),
            None,
            PAID_ID,
            "OrderPaid",
            3000.0,
            "attempt 1: TransientFailure: 503",
        ),
        Event(
            CHECKOUT_ID,
            "production",
            "message.dead_lettered",
            at(5000),
            None,
            PAID_ID,
            "OrderPaid",
            3000.0,
            "after 4 attempts: TransientFailure: 503",
        ),
    ]
    sources.audit = [
        AuditRow(
            7,
            at(8000),
            "ada",
            "replay",
            "checkout.production",
            "checkout.production.dlq",
            [str(PAID_ID), str(uuid.uuid4())],
            "production back up",
            "completed",
        ),
        AuditRow(
            8,
            at(8100),
            "bob",
            "purge",
            "checkout.email",
            "checkout.email.dlq",
            [str(uuid.uuid4())],
            None,
            "completed",
        ),  # not this checkout's message
    ]
    sources.broker = BrokerScan(
        read=True,
        letters=[
            LetterRow(
                "checkout.production",
                "checkout.production.dlq",
                str(PAID_ID),
                str(CHECKOUT_ID),
                "OrderPaid",
                4,
                at(600),
                at(9500),
                "TransientFailure: 503",
                "transient",
                1,
            ),
            LetterRow(
                "checkout.email",
                "checkout.email.dlq",
                str(uuid.uuid4()),
                str(uuid.uuid4()),
                "OrderPaid",
                1,
                at(1),
                at(1),
                "x",
                "permanent",
                0,
            ),
        ],
        scanned={"checkout.production.dlq": (1, 1), "checkout.email.dlq": (1, 1)},
    )
    return sources


def test_a_dead_lettered_and_replayed_message_tells_its_whole_story() -> None:
    trace = build(dead_lettered_sources())
    [one] = trace.checkouts
    story = [(e.source, e.kind) for e in one.entries if e.message_id == str(PAID_ID)]
    assert story == [
        ("relay", "outbox.published"),
        ("invoice", "effect.applied"),
        ("email", "effect.applied"),
        ("production", "message.retried"),
        ("production", "message.dead_lettered"),
        ("dlq", "message.replayed"),
        ("production", "message.dead_lettered"),  # from the queue: parked again, still there
    ]
    replay = next(e for e in one.entries if e.kind == "message.replayed")
    assert replay.what == "OrderPaid replayed to checkout.production by ada"
    assert replay.detail is not None
    assert "reason: production back up" in replay.detail
    parked = one.entries[-1]
    assert parked.what == "OrderPaid dead-lettered, still in checkout.production.dlq"
    assert parked.detail == (
        "4 attempts · transient failure · TransientFailure: 503 · replayed once before"
    )
    # Only this checkout's letter is listed; the other belongs to someone else.
    assert [x.message_id for x in trace.dead_letters] == [str(PAID_ID)]


def test_a_letter_is_noted_on_the_consumers_event_for_the_same_failure() -> None:
    sources = dead_lettered_sources()
    sources.audit = []
    letter = sources.broker.letters[0]
    sources.broker.letters[0] = LetterRow(
        letter.queue,
        letter.dlq,
        letter.message_id,
        letter.correlation_id,
        letter.message_type,
        4,
        at(600),
        at(5000) + timedelta(milliseconds=1),
        letter.error,
        "transient",
        0,
    )
    [one] = build(sources).checkouts
    parked = [e for e in one.entries if e.kind == "message.dead_lettered"]
    assert len(parked) == 1
    assert parked[0].detail == (
        "after 4 attempts: TransientFailure: 503 · still in checkout.production.dlq"
    )


def test_a_letter_found_by_message_id_alone_counts_too() -> None:
    sources = paid_sources()
    sources.broker = BrokerScan(
        read=True,
        letters=[
            LetterRow(
                "checkout.payment",
                "checkout.payment.dlq",
                str(CHARGE_ID),
                None,
                "ChargePayment",
                1,
                at(260),
                at(260),
                "Boom",
                "permanent",
                0,
            )
        ],
    )
    trace = build(sources)
    assert [x.message_id for x in trace.dead_letters] == [str(CHARGE_ID)]
    assert any(
        e.source == "payment" and e.kind == "message.dead_lettered"
        for e in trace.checkouts[0].entries
    )


def test_pending_outbox_rows_show_their_age() -> None:
    sources = Sources(
        order=order("PENDING"), checkouts=[checkout("STARTED")], now=at(12_500), steps=steps()[:1]
    )
    sources.outbox = [
        OutboxRow(CHECKOUT_ID, uuid.uuid4(), "CheckoutRequested", "checkout.requested", at(1))
    ]
    trace = build(sources)
    pending = trace.checkouts[0].entries[-1]
    assert pending.kind == "outbox.pending"
    assert pending.what == "CheckoutRequested waiting in the outbox, unpublished for 12.50 s"
    document = trace_json(trace)
    assert document["pending_outbox"][0]["age_ms"] == 12_499


def test_each_checkout_of_an_order_has_its_own_timeline() -> None:
    failed = uuid.UUID("00000000-0000-4000-8000-0000000000c0")
    sources = paid_sources()
    sources.checkouts.insert(0, checkout("FAILED", failed))
    sources.steps = [
        StepRow(failed, "checkout.requested", "STARTED", at(-5000), None),
        StepRow(failed, "payment.declined", "FAILED", at(-4000), "card_declined"),
        *sources.steps,
    ]
    trace = build(sources)
    assert [c.checkout.checkout_id for c in trace.checkouts] == [failed, CHECKOUT_ID]
    first, second = trace.checkouts
    assert [e.offset_ms for e in first.entries] == [0, 1000]
    assert first.entries[1].what == "payment.declined: STARTED → FAILED"
    assert second.entries[0].offset_ms == 0


def test_json_shape() -> None:
    document = json.loads(json.dumps(trace_json(build(dead_lettered_sources()))))
    assert set(document) == {
        "order_id",
        "target",
        "generated_at",
        "order",
        "checkouts",
        "cancellations",
        "dead_letters",
        "pending_outbox",
        "dead_letter_queues",
        "events_truncated",
    }
    assert document["order_id"] == str(ORDER_ID)
    [one] = document["checkouts"]
    assert one["checkout_id"] == str(CHECKOUT_ID)
    assert one["state"] == "PAID"
    assert one["idempotency_key"] == "k-1"
    assert one["payment"]["status"] == "SUCCESSFUL"
    entry = one["entries"][1]
    assert entry == {
        "at": "2026-11-22T09:00:00.040000+00:00",
        "offset_ms": 40.0,
        "delta_ms": 40.0,
        "source": "relay",
        "kind": "outbox.published",
        "what": "CheckoutRequested published (lag 40 ms)",
        "detail": "checkout.internal checkout.requested",
        "message_id": entry["message_id"],
        "message_type": "CheckoutRequested",
        "duration_ms": 40.0,
        "state": None,
    }
    [letter] = document["dead_letters"]
    assert letter["dlq"] == "checkout.production.dlq"
    assert letter["attempts"] == 4
    assert letter["last_failure_at"] == "2026-11-22T09:00:09.500000+00:00"
    assert document["dead_letter_queues"]["read"] is True


def test_terminal_rendering_shows_every_line_and_the_parked_message() -> None:
    console = Console(width=200, record=True, color_system=None)
    print_trace(build(dead_lettered_sources()), console)
    text = console.export_text()
    assert f"Order {ORDER_ID}" in text
    assert "09:00:00.000" in text
    assert "payment.succeeded: PAYMENT_PENDING → PAID" in text
    assert "+9.50 s" in text  # the parked message's offset
    assert "OrderPaid replayed to checkout.production by ada" in text
    assert f"⚠ OrderPaid {PAID_ID} is in checkout.production.dlq" in text
    assert "4 attempts: TransientFailure: 503" in text


def test_terminal_rendering_says_when_the_queues_were_not_read() -> None:
    console = Console(width=160, record=True, color_system=None)
    sources = paid_sources()
    sources.broker = BrokerScan(read=False, error="RabbitMQ at h:5672 is not answering")
    print_trace(build(sources), console)
    assert "dead-letter queues not read: RabbitMQ at h:5672" in console.export_text()


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0.25, "0.2 ms"),
        (12.4, "12 ms"),
        (1234, "1.23 s"),
        (125_000, "2 min 05 s"),
        (3_720_000, "1 h 02 min"),
        (-40, "-40 ms"),
        (None, ""),
    ],
)
def test_format_ms(ms: float | None, text: str) -> None:
    assert format_ms(ms) == text


# --------------------------------------------------------------------------- recorder


def test_published_events_carry_the_relay_lag() -> None:
    rows = [
        {
            "message_id": PAID_ID,
            "message_type": "OrderPaid",
            "correlation_id": CHECKOUT_ID,
            "exchange": "orders",
            "routing_key": "order.paid",
            "created_at": at(0),
        },
        {
            "message_id": CHARGE_ID,
            "message_type": "X",
            "correlation_id": None,
            "exchange": "internal",
            "routing_key": "x",
            "created_at": at(0),
        },
    ]
    [published] = published_events(rows, at=at(25))
    assert published == Event(
        CHECKOUT_ID,
        "relay",
        "outbox.published",
        at(25),
        None,
        PAID_ID,
        "OrderPaid",
        25.0,
        "orders order.paid",
    )


def test_event_parses_string_ids_and_clips_the_detail() -> None:
    made = event(
        checkout_id=str(CHECKOUT_ID),
        source="email",
        kind="message.retried",
        message_id="not-a-uuid",
        detail="x" * 5000,
    )
    assert made.checkout_id == CHECKOUT_ID
    assert made.message_id is None
    assert made.detail is not None
    assert len(made.detail) == 2000
    with pytest.raises(ValueError, match="not a UUID"):
        event(checkout_id="nope", source="email", kind="x")


def test_deadlines_set_fired_and_cancelled_and_each_reconciliation_are_in_the_timeline() -> None:
    sources = paid_sources()
    sources.checkouts = [dataclasses.replace(checkout("FAILED"), failure_reason="payment_timeout")]
    sources.steps = [
        StepRow(CHECKOUT_ID, "checkout.requested", "STARTED", at(0), None),
        StepRow(CHECKOUT_ID, "payment.requested", "PAYMENT_PENDING", at(0), "charge sent"),
        StepRow(CHECKOUT_ID, "deadline.fired", "PAYMENT_PENDING", at(2000), "payment deadline"),
        StepRow(
            CHECKOUT_ID, "payment.reconciliation", "PAYMENT_PENDING", at(2050), "no answer (503)"
        ),
        StepRow(CHECKOUT_ID, "deadline.fired", "PAYMENT_PENDING", at(7000), "payment deadline"),
        StepRow(CHECKOUT_ID, "payment.timed_out", "FAILED", at(7050), "no charge"),
    ]
    sources.events = [
        Event(CHECKOUT_ID, "api", "deadline.set", at(0), detail="payment deadline due at T"),
        Event(CHECKOUT_ID, "saga", "deadline.set", at(2000), detail="payment deadline due at U"),
        Event(CHECKOUT_ID, "saga", "deadline.cancelled", at(7050), detail="payment deadline"),
    ]
    [one] = build(sources).checkouts
    lines = [e.what for e in one.entries]
    assert lines.count("deadline set") == 2
    assert "deadline cancelled" in lines
    assert lines.count("deadline.fired: → PAYMENT_PENDING") == 2
    assert "payment.reconciliation: → PAYMENT_PENDING" in lines
    assert "payment.timed_out: PAYMENT_PENDING → FAILED" in lines


def test_a_backfill_of_the_checkouts_event_is_on_its_timeline() -> None:
    sources = paid_sources()
    sources.audit = [
        AuditRow(
            9,
            at(9000),
            "ada",
            "backfill",
            "billing.order-paid",
            "checkout.orders.log",
            [str(PAID_ID)],
            "billing joined late",
            "completed",
        )
    ]
    [one] = build(sources).checkouts
    [copy] = [e for e in one.entries if e.kind == "message.backfilled"]
    assert copy.what == "OrderPaid backfilled from checkout.orders.log to billing.order-paid by ada"
    assert copy.source == "events"
    assert copy.detail is not None
    assert "reason: billing joined late" in copy.detail
