"""Merging what every table (and the dead-letter queues) knows of a checkout into one
timeline. Pure: rows in, `Trace` out, no I/O (`operations.timeline.query` loads the rows).

Where each line comes from:

- `checkout_steps`: the request (`api`), each saga transition, each ignored message;
- `cancellation_steps`: the same for each cancellation of the order, shown as a saga of
  its own beside the checkouts (its messages carry the cancellation as correlation id);
- `checkout_events`: whatever the parts recorded (`infra.timeline.record`): publishes
  with their lag, payment attempts, processing, retries, dead-lettering, deadlines set
  and cancelled (a deadline's firing and each reconciliation's answer are steps);
- `invoices`, `email_notifications`, `production_submissions`: each consumer's effect,
  folded into the consumer's own `effect.applied` event for that message if it has one;
- `dlq_audit`: each replay or purge of one of the checkout's messages, who and why;
- `outbox`: messages committed but not yet published, with their age;
- the `.dlq` queues (when read): the checkout's messages parked there now, with their
  attempts and error.

Lines are ordered by time; lines with the same time keep the order in which one
checkout's hops happen (the request before the transition it causes, and so on).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal

from infra.timeline.record import (
    EFFECT_APPLIED,
    HTTP_REQUEST,
    MESSAGE_DEAD_LETTERED,
    MESSAGE_PROCESSED,
    MESSAGE_REPLAYED,
    OUTBOX_PUBLISHED,
    Event,
)

REQUEST_STEP = "checkout.requested"
CANCEL_REQUEST_STEP = "cancellation.requested"
IDEMPOTENCY_PREFIX = "Idempotency-Key: "
# A consumer's `message.dead_lettered` event and the dead-lettered copy's
# `x-last-failure-at` header are taken at the same moment by the same process.
SAME_FAILURE = timedelta(seconds=2)
PROCESSED_KINDS = frozenset({EFFECT_APPLIED, MESSAGE_PROCESSED})

# Tie-break for lines with the same time: the causal order of one checkout's hops.
_RANK = {
    HTTP_REQUEST: 0,
    "checkout.requested": 1,
    "cancellation.requested": 1,
    "saga.transition": 2,
    "message.ignored": 2,
    "outbox.pending": 3,
    OUTBOX_PUBLISHED: 3,
}
_DEFAULT_RANK = 4
_AUDIT_RANK = 6  # a replay is recorded when it started: before what the copy caused


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class OrderRow:
    order_id: uuid.UUID
    order_name: str
    amount: Decimal
    currency: str
    status: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class CheckoutRow:
    checkout_id: uuid.UUID
    order_id: uuid.UUID
    state: str
    failure_reason: str | None
    trace_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StepRow:
    checkout_id: uuid.UUID
    name: str
    status: str
    at: datetime
    detail: str | None = None


@dataclass(frozen=True)
class PaymentRow:
    checkout_id: uuid.UUID
    payment_id: uuid.UUID
    amount: Decimal
    currency: str
    status: str
    provider_payment_id: str | None
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class EffectRow:
    """A consumer's effect: an invoice, an e-mail sent, a production submission."""

    consumer: str  # invoice | email | production
    checkout_id: uuid.UUID
    message_id: uuid.UUID
    at: datetime
    what: str


@dataclass(frozen=True)
class OutboxRow:
    """A message committed and not yet published (the relay deletes what it published)."""

    checkout_id: uuid.UUID
    message_id: uuid.UUID
    message_type: str
    routing_key: str
    created_at: datetime


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    actor: str
    action: str  # replay | purge | backfill
    queue: str
    dlq: str
    message_ids: Sequence[str | None]
    reason: str | None
    outcome: str  # completed | interrupted | incomplete (ids asked for and not found)


@dataclass(frozen=True)
class LetterRow:
    """A message of the checkout parked in a dead-letter queue now."""

    queue: str  # the consumed queue it failed in
    dlq: str
    message_id: str | None
    correlation_id: str | None
    message_type: str | None
    attempts: int | None
    first_failure_at: datetime | None
    last_failure_at: datetime | None
    error: str
    failure_kind: str | None
    replay_count: int

    @property
    def since(self) -> datetime | None:
        return self.last_failure_at or self.first_failure_at


@dataclass(frozen=True)
class BrokerScan:
    """What reading the dead-letter queues found, or why they were not read."""

    read: bool
    error: str | None = None
    letters: list[LetterRow] = field(default_factory=list)
    scanned: dict[str, tuple[int, int]] = field(default_factory=dict)  # dlq: (read, depth)

    @classmethod
    def skipped(cls) -> BrokerScan:
        return cls(read=False)

    @property
    def truncated(self) -> list[str]:
        return [dlq for dlq, (read, depth) in self.scanned.items() if read < depth]


