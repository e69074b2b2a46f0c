"""What the API refuses that it once let through: unknown fields and query parameters,
repeated parameters, numbers a float cannot hold, bodies that are not UTF-8. Each is a
422 naming the input, and nothing is written."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from checkout_api.testing import api_client
from infra.settings import Settings
from tests.integration.test_api_orders import assert_validation_problem, order_body, row_counts

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(settings: Settings, clean_db: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings) as c:
        yield c


async def test_an_unknown_body_field_is_422_and_writes_nothing(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    before = await row_counts(clean_db)
    body = order_body(colour="red")
    body["customer"]["phone"] = "+44 20 7946 0000"

    response = await client.post("/orders", json=body)

    problem = assert_validation_problem(response, "customer.phone", "colour")
    assert {e["message"] for e in problem["errors"]} == {
        "is not a field of this request; remove it"
    }
    assert await row_counts(clean_db) == before


async def test_an_unknown_query_parameter_is_422_naming_what_is_taken(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/orders", params={"limt": "5"})

    problem = assert_validation_problem(response, "limt")
    assert "it takes: cursor, limit, name" in problem["errors"][0]["message"]


async def test_a_repeated_query_parameter_is_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/orders?name=a&name=b")

    problem = assert_validation_problem(response, "name")
    assert problem["errors"][0]["message"] == "must be given once"


async def test_a_json_number_is_judged_as_sent_not_as_a_float(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    before = await row_counts(clean_db)
    # As a float this is 19.99 exactly; as sent it has 19 decimals.
    response = await client.post(
        "/orders",
        content=b'{"order_name": "poster", "amount": 19.9900000000000000001, '
        b'"customer": {"email": "jane@example.com", "name": "Jane"}}',
        headers={"content-type": "application/json"},
    )

    assert_validation_problem(response, "amount")
    assert await row_counts(clean_db) == before
    exact = await client.post("/orders", json=order_body(amount=19.99))
    assert exact.status_code == 201
    assert exact.json()["amount"] == "19.99"


async def test_a_body_that_is_not_utf8_is_422_not_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/orders", content=b"\xff\xfe{", headers={"content-type": "application/json"}
    )

    problem = assert_validation_problem(response, "body")
    assert problem["errors"] == [{"field": "body", "message": "is not valid JSON"}]


async def test_a_nul_in_a_name_or_search_is_422_not_a_database_error(
    client: httpx.AsyncClient,
) -> None:
    assert_validation_problem(
        await client.post("/orders", json=order_body(order_name="a\0b")), "order_name"
    )
    assert_validation_problem(await client.get("/orders", params={"name": "a\0b"}), "name")
