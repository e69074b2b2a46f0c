"""The console's order search and an order's page, over HTTP."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from html import unescape

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from checkout_api.app import create_app
from checkout_api.testing import running
from contracts import OrderPaid
from infra.auth.keys import Role, create_key
from infra.db.session import UnitOfWork
from infra.settings import Settings
from tests.support.seed import paid_order

pytestmark = pytest.mark.integration


@pytest.fixture
async def operator(settings: Settings, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    made = await create_key(engine, f"orders-{uuid.uuid4().hex[:8]}", Role.operator)
    async with running(create_app(settings)) as client:
        signed = await client.post("/console/sign-in", data={"api_key": made.token})
        assert signed.status_code == 303
        yield client


async def test_search_by_name_lists_the_order_and_links_its_page(
    operator: httpx.AsyncClient, uow: UnitOfWork
) -> None:
    word = uuid.uuid4().hex[:10]
    event = await paid_order(uow, name=f"Console {word} poster", email="c@example.com")

    found = await operator.get("/console/orders", params={"q": word})

    assert found.status_code == 200
    assert f'href="/console/orders/{event.order_id}"' in found.text
    assert f"Console {word} poster" in found.text
    nothing = await operator.get("/console/orders", params={"q": "no-such-" + word})
    assert "no orders match" in nothing.text


async def test_an_id_finds_its_order_and_a_checkout_id_its_order_too(
    operator: httpx.AsyncClient, uow: UnitOfWork
) -> None:
    event = await paid_order(uow, name="Console id poster", email="c@example.com")

    for wanted in (event.order_id, event.checkout_id):
        response = await operator.get("/console/orders", params={"q": str(wanted)})
        assert response.status_code == 303
        assert response.headers["location"] == f"/console/orders/{event.order_id}"
    unknown = await operator.get("/console/orders", params={"q": str(uuid.uuid4())})
    assert unknown.status_code == 200
    assert "No order or checkout has the id" in unknown.text


async def test_an_orders_page_shows_its_payment_and_the_timeline_of_its_checkout(
    operator: httpx.AsyncClient, uow: UnitOfWork
) -> None:
    event = await paid_order(uow, name="Console page poster", email="c@example.com")

    page = await operator.get(f"/console/orders/{event.order_id}")

    assert page.status_code == 200
    assert re.search(r'id="order-status">PAID<', page.text)
    assert str(event.payment_id) in page.text
    assert f'id="checkout-{event.checkout_id}"' in page.text
    assert 'class="timeline"' in page.text
    assert f'href="/console/events?since=&amp;order={event.order_id}"' in page.text
    missing = await operator.get(f"/console/orders/{uuid.uuid4()}")
    assert missing.status_code == 404
    not_an_id = await operator.get("/console/orders/not-a-uuid")
    assert not_an_id.status_code == 404


async def test_keys_are_listed_created_once_and_revoked_from_the_console(
    operator: httpx.AsyncClient,
) -> None:
    page = await operator.get("/console/keys")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    name = f"clerk-{uuid.uuid4().hex[:6]}"
    form = {"csrf_token": csrf.group(1), "name": name, "role": "clerk"}

    made = await operator.post("/console/keys/new", data=form)
    assert made.status_code == 201
    token = re.search(r'<code id="new-token">(ck_[\w-]+)</code>', made.text)
    assert token is not None
    listed = await operator.get("/console/keys")
    assert name in listed.text
    assert token.group(1) not in listed.text  # shown once only
    again = await operator.post("/console/keys/new", data=form)
    assert again.status_code == 409
    bad = await operator.post("/console/keys/new", data={**form, "name": "no spaces please"})
    assert bad.status_code == 400

    key_id = re.search(rf'id="key-{name}".*?/console/keys/([0-9a-f-]+)/revoke', listed.text, re.S)
    assert key_id is not None
    revoked = await operator.post(
        f"/console/keys/{key_id.group(1)}/revoke", data={"csrf_token": csrf.group(1)}
    )
    assert revoked.status_code == 200
    assert f"The key <strong>{name}</strong> is revoked" in revoked.text
    clerk = await operator.get("/orders", headers={"Authorization": f"Bearer {token.group(1)}"})
    assert clerk.status_code == 401


async def _cancelled_and_refunded(engine: AsyncEngine, event: OrderPaid) -> tuple[str, str]:
    """The seeded paid order cancelled as the cancellation saga leaves one: the order
    CANCELLED, its payment REFUNDED by a SUCCEEDED refund, the cancellation's hops."""
    cancellation_id, refund_id = str(uuid.uuid4()), str(uuid.uuid4())
    ids = {"c": cancellation_id, "r": refund_id, "o": event.order_id, "k": event.checkout_id}
    statements = (
        "INSERT INTO cancellations (cancellation_id, order_id, checkout_id, reason, state,"
        " created_at, updated_at) VALUES (:c, :o, :k, 'changed my mind', 'CANCELLED',"
        " now() - interval '3 seconds', now())",
        "INSERT INTO cancellation_steps (cancellation_id, name, status, at, detail) VALUES"
        " (:c, 'cancellation.requested', 'REQUESTED', now() - interval '3 seconds',"
        " 'Idempotency-Key: console-cancel'),"
        " (:c, 'production.cancelled', 'REFUNDING', now() - interval '2 seconds', NULL),"
        " (:c, 'payment.refunded', 'CANCELLED', now() - interval '1 second', 'refund 7.00')",
        "INSERT INTO refunds (refund_id, payment_id, order_id, cancellation_id, amount,"
        " currency, status, provider_refund_id, reason, idempotency_key, created_at,"
        " updated_at) SELECT :r, payment_id, order_id, :c, amount, currency, 'SUCCEEDED',"
        " 'rf_console', 'changed my mind', 'console-refund', now(), now() FROM payments"
        " WHERE order_id = :o",
        "UPDATE payments SET status = 'REFUNDED' WHERE order_id = :o",
        "UPDATE orders SET status = 'CANCELLED' WHERE order_id = :o",
    )
    async with engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement), ids)
    return cancellation_id, refund_id