@dataclass
class Sources:
    """Everything loaded for one trace, before merging."""

    order: OrderRow
    checkouts: list[CheckoutRow]
    now: datetime
    target: str = "order"  # or "checkout" when a checkout id was asked for
    steps: list[StepRow] = field(default_factory=list)  # in insertion order
    events: list[Event] = field(default_factory=list)
    payments: list[PaymentRow] = field(default_factory=list)
    effects: list[EffectRow] = field(default_factory=list)
    outbox: list[OutboxRow] = field(default_factory=list)
    audit: list[AuditRow] = field(default_factory=list)
    broker: BrokerScan = field(default_factory=BrokerScan.skipped)
    events_truncated: bool = False
    # The order's cancellations, as rows of the same shape (checkout_id: the cancellation,
    # state: its state, failure_reason: its rejection reason); their steps are in `steps`.
    cancellations: list[CheckoutRow] = field(default_factory=list)


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class Entry:
    """One line of the timeline."""

    at: datetime
    source: str
    kind: str
    what: str
    detail: str | None = None
    message_id: str | None = None
    message_type: str | None = None
    duration_ms: float | None = None
    state: str | None = None  # the checkout's state after a transition
    offset_ms: float = 0.0  # from the checkout's first line
    delta_ms: float | None = None  # from the previous line
    rank: int = _DEFAULT_RANK


@dataclass(frozen=True)
class CheckoutTrace:
    checkout: CheckoutRow
    payment: PaymentRow | None
    idempotency_key: str | None
    entries: list[Entry]

    @property
    def span_ms(self) -> float:
        return self.entries[-1].offset_ms if self.entries else 0.0


@dataclass(frozen=True)
class Trace:
    order: OrderRow
    target: str
    generated_at: datetime
    checkouts: list[CheckoutTrace]
    dead_letters: list[LetterRow]
    pending_outbox: list[OutboxRow]
    broker: BrokerScan
    events_truncated: bool = False
    cancellations: list[CheckoutTrace] = field(default_factory=list)


# --------------------------------------------------------------------------- text


def format_ms(ms: float | None) -> str:
    """12 ms, 1.23 s, 2 min 03 s, 1 h 02 min: short, and exact enough to compare."""
    if ms is None:
        return ""
    sign, ms = ("-", -ms) if ms < 0 else ("", ms)
    if ms < 10:
        text = f"{ms:.1f} ms"
    elif ms < 1000:
        text = f"{ms:.0f} ms"
    elif ms < 60_000:
        text = f"{ms / 1000:.2f} s"
    elif ms < 3_600_000:
        minutes, seconds = divmod(round(ms / 1000), 60)
        text = f"{minutes} min {seconds:02d} s"
    else:
        minutes = round(ms / 60_000)
        text = f"{minutes // 60} h {minutes % 60:02d} min"
    return sign + text


def _join(*parts: str | None) -> str | None:
    """Join the non-empty parts; a part already said by an earlier one is left out."""
    kept: list[str] = []
    for part in parts:
        if part and not any(part in earlier or earlier in part for earlier in kept):
            kept.append(part)
    return " · ".join(kept) if kept else None


def _count(n: int, noun: str) -> str:
    """`1 message in this replay`, `3 messages in this replay`."""
    word, _, rest = noun.partition(" ")
    return f"{n} {word}{'' if n == 1 else 's'}" + (f" {rest}" if rest else "")


