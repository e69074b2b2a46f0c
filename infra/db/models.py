"""SQLAlchemy models: the tables of every part.

Each consumer owns its own tables (invoices; email_notifications;
production_submissions) and shares only the inbox mechanism. The migration in
`infra/db/migrations` is the source of the schema; these models mirror it, every
table, including those the code reaches by SQL only (`tests/integration/test_schema.py`
finds no difference between the two).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ACTIVE_CHECKOUT_STATES = ("STARTED", "PAYMENT_PENDING")
# Every state of a cancellation but the final CANCELLED and REJECTED.
ACTIVE_CANCELLATION_STATES = (
    "REQUESTED",
    "WAITING_FOR_CHECKOUT",
    "CANCELLING_PRODUCTION",
    "REFUNDING",
)
FINAL_CANCELLATION_STATES = ("CANCELLED", "REJECTED")


class Base(DeclarativeBase):
    """Declarative base; UUIDs map to `uuid.UUID`, money to `Decimal`."""

    type_annotation_map = {
        uuid.UUID: UUID(as_uuid=True),
        datetime: DateTime(timezone=True),
        Decimal: Numeric(12, 2),
        dict[str, Any]: JSONB,
    }


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint(
            "status IN ('PENDING', 'PAID', 'FAILED', 'CANCELLED')", name="orders_status"
        ),
        CheckConstraint("amount > 0", name="orders_amount_positive"),
        # Newest-first paging: (created_at, order_id) is the cursor.
        Index("orders_created_idx", text("created_at DESC"), text("order_id DESC")),
        # Serves ILIKE '%text%' on a million rows (pg_trgm).
        Index(
            "orders_name_trgm_idx",
            "order_name",
            postgresql_using="gin",
            postgresql_ops={"order_name": "gin_trgm_ops"},
        ),
    )

    order_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    order_name: Mapped[str] = mapped_column(String(200))
    amount: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(String(3))
    customer_email: Mapped[str] = mapped_column(String(320))
    customer_name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Checkout(Base):
    __tablename__ = "checkouts"
    __table_args__ = (
        CheckConstraint(
            "state IN ('STARTED', 'PAYMENT_PENDING', 'PAID', 'FAILED')", name="checkouts_state"
        ),
        # At most one active checkout per order, enforced by the database rather
        # than by a check-then-insert that two requests could both pass.
        Index(
            "checkouts_one_active_per_order",
            "order_id",
            unique=True,
            postgresql_where=text("state IN ('STARTED', 'PAYMENT_PENDING')"),
        ),
        Index("checkouts_order_idx", "order_id", "created_at"),
    )

    checkout_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.order_id"))
    state: Mapped[str] = mapped_column(String(16))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    trace_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class CheckoutStep(Base):
    __tablename__ = "checkout_steps"
    __table_args__ = (Index("checkout_steps_checkout_idx", "checkout_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    checkout_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("checkouts.checkout_id"))
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime]
    detail: Mapped[str | None] = mapped_column(Text)


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint(
            "status IN ('PENDING', 'SUCCESSFUL', 'FAILED', 'REFUNDED')", name="payments_status"
        ),
        Index("payments_order_idx", "order_id", "created_at"),
    )

    payment_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    checkout_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("checkouts.checkout_id"), unique=True)
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.order_id"))
    amount: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    provider_payment_id: Mapped[str | None] = mapped_column(String(64))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Cancellation(Base):
    """A cancellation saga (migration 0007); at most one active per order."""

    __tablename__ = "cancellations"
    __table_args__ = (
        CheckConstraint(
            "state IN ('REQUESTED', 'WAITING_FOR_CHECKOUT', 'CANCELLING_PRODUCTION',"
            " 'REFUNDING', 'CANCELLED', 'REJECTED')",
            name="cancellations_state",
        ),
        # One active cancellation per order, by the database, not a check-then-insert.
        Index(
            "cancellations_one_active_per_order",
            "order_id",
            unique=True,
            postgresql_where=text("state NOT IN ('CANCELLED', 'REJECTED')"),
        ),
        Index("cancellations_order_idx", "order_id", "created_at"),
        Index(
            "cancellations_waiting_idx",
            "checkout_id",
            postgresql_where=text("state = 'WAITING_FOR_CHECKOUT'"),
        ),
    )

    cancellation_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.order_id"))
    checkout_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("checkouts.checkout_id"))
    reason: Mapped[str] = mapped_column(String(500))
    state: Mapped[str] = mapped_column(String(24))
    rejection_reason: Mapped[str | None] = mapped_column(Text)
    trace_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class CancellationStep(Base):
    __tablename__ = "cancellation_steps"
    __table_args__ = (Index("cancellation_steps_cancellation_idx", "cancellation_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    cancellation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cancellations.cancellation_id"))
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime]
    detail: Mapped[str | None] = mapped_column(Text)


class CancellationKey(Base):
    """The first response to a cancel request carrying an Idempotency-Key."""

    __tablename__ = "cancellation_keys"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    order_id: Mapped[uuid.UUID]
    cancellation_id: Mapped[uuid.UUID]
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class Refund(Base):
    """A full refund of one payment: of a cancellation, or of a charge that came too late."""

    __tablename__ = "refunds"
    __table_args__ = (
        CheckConstraint("status IN ('PENDING', 'SUCCEEDED')", name="refunds_status"),
        CheckConstraint("amount > 0", name="refunds_amount_positive"),
        # A payment is refunded in full, once.
        Index("refunds_one_per_payment", "payment_id", unique=True),
        Index("refunds_order_idx", "order_id"),
    )

    refund_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    payment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("payments.payment_id"))
    order_id: Mapped[uuid.UUID]
    cancellation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("cancellations.cancellation_id")
    )
    amount: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    provider_refund_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = (
        CheckConstraint(
            "status IN ('CREATED', 'SENT', 'FAILED', 'VOIDED')", name="invoices_status"
        ),
    )

    invoice_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.order_id"), unique=True)
    checkout_id: Mapped[uuid.UUID]
    amount: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    source_message_id: Mapped[uuid.UUID]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class EmailNotification(Base):
    __tablename__ = "email_notifications"

    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.order_id"), primary_key=True)
    checkout_id: Mapped[uuid.UUID]
    source_message_id: Mapped[uuid.UUID]
    recipient: Mapped[str] = mapped_column(String(320))
    sent_at: Mapped[datetime]


class ProductionSubmission(Base):
    __tablename__ = "production_submissions"

    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.order_id"), primary_key=True)
    checkout_id: Mapped[uuid.UUID]
    source_message_id: Mapped[uuid.UUID]
    production_reference: Mapped[str | None] = mapped_column(String(64))
    submitted_at: Mapped[datetime]


class CancellationEmail(Base):
    """A cancellation's e-mail, sent once (migration 0011)."""

    __tablename__ = "cancellation_emails"
    __table_args__ = (Index("cancellation_emails_order_idx", "order_id"),)

    cancellation_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.order_id"))
    source_message_id: Mapped[uuid.UUID]
    recipient: Mapped[str] = mapped_column(String(320))
    refund_amount: Mapped[Decimal | None]
    refund_currency: Mapped[str | None] = mapped_column(String(3))
    sent_at: Mapped[datetime]