async def test_a_cancelled_orders_page_shows_its_refund_and_the_cancellations_timeline(
    operator: httpx.AsyncClient, uow: UnitOfWork, engine: AsyncEngine
) -> None:
    event = await paid_order(uow, name="Console cancelled poster", email="c@example.com")
    cancellation_id, refund_id = await _cancelled_and_refunded(engine, event)

    page = await operator.get(f"/console/orders/{event.order_id}")

    assert page.status_code == 200
    assert re.search(r'id="order-status">CANCELLED<', page.text)
    assert re.search(r'id="payment">.*REFUNDED', page.text)
    refund = re.search(rf'<tr id="refund-{refund_id}">(.*?)</tr>', page.text, re.S)
    assert refund is not None
    for shown in ("SUCCEEDED", "8.00 USD", "changed my mind", cancellation_id, "rf_console"):
        assert shown in refund.group(1)
    assert re.search(rf'id="cancellations".*{cancellation_id}.*CANCELLED', page.text, re.S)
    section = re.search(
        rf'<section class="checkout cancellation" id="cancellation-{cancellation_id}">'
        r"(.*?)</section>",
        page.text,
        re.S,
    )
    assert section is not None
    hops = re.findall(r'<li class="hop hop-(\w+)">', section.group(1))
    assert len(hops) == 3
    assert "production.cancelled: REQUESTED → REFUNDING" in unescape(section.group(1))
    assert "Idempotency-Key console-cancel" in section.group(1)


async def test_an_order_with_no_cancellation_or_refund_says_none(
    operator: httpx.AsyncClient, uow: UnitOfWork
) -> None:
    event = await paid_order(uow, name="Console plain poster", email="c@example.com")
    page = await operator.get(f"/console/orders/{event.order_id}")
    assert re.search(r"<h2>Refunds</h2>\s*<p class=\"dim\">none</p>", page.text)
    assert re.search(r"<h2>Cancellations</h2>\s*<p class=\"dim\">none</p>", page.text)
    assert 'class="checkout cancellation"' not in page.text
