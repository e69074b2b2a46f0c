"""The saga's shell: apply one message to one checkout in one transaction.

Load the checkout `FOR UPDATE` (serialises concurrent messages for one checkout
across every saga instance), claim the message in the inbox, decide with the pure
state machine, then write the new state, its step, the effects and their outbox
messages, and commit. A crash anywhere before the commit leaves nothing behind and
the message is redelivered.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from contracts import ChargePayment, Customer, OrderPaid, OrderPaymentFailed
from infra import metrics
from infra.db.models import Checkout, CheckoutStep, Order, Payment
from infra.db.session import UnitOfWork
from infra.messaging import inbox
from infra.messaging.consumer import Delivery, Handled
from infra.messaging.failures import PermanentFailure
from infra.messaging.outbox import add_to_outbox
from saga.state_machine import (
    CheckoutState,
    CompletePayment,
    Effect,
    FailPayment,
    RequestPayment,
    SagaInput,
    decide,
)

log = structlog.get_logger()

CONSUMER = "saga"


class CheckoutSaga:
    """Drives checkouts from STARTED to PAID or FAILED."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def handle(self, message: SagaInput, delivery: Delivery) -> Handled:
        async with self._uow() as session:
            row = (
                await session.execute(
                    select(Checkout, Order)
                    .join(Order, Order.order_id == Checkout.order_id)
                    .where(Checkout.checkout_id == message.checkout_id)
                    .with_for_update(of=Checkout)
                )
            ).first()
            if row is None:
                raise PermanentFailure(f"no checkout {message.checkout_id}")
            checkout, order = row
            structlog.contextvars.bind_contextvars(order_id=str(order.order_id))
            # Claimed after the lock: a duplicate waits for the first copy to commit.
            if not await inbox.claim(session, CONSUMER, delivery.message_id):
                log.info("duplicate message skipped")
                return Handled.DUPLICATE

            previous = CheckoutState(checkout.state)
            transition = decide(previous, message)
            now = datetime.now(UTC)
            for effect in transition.effects:
                await self._apply(session, effect, checkout, order, message, now)
            if transition.changed:
                checkout.state = transition.state
                checkout.failure_reason = transition.failure_reason
                checkout.updated_at = now
            session.add(
                CheckoutStep(
                    checkout_id=checkout.checkout_id,
                    name=transition.step.name,
                    status=transition.step.status,
                    at=now,
                    detail=transition.step.detail,
                )
            )
            await session.commit()
        if transition.changed:
            metrics.SAGA_TRANSITIONS.labels(previous, transition.state).inc()
        log.info("checkout transition", state=transition.state, step=transition.step.name)
        return Handled.DONE

    async def _apply(
        self,
        session: AsyncSession,
        effect: Effect,
        checkout: Checkout,
        order: Order,
        message: SagaInput,
        now: datetime,
    ) -> None:
        match effect:
            case RequestPayment():
                payment_id = uuid.uuid4()
                session.add(
                    Payment(
                        payment_id=payment_id,
                        checkout_id=checkout.checkout_id,
                        order_id=order.order_id,
                        amount=order.amount,
                        currency=order.currency,
                        status="PENDING",
                        created_at=now,
                        updated_at=now,
                    )
                )
                charge = ChargePayment(
                    checkout_id=checkout.checkout_id,
                    order_id=order.order_id,
                    payment_id=payment_id,
                    amount=order.amount,
                    currency=order.currency,
                )
                add_to_outbox(session, charge, correlation_id=checkout.checkout_id)
            case CompletePayment(provider_payment_id=reference):
                payment_id = await self._settle_payment(
                    session, checkout, now, status="SUCCESSFUL", provider_payment_id=reference
                )
                order.status, order.updated_at = "PAID", now
                paid = OrderPaid(
                    order_id=order.order_id,
                    checkout_id=checkout.checkout_id,
                    payment_id=payment_id,
                    order_name=order.order_name,
                    amount=order.amount,
                    currency=order.currency,
                    customer=Customer(email=order.customer_email, name=order.customer_name),
                    paid_at=now,
                )
                add_to_outbox(session, paid, correlation_id=checkout.checkout_id)
            case FailPayment(reason=reason):
                await self._settle_payment(
                    session, checkout, now, status="FAILED", failure_reason=reason
                )
                order.status, order.updated_at = "FAILED", now
                failed = OrderPaymentFailed(
                    order_id=order.order_id,
                    checkout_id=checkout.checkout_id,
                    reason=reason,
                    failed_at=now,
                )
                add_to_outbox(session, failed, correlation_id=checkout.checkout_id)

    async def _settle_payment(
        self,
        session: AsyncSession,
        checkout: Checkout,
        now: datetime,
        *,
        status: str,
        provider_payment_id: str | None = None,
        failure_reason: str | None = None,
    ) -> uuid.UUID:
        statement = (
            update(Payment)
            .where(Payment.checkout_id == checkout.checkout_id)
            .values(
                status=status,
                provider_payment_id=provider_payment_id,
                failure_reason=failure_reason,
                updated_at=now,
            )
            .returning(Payment.payment_id)
        )
        payment_id = (await session.execute(statement)).scalar_one_or_none()
        if payment_id is None:
            raise PermanentFailure(f"checkout {checkout.checkout_id} has no payment to settle")
        return payment_id