class OutboxMessage(Base):
    """A message committed with the change that caused it, waiting for the relay."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    message_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    exchange: Mapped[str] = mapped_column(String(32))  # logical: "orders" | "internal"
    routing_key: Mapped[str] = mapped_column(String(128))
    message_type: Mapped[str] = mapped_column(String(64))
    correlation_id: Mapped[uuid.UUID]
    headers: Mapped[dict[str, Any]]
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class InboxMessage(Base):
    """A message a consumer has applied: the de-duplication record, written with the effect."""

    __tablename__ = "inbox"

    consumer: Mapped[str] = mapped_column(String(32), primary_key=True)
    message_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    received_at: Mapped[datetime]


class IdempotencyKey(Base):
    """The first response to a checkout request carrying an Idempotency-Key."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    order_id: Mapped[uuid.UUID]
    checkout_id: Mapped[uuid.UUID]
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class DlqAuditEntry(Base):
    """One operator action on a queue: who, when, what, why.

    `dlq replay|purge` (queue: the consumed queue, dlq: its dead-letter queue) and
    `events backfill` (queue: the queue copied into, dlq: the event log read from).
    """

    __tablename__ = "dlq_audit"
    __table_args__ = (
        CheckConstraint("action IN ('replay', 'purge', 'backfill')", name="dlq_audit_action"),
        CheckConstraint(
            "outcome IN ('completed', 'interrupted', 'incomplete')", name="dlq_audit_outcome"
        ),
        Index("dlq_audit_at_idx", text("at DESC"), text("id DESC")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))
    queue: Mapped[str] = mapped_column(String(255))  # the consumed queue, e.g. checkout.email
    dlq: Mapped[str] = mapped_column(String(255))  # the queue acted on, e.g. checkout.email.dlq
    message_count: Mapped[int] = mapped_column(Integer)
    # Strings, not UUIDs: a dead-lettered message may carry a malformed id.
    message_ids: Mapped[list[str | None]] = mapped_column(JSONB)
    missing: Mapped[list[str]] = mapped_column(JSONB)  # asked for by id, not in the queue
    reason: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    # A backfill's range and offsets (`operations.events.record`); None for the others.
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class CheckoutEvent(Base):
    """One hop of a checkout that no other table records: a publish, a retry, a
    dead-lettering, a payment attempt... Written by `infra.timeline.record`, read by
    `checkout trace` (`operations.timeline.query`)."""

    __tablename__ = "checkout_events"
    __table_args__ = (
        Index("checkout_events_checkout_idx", "checkout_id", "at", "id"),
        Index("checkout_events_order_idx", "order_id", "at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    checkout_id: Mapped[uuid.UUID]
    order_id: Mapped[uuid.UUID | None]
    at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(32))  # api, relay, saga, payment, invoice, ...
    kind: Mapped[str] = mapped_column(String(64))  # outbox.published, message.retried, ...
    message_id: Mapped[uuid.UUID | None]
    message_type: Mapped[str | None] = mapped_column(String(64))
    duration_ms: Mapped[float | None] = mapped_column(Double)
    detail: Mapped[str | None] = mapped_column(Text)


class ApiKey(Base):
    """A key the API accepts as `Authorization: Bearer <token>`; only its hash is kept."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("role IN ('clerk', 'operator')", name="api_keys_role"),
        Index(
            "api_keys_live_name_idx",
            "name",
            unique=True,
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    key_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class ConsoleSession(Base):
    """An operator signed in to /console with an API key (migration 0010); only the
    hash of the browser's token is kept, and the key's revocation ends the session."""

    __tablename__ = "console_sessions"
    __table_args__ = (Index("console_sessions_expires_idx", "expires_at"),)

    session_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.key_id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime]


# The timeline finds the replays and purges of one checkout's messages by id (migration 0003).
Index(
    "dlq_audit_message_ids_idx",
    DlqAuditEntry.__table__.c.message_ids,
    postgresql_using="gin",
)


class Deadline(Base):
    """A saga's timer: due at `due_at`, claimed by any saga instance (`saga.deadlines`)."""

    __tablename__ = "deadlines"
    __table_args__ = (
        CheckConstraint("saga IN ('checkout', 'cancellation')", name="deadlines_saga"),
        CheckConstraint("attempts >= 0", name="deadlines_attempts"),
        UniqueConstraint("saga", "saga_id", "kind", name="deadlines_one_per_kind"),
        Index("deadlines_due_at", "due_at"),
    )

    deadline_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    saga: Mapped[str] = mapped_column(String(20))
    saga_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(Text)
    due_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime]
