"""A trace as people read it (a rich timeline per checkout) and as tools read it (JSON).

Times are UTC. On a terminal each line shows its time, its offset from the
checkout's first line, the time since the line before (Δ), the part that did it,
what happened and the details; parked and unpublished messages follow in red and
yellow. The JSON document has every line with the same fields, in the same order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from operations.timeline.merge import (
    CheckoutTrace,
    Entry,
    LetterRow,
    OutboxRow,
    PaymentRow,
    Trace,
    format_ms,
    short_queue,
)

SOURCE_STYLES = {
    "api": "cyan",
    "relay": "blue",
    "outbox": "yellow",
    "saga": "magenta",
    "payment": "bright_magenta",
    "invoice": "green",
    "email": "green",
    "production": "green",
    "dlq": "red",
}
KIND_STYLES = {
    "message.retried": "yellow",
    "message.dead_lettered": "bold red",
    "message.replayed": "bold",
    "message.purged": "red",
    "outbox.pending": "yellow",
    "message.ignored": "dim",
    "duplicate.skipped": "dim",
}
STATE_STYLES = {
    "PAID": "green",
    "FAILED": "red",
    "PAYMENT_PENDING": "yellow",
    "STARTED": "cyan",
    "CANCELLED": "magenta",
    "REJECTED": "red",
    "WAITING_FOR_CHECKOUT": "yellow",
    "CANCELLING_PRODUCTION": "yellow",
    "REFUNDING": "yellow",
}


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _round(ms: float | None) -> float | None:
    return round(ms, 3) if ms is not None else None


# --------------------------------------------------------------------------- JSON


def entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "at": _iso(entry.at),
        "offset_ms": _round(entry.offset_ms),
        "delta_ms": _round(entry.delta_ms),
        "source": entry.source,
        "kind": entry.kind,
        "what": entry.what,
        "detail": entry.detail,
        "message_id": entry.message_id,
        "message_type": entry.message_type,
        "duration_ms": _round(entry.duration_ms),
        "state": entry.state,
    }


def _payment_json(payment: PaymentRow | None) -> dict[str, Any] | None:
    if payment is None:
        return None
    return {
        "payment_id": str(payment.payment_id),
        "status": payment.status,
        "amount": f"{payment.amount:.2f}",
        "currency": payment.currency,
        "provider_payment_id": payment.provider_payment_id,
        "failure_reason": payment.failure_reason,
        "created_at": _iso(payment.created_at),
        "updated_at": _iso(payment.updated_at),
    }


def checkout_json(trace: CheckoutTrace) -> dict[str, Any]:
    checkout = trace.checkout
    return {
        "checkout_id": str(checkout.checkout_id),
        "state": checkout.state,
        "failure_reason": checkout.failure_reason,
        "idempotency_key": trace.idempotency_key,
        "trace_id": checkout.trace_id,
        "created_at": _iso(checkout.created_at),
        "updated_at": _iso(checkout.updated_at),
        "span_ms": _round(trace.span_ms),
        "payment": _payment_json(trace.payment),
        "entries": [entry_json(e) for e in trace.entries],
    }


def cancellation_json(trace: CheckoutTrace) -> dict[str, Any]:
    cancellation = trace.checkout
    return {
        "cancellation_id": str(cancellation.checkout_id),
        "state": cancellation.state,
        "rejection_reason": cancellation.failure_reason,
        "idempotency_key": trace.idempotency_key,
        "trace_id": cancellation.trace_id,
        "created_at": _iso(cancellation.created_at),
        "updated_at": _iso(cancellation.updated_at),
        "span_ms": _round(trace.span_ms),
        "entries": [entry_json(e) for e in trace.entries],
    }


def letter_json(letter: LetterRow) -> dict[str, Any]:
    return {
        "queue": letter.queue,
        "dlq": letter.dlq,
        "message_id": letter.message_id,
        "correlation_id": letter.correlation_id,
        "message_type": letter.message_type,
        "attempts": letter.attempts,
        "first_failure_at": _iso(letter.first_failure_at),
        "last_failure_at": _iso(letter.last_failure_at),
        "error": letter.error,
        "failure_kind": letter.failure_kind,
        "replay_count": letter.replay_count,
    }


def pending_json(row: OutboxRow, now: datetime) -> dict[str, Any]:
    return {
        "checkout_id": str(row.checkout_id),
        "message_id": str(row.message_id),
        "message_type": row.message_type,
        "routing_key": row.routing_key,
        "created_at": _iso(row.created_at),
        "age_ms": _round((now - row.created_at).total_seconds() * 1000),
    }


def trace_json(trace: Trace) -> dict[str, Any]:
    """The document `checkout trace --json` prints and `/checkouts/{id}/timeline` returns."""
    order = trace.order
    broker = trace.broker
    return {
        "order_id": str(order.order_id),
        "target": trace.target,
        "generated_at": _iso(trace.generated_at),
        "order": {
            "order_name": order.order_name,
            "amount": f"{order.amount:.2f}",
            "currency": order.currency,
            "status": order.status,
            "created_at": _iso(order.created_at),
            "updated_at": _iso(order.updated_at),
        },
        "checkouts": [checkout_json(c) for c in trace.checkouts],
        "cancellations": [cancellation_json(c) for c in trace.cancellations],
        "dead_letters": [letter_json(x) for x in trace.dead_letters],
        "pending_outbox": [pending_json(r, trace.generated_at) for r in trace.pending_outbox],
        "dead_letter_queues": {
            "read": broker.read,
            "error": broker.error,
            "scanned": {
                dlq: {"read": read, "depth": depth} for dlq, (read, depth) in broker.scanned.items()
            },
        },
        "events_truncated": trace.events_truncated,
    }


# --------------------------------------------------------------------------- terminal


def _clock(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _state(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def entries_table(entries: list[Entry]) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold dim")
    table.add_column("time (UTC)", no_wrap=True, style="dim")
    table.add_column("+offset", justify="right", no_wrap=True)
    table.add_column("Δ", justify="right", no_wrap=True, style="dim")
    table.add_column("source", no_wrap=True)
    table.add_column("what", overflow="fold")
    table.add_column("detail", overflow="fold", style="dim")
    for entry in entries:
        style = SOURCE_STYLES.get(entry.source, "white")
        table.add_row(
            _clock(entry.at),
            "+" + format_ms(entry.offset_ms) if entry.offset_ms else "0",
            "" if entry.delta_ms is None else "+" + format_ms(entry.delta_ms),
            Text(entry.source, style=style),
            Text(entry.what, style=KIND_STYLES.get(entry.kind, "")),
            entry.detail or "",
        )
    return table


def _checkout_heading(trace: CheckoutTrace, noun: str = "Checkout") -> Text:
    checkout = trace.checkout
    heading = Text.assemble((f"{noun} ", "bold"), (str(checkout.checkout_id), "bold"), "  ")
    heading.append_text(_state(checkout.state))
    if checkout.failure_reason:
        heading.append(f" ({checkout.failure_reason})", style="red")
    heading.append(f"  ·  {format_ms(trace.span_ms)} from first to last line", style="dim")
    payment = trace.payment
    if payment is not None:
        heading.append(
            f"\n  payment {payment.payment_id} {payment.status} "
            f"{payment.amount:.2f} {payment.currency}",
            style="dim",
        )
        if payment.provider_payment_id:
            heading.append(f" (provider {payment.provider_payment_id})", style="dim")
    extras = []
    if trace.idempotency_key:
        extras.append(f"Idempotency-Key {trace.idempotency_key}")
    if checkout.trace_id:
        extras.append(f"trace {checkout.trace_id}")
    if extras:
        heading.append("\n  " + "  ·  ".join(extras), style="dim")
    return heading


def _letters(trace: Trace) -> list[RenderableType]:
    out: list[RenderableType] = []
    for letter in trace.dead_letters:
        since = f" since {_when(letter.since)}" if letter.since else ""
        attempts = f", {letter.attempts} attempts" if letter.attempts is not None else ""
        out.append(
            Text(
                f"⚠ {letter.message_type or 'message'} {letter.message_id} is in "
                f"{letter.dlq}{since}{attempts}: {letter.error or 'no error recorded'}",
                style="bold red",
            )
        )
        out.append(
            Text(
                f"  replay it: checkout dlq replay {short_queue(letter.queue)} "
                f"--message-id {letter.message_id} --reason TEXT",
                style="dim",
            )
        )
    return out


def _footer(trace: Trace) -> list[RenderableType]:
    out = _letters(trace)
    for row in trace.pending_outbox:
        age = format_ms((trace.generated_at - row.created_at).total_seconds() * 1000)
        out.append(
            Text(
                f"⏳ {row.message_type} {row.message_id} not yet published ({age} in the outbox): "
                "is the relay running and the broker up?",
                style="yellow",
            )
        )
    broker = trace.broker
    if broker.error:
        out.append(Text(f"dead-letter queues not read: {broker.error}", style="yellow"))
    elif not broker.read:
        out.append(Text("dead-letter queues not read (--no-broker)", style="dim"))
    for dlq in broker.truncated:
        read, depth = broker.scanned[dlq]
        out.append(Text(f"{dlq}: only the first {read} of {depth} messages read", style="yellow"))
    if trace.events_truncated:
        out.append(Text("only the first events are shown: this checkout has very many", "yellow"))
    return out


def trace_renderable(trace: Trace) -> RenderableType:
    """The whole trace for a terminal."""
    order = trace.order
    parts: list[RenderableType] = [
        Text.assemble(
            ("Order ", "bold"),
            (str(order.order_id), "bold"),
            f"  {order.order_name!r}  {order.amount:.2f} {order.currency}  ",
            _state(order.status),
            (f"  ·  created {_when(order.created_at)}", "dim"),
        )
    ]
    if not trace.checkouts:
        parts.append(Text("no checkout yet", style="dim"))
    for checkout in trace.checkouts:
        parts += [Text(""), _checkout_heading(checkout), entries_table(checkout.entries)]
    for cancellation in trace.cancellations:
        heading = _checkout_heading(cancellation, "Cancellation")
        parts += [Text(""), heading, entries_table(cancellation.entries)]
    footer = _footer(trace)
    if footer:
        parts += [Text(""), *footer]
    return Group(*parts)


def print_trace(trace: Trace, console: Console) -> None:
    console.print(trace_renderable(trace))