def _ms(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() * 1000


def short_queue(queue: str) -> str:
    """`checkout.production` -> `production` (the consumer's name, the line's source)."""
    return queue.removesuffix(".dlq").rsplit(".", 1)[-1]


def _event_what(event: Event) -> str:
    kind, noun = event.kind, event.message_type or "message"
    took = format_ms(event.duration_ms)
    match kind:
        case "http.request":
            return _join("HTTP request", took) or ""
        case "outbox.published":
            return f"{noun} published" + (f" (lag {took})" if took else "")
        case "payment.attempt":
            return "payment attempt" + (f" ({took})" if took else "")
        case "effect.applied" | "message.processed":
            return f"{noun} processed" + (f" in {took}" if took else "")
        case "duplicate.skipped":
            return f"duplicate {noun} skipped"
        case "message.retried":
            return f"{noun} failed, will be retried"
        case "message.dead_lettered":
            return f"{noun} dead-lettered"
        case "message.replayed":
            return f"replayed {noun} received"
        case "deadline.set":
            return "deadline set"
        case "deadline.cancelled":
            return "deadline cancelled"
        case _:
            return _join(kind, event.message_type, took) or kind


# --------------------------------------------------------------------------- merging


def _step_entries(steps: Iterable[StepRow], trace_id: str | None) -> tuple[list[Entry], str | None]:
    entries, previous, key = [], None, None
    for step in steps:
        if step.name in (REQUEST_STEP, CANCEL_REQUEST_STEP):
            # The API writes "Idempotency-Key: KEY; trace TRACE_ID" (either part optional).
            parts = [p.strip() for p in (step.detail or "").split(";") if p.strip()]
            for part in parts:
                if part.startswith(IDEMPOTENCY_PREFIX):
                    key = part.removeprefix(IDEMPOTENCY_PREFIX)
            noun = step.name.split(".")[0]
            entry = Entry(
                at=step.at,
                source="api",
                kind=step.name,
                what=f"{noun} requested → {step.status}",
                detail=_join(step.detail, f"trace {trace_id}" if trace_id else None),
                state=step.status,
                rank=_RANK[step.name],
            )
        elif step.name.endswith(".ignored"):
            entry = Entry(
                at=step.at,
                source="saga",
                kind="message.ignored",
                what=step.name,
                detail=step.detail,
                state=step.status,
                rank=_RANK["message.ignored"],
            )
        else:
            moved = (
                f"{previous} → {step.status}"
                if previous and previous != step.status
                else (f"→ {step.status}")
            )
            entry = Entry(
                at=step.at,
                source="saga",
                kind="saga.transition",
                what=f"{step.name}: {moved}",
                detail=step.detail,
                state=step.status,
                rank=_RANK["saga.transition"],
            )
        previous = step.status
        entries.append(entry)
    return entries, key


def _event_entry(event: Event) -> Entry:
    return Entry(
        at=event.at,
        source=event.source,
        kind=event.kind,
        what=_event_what(event),
        detail=event.detail,
        message_id=str(event.message_id) if event.message_id else None,
        message_type=event.message_type,
        duration_ms=event.duration_ms,
        rank=_RANK.get(event.kind, _DEFAULT_RANK),
    )


def _merge_effects(entries: list[Entry], effects: Iterable[EffectRow]) -> None:
    """Add each effect, or fold it into the consumer's own event for the same message."""
    for effect in effects:
        message_id = str(effect.message_id)
        for i, entry in enumerate(entries):
            if (
                entry.kind in PROCESSED_KINDS
                and entry.source == effect.consumer
                and entry.message_id == message_id
            ):
                entries[i] = replace(entry, detail=_join(effect.what, entry.detail))
                break
        else:
            entries.append(
                Entry(
                    at=effect.at,
                    source=effect.consumer,
                    kind=EFFECT_APPLIED,
                    what=effect.what,
                    message_id=message_id,
                    message_type="OrderPaid",
                )
            )


def _letter_detail(letter: LetterRow) -> str:
    attempts = f"{letter.attempts} attempts" if letter.attempts is not None else None
    count = letter.replay_count
    replays = (
        None
        if not count
        else "replayed once before"
        if count == 1
        else (f"replayed {count} times before")
    )
    kind = f"{letter.failure_kind} failure" if letter.failure_kind else None
    return _join(attempts, kind, letter.error or None, replays) or ""


def _merge_letters(entries: list[Entry], letters: Iterable[LetterRow], now: datetime) -> None:
    """Each parked message: noted on the consumer's own `message.dead_lettered` event for
    that failure if there is one, else a line of its own at the time it was parked."""
    for letter in letters:
        since = letter.since
        where = f"still in {letter.dlq}"
        for i, entry in enumerate(entries):
            if (
                entry.kind == MESSAGE_DEAD_LETTERED
                and letter.message_id is not None
                and entry.message_id == letter.message_id
                and since is not None
                and abs(entry.at - since) <= SAME_FAILURE
            ):
                entries[i] = replace(entry, detail=_join(entry.detail, where))
                break
        else:
            entries.append(
                Entry(
                    at=since or now,
                    source=short_queue(letter.queue),
                    kind=MESSAGE_DEAD_LETTERED,
                    what=f"{letter.message_type or 'message'} dead-lettered, {where}",
                    detail=_letter_detail(letter),
                    message_id=letter.message_id,
                    message_type=letter.message_type,
                )
            )


def _audit_entries(audit: Iterable[AuditRow], mine: dict[str, str | None]) -> list[Entry]:
    """One line per replay or purge of each of this checkout's messages."""
    entries = []
    for row in audit:
        for message_id in dict.fromkeys(m for m in row.message_ids if m is not None):
            if message_id not in mine:
                continue
            noun = mine[message_id] or "message"
            verb, target, kind = {
                "replay": ("replayed", f"to {row.queue}", MESSAGE_REPLAYED),
                # `checkout events backfill`: a copy from the event log (`dlq` names it).
                "backfill": ("backfilled", f"from {row.dlq} to {row.queue}", "message.backfilled"),
            }.get(row.action, ("purged", f"from {row.dlq}", "message.purged"))
            entries.append(
                Entry(
                    at=row.at,
                    source="dlq" if row.action != "backfill" else "events",
                    kind=kind,
                    what=f"{noun} {verb} {target} by {row.actor}",
                    detail=_join(
                        f"reason: {row.reason}" if row.reason else "no reason given",
                        _count(len(row.message_ids), f"message in this {row.action}"),
                        # (`incomplete`: other ids asked for were not found; this one was.)
                        "interrupted" if row.outcome == "interrupted" else None,
                        f"audit #{row.id}",
                    ),
                    message_id=message_id,
                    message_type=mine[message_id],
                    rank=_AUDIT_RANK,
                )
            )
    return entries


def _pending_entry(row: OutboxRow, now: datetime) -> Entry:
    age = _ms(now, row.created_at)
    return Entry(
        at=row.created_at,
        source="outbox",
        kind="outbox.pending",
        what=f"{row.message_type} waiting in the outbox, unpublished for {format_ms(age)}",
        detail=row.routing_key,
        message_id=str(row.message_id),
        message_type=row.message_type,
        duration_ms=age,
        rank=_RANK["outbox.pending"],
    )


def order_entries(entries: Iterable[Entry]) -> list[Entry]:
    """Sort by time (then causal rank, then arrival), and fill offsets and deltas."""
    indexed = sorted(enumerate(entries), key=lambda pair: (pair[1].at, pair[1].rank, pair[0]))
    ordered: list[Entry] = []
    for _, entry in indexed:
        first = ordered[0].at if ordered else entry.at
        previous = ordered[-1].at if ordered else None
        ordered.append(
            replace(
                entry,
                offset_ms=_ms(entry.at, first),
                delta_ms=_ms(entry.at, previous) if previous is not None else None,
            )
        )
    return ordered


def message_types(sources: Sources) -> dict[str, tuple[uuid.UUID, str | None]]:
    """Every message id known to belong to one of the checkouts: id -> (checkout, type)."""
    known: dict[str, tuple[uuid.UUID, str | None]] = {}

    def note(message_id: object, checkout_id: uuid.UUID, message_type: str | None) -> None:
        if message_id is None:
            return
        key = str(message_id)
        if key not in known or known[key][1] is None:
            known[key] = (checkout_id, message_type)

    checkouts = {c.checkout_id for c in (*sources.checkouts, *sources.cancellations)}
    for event in sources.events:
        note(event.message_id, event.checkout_id, event.message_type)
    for effect in sources.effects:
        note(effect.message_id, effect.checkout_id, "OrderPaid")
    for row in sources.outbox:
        note(row.message_id, row.checkout_id, row.message_type)
    for letter in sources.broker.letters:
        checkout = _checkout_of(letter, checkouts, known)
        if checkout is not None:
            note(letter.message_id, checkout, letter.message_type)
    return known


def _checkout_of(
    letter: LetterRow,
    checkouts: set[uuid.UUID],
    known: dict[str, tuple[uuid.UUID, str | None]],
) -> uuid.UUID | None:
    if letter.message_id is not None and letter.message_id in known:
        return known[letter.message_id][0]
    try:
        correlation = uuid.UUID(str(letter.correlation_id))
    except ValueError:
        return None
    return correlation if correlation in checkouts else None


def build(sources: Sources) -> Trace:
    """The timeline of every checkout and cancellation in `sources`, each in time order."""
    known = message_types(sources)
    saga_ids = {c.checkout_id for c in (*sources.checkouts, *sources.cancellations)}
    letters = [
        letter
        for letter in sources.broker.letters
        if _checkout_of(letter, saga_ids, known) is not None
    ]

    def one(saga: CheckoutRow) -> CheckoutTrace:
        cid = saga.checkout_id
        entries, key = _step_entries(
            (s for s in sources.steps if s.checkout_id == cid), saga.trace_id
        )
        entries += [_event_entry(e) for e in sources.events if e.checkout_id == cid]
        _merge_effects(entries, (e for e in sources.effects if e.checkout_id == cid))
        entries += [_pending_entry(r, sources.now) for r in sources.outbox if r.checkout_id == cid]
        _merge_letters(
            entries,
            (x for x in letters if _checkout_of(x, saga_ids, known) == cid),
            sources.now,
        )
        mine = {m: t for m, (c, t) in known.items() if c == cid}
        entries += _audit_entries(sources.audit, mine)
        payment = next((p for p in sources.payments if p.checkout_id == cid), None)
        return CheckoutTrace(saga, payment, key, order_entries(entries))

    return Trace(
        order=sources.order,
        target=sources.target,
        generated_at=sources.now,
        checkouts=[one(c) for c in sources.checkouts],
        dead_letters=letters,
        pending_outbox=sorted(sources.outbox, key=lambda r: r.created_at),
        broker=sources.broker,
        events_truncated=sources.events_truncated,
        cancellations=[one(c) for c in sources.cancellations],
    )
