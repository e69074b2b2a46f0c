"""Orders over HTTP against the real database: create, validate, read, search."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from checkout_api.testing import api_client
from checkout_api.usecases.sql import select_orders
from infra.settings import Settings

pytestmark = pytest.mark.integration

PROBLEM_JSON = "application/problem+json"
WRITTEN_TABLES = ("orders", "checkouts", "checkout_steps", "outbox", "idempotency_keys")


@pytest.fixture
async def client(settings: Settings, clean_db: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings) as c:
        yield c


def order_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "order_name": "Poster A2",
        "amount": "19.99",
        "currency": "USD",
        "customer": {"email": "jane@example.com", "name": "Jane Doe"},
    }
    body.update(changes)
    return body


async def create(client: httpx.AsyncClient, **changes: Any) -> dict[str, Any]:
    response = await client.post("/orders", json=order_body(**changes))
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def row_counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {
            table: (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
            for table in WRITTEN_TABLES
        }


def assert_validation_problem(response: httpx.Response, *fields: str) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == 422
    assert {"type", "title", "status", "detail", "errors"} <= body.keys()
    assert [e["field"] for e in body["errors"]] == list(fields), body
    assert all(e["message"] for e in body["errors"])
    return body


async def test_create_returns_201_the_order_and_its_location(client: httpx.AsyncClient) -> None:
    before = datetime.now(UTC)
    response = await client.post("/orders", json=order_body())

    assert response.status_code == 201
    order = response.json()
    assert response.headers["location"] == f"/orders/{order['order_id']}"
    assert set(order) == {
        "order_id",
        "order_name",
        "amount",
        "currency",
        "customer",
        "status",
        "created_at",
        "updated_at",
        "payment",
        "invoice",
    }
    assert uuid.UUID(order["order_id"])
    assert order["order_name"] == "Poster A2"
    assert order["amount"] == "19.99"
    assert order["currency"] == "USD"
    assert order["customer"] == {"email": "jane@example.com", "name": "Jane Doe"}
    assert order["status"] == "PENDING"
    assert order["payment"] is None
    assert order["invoice"] is None
    created = datetime.fromisoformat(order["created_at"])
    assert created.tzinfo is not None
    assert before <= created <= datetime.now(UTC)
    assert order["updated_at"] == order["created_at"]


@pytest.mark.parametrize(
    ("amount", "shown"), [("19.9", "19.90"), (19.99, "19.99"), ("19.99", "19.99"), (5, "5.00")]
)
async def test_amount_is_shown_with_two_places(
    client: httpx.AsyncClient, amount: object, shown: str
) -> None:
    order = await create(client, amount=amount)
    assert order["amount"] == shown
    assert (await client.get(f"/orders/{order['order_id']}")).json()["amount"] == shown


async def test_currency_defaults_to_usd_and_is_stored_upper_case(
    client: httpx.AsyncClient,
) -> None:
    body = order_body()
    del body["currency"]
    assert (await client.post("/orders", json=body)).json()["currency"] == "USD"
    assert (await create(client, currency="eur"))["currency"] == "EUR"


@pytest.mark.parametrize(
    "email", ["jane@example.com", "bounce@example.com", "x.y+tag@sub.example.org"]
)
async def test_ordinary_addresses_are_accepted(client: httpx.AsyncClient, email: str) -> None:
    order = await create(client, customer={"email": email, "name": "J"})
    assert order["customer"]["email"] == email


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"amount": "19.999"}, "amount"),
        ({"amount": 19.999}, "amount"),
        ({"amount": 0}, "amount"),
        ({"amount": "0.00"}, "amount"),
        ({"amount": "-5"}, "amount"),
        ({"amount": -5}, "amount"),
        ({"amount": "abc"}, "amount"),
        ({"amount": None}, "amount"),
        ({"currency": "XYZ"}, "currency"),
        ({"currency": "dollars"}, "currency"),
        ({"customer": {"email": "not-an-address", "name": "J"}}, "customer.email"),
        ({"customer": {"email": "jane@", "name": "J"}}, "customer.email"),
        ({"customer": {"email": "jane@example.com", "name": ""}}, "customer.name"),
        ({"order_name": ""}, "order_name"),
        ({"order_name": "x" * 201}, "order_name"),
        ({"customer": None}, "customer"),
    ],
)
async def test_invalid_bodies_are_422_naming_the_field_and_write_nothing(
    client: httpx.AsyncClient, clean_db: AsyncEngine, changes: dict[str, Any], field: str
) -> None:
    response = await client.post("/orders", json=order_body(**changes))
    assert_validation_problem(response, field)
    assert field in response.json()["detail"]
    assert set((await row_counts(clean_db)).values()) == {0}


async def test_missing_customer_and_several_errors_are_all_named(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    body = order_body(amount="1.001", currency="ABC")
    del body["customer"]
    response = await client.post("/orders", json=body)
    body = assert_validation_problem(response, "amount", "currency", "customer")
    assert set((await row_counts(clean_db)).values()) == {0}


async def test_a_body_that_is_not_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/orders", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_validation_problem(response, "body")


async def test_a_huge_body_is_refused_as_a_problem(client: httpx.AsyncClient) -> None:
    response = await client.post("/orders", json=order_body(order_name="x" * 100_000))
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM_JSON


async def test_get_returns_the_order(client: httpx.AsyncClient) -> None:
    order = await create(client)
    response = await client.get(f"/orders/{order['order_id']}")
    assert response.status_code == 200
    assert response.json() == order


async def test_get_unknown_order_is_404_problem(client: httpx.AsyncClient) -> None:
    unknown = uuid.uuid4()
    response = await client.get(f"/orders/{unknown}")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["status"] == 404
    assert str(unknown) in body["detail"]
    assert {"type", "title", "status", "detail"} <= body.keys()


async def test_get_with_a_path_that_is_not_a_uuid_is_422(client: httpx.AsyncClient) -> None:
    assert_validation_problem(await client.get("/orders/not-a-uuid"), "order_id")


async def test_order_shows_its_latest_payment_and_its_invoice(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    order = await create(client, amount="12.50")
    order_id = order["order_id"]
    now = datetime.now(UTC)
    old_payment, new_payment, invoice = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with clean_db.begin() as conn:
        for payment_id, status, at in (
            (old_payment, "FAILED", now - timedelta(minutes=5)),
            (new_payment, "SUCCESSFUL", now),
        ):
            checkout_id = uuid.uuid4()
            await conn.execute(
                text("INSERT INTO checkouts VALUES (:c, :o, 'FAILED', NULL, NULL, :t, :t)"),
                {"c": checkout_id, "o": order_id, "t": at},
            )
            await conn.execute(
                text(
                    "INSERT INTO payments VALUES (:p, :c, :o, 12.50, 'USD', :s, NULL, NULL, :t, :t)"
                ),
                {"p": payment_id, "c": checkout_id, "o": order_id, "s": status, "t": at},
            )
        await conn.execute(
            text("INSERT INTO invoices VALUES (:i, :o, :c, 12.50, 'USD', 'CREATED', :m, :t, :t)"),
            {"i": invoice, "o": order_id, "c": uuid.uuid4(), "m": uuid.uuid4(), "t": now},
        )
        await conn.execute(
            text("UPDATE orders SET status = 'PAID' WHERE order_id = :o"), {"o": order_id}
        )

    shown = (await client.get(f"/orders/{order_id}")).json()
    assert shown["status"] == "PAID"
    assert shown["payment"] == {
        "payment_id": str(new_payment),
        "status": "SUCCESSFUL",
        "amount": "12.50",
    }
    assert shown["invoice"] == {"invoice_id": str(invoice), "status": "CREATED", "amount": "12.50"}
    [found] = (await client.get("/orders", params={"name": "poster"})).json()["items"]
    assert found == shown


async def test_search_is_a_case_insensitive_substring_match(client: httpx.AsyncClient) -> None:
    for name in ("Blue Poster", "POSTERS big", "Mug", "imposter syndrome"):
        await create(client, order_name=name)
    page = (await client.get("/orders", params={"name": "poSTer"})).json()
    assert [o["order_name"] for o in page["items"]] == [
        "imposter syndrome",
        "POSTERS big",
        "Blue Poster",
    ]
    assert page["next_cursor"] is None


async def test_search_treats_percent_underscore_and_backslash_literally(
    client: httpx.AsyncClient,
) -> None:
    for name in ("100% cotton", "100 cotton", "snake_case", "snakeXcase", "a\\b", "ab"):
        await create(client, order_name=name)

    async def names(query: str) -> list[str]:
        page = (await client.get("/orders", params={"name": query})).json()
        return sorted(o["order_name"] for o in page["items"])

    assert await names("%") == ["100% cotton"]
    assert await names("0% c") == ["100% cotton"]
    assert await names("_") == ["snake_case"]
    assert await names("e_c") == ["snake_case"]
    assert await names("\\") == ["a\\b"]


async def test_without_name_every_order_is_listed(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await create(client, order_name=f"order {i}")
    page = (await client.get("/orders")).json()
    assert [o["order_name"] for o in page["items"]] == ["order 2", "order 1", "order 0"]


async def test_paging_goes_through_every_match_newest_first_without_duplicates(
    client: httpx.AsyncClient,
) -> None:
    created = [(await create(client, order_name=f"Page test {i}"))["order_id"] for i in range(7)]
    await create(client, order_name="unrelated")

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"name": "page TEST", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/orders", params=params)
        assert response.status_code == 200
        page = response.json()
        pages += 1
        seen += [o["order_id"] for o in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(created))


async def test_orders_created_in_the_same_microsecond_page_by_id(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    ids = sorted((uuid.uuid4() for _ in range(5)), reverse=True)
    async with clean_db.begin() as conn:
        for order_id in ids:
            await conn.execute(
                text(
                    "INSERT INTO orders VALUES (:o, 'same time', 1, 'USD', 'a@example.com', "
                    "'A', 'PENDING', :t, :t)"
                ),
                {"o": order_id, "t": at},
            )
    first = (await client.get("/orders", params={"limit": 2})).json()
    second = (
        await client.get("/orders", params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    third = (
        await client.get("/orders", params={"limit": 2, "cursor": second["next_cursor"]})
    ).json()
    got = [o["order_id"] for p in (first, second, third) for o in p["items"]]
    assert got == [str(i) for i in ids]
    assert third["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "garbage"}, "cursor"),
        ({"cursor": "AAAA"}, "cursor"),
        ({"name": "x" * 201}, "name"),
    ],
)
async def test_bad_search_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    assert_validation_problem(await client.get("/orders", params=params), field)


async def test_limits_at_the_bounds_are_accepted(client: httpx.AsyncClient) -> None:
    for limit in (1, 100):
        assert (await client.get("/orders", params={"limit": limit})).status_code == 200


async def _plan(engine: AsyncEngine, statement: Any, **params: Any) -> str:
    sql = statement.params(**params).compile(
        dialect=engine.dialect, compile_kwargs={"literal_binds": True}
    )
    async with engine.connect() as conn:
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        return "\n".join((await conn.execute(text(f"EXPLAIN {sql}"))).scalars())


async def test_search_statements_use_the_indexes(clean_db: AsyncEngine) -> None:
    by_name = await _plan(clean_db, select_orders(by_name=True), pattern="%poster%", limit=21)
    assert "orders_name_trgm_idx" in by_name
    assert "payments_order_idx" in by_name
    paged = await _plan(
        clean_db,
        select_orders(after=True),
        after_created_at=datetime(2026, 1, 1, tzinfo=UTC),
        after_order_id=uuid.uuid4(),
        limit=21,
    )
    assert "orders_created_idx" in paged
