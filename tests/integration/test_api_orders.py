"""Orders over HTTP against the real database: create, validate, read, search."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from checkout_api.testing import api_client
from checkout_api.usecases import queries
from checkout_api.usecases.order_views import contains_pattern, to_order
from checkout_api.usecases.sql import search_matches, search_window, select_orders
from infra.db.migrate import libpq_url
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
    window = await _plan(clean_db, search_window(window=1200), pattern="%poster%", limit=21)
    assert "orders_created_idx" in window
    assert "orders_name_trgm_idx" not in window
    assert "payments_order_idx" in window
    matches = await _plan(clean_db, search_matches(), pattern="%poster%", limit=21)
    assert "orders_name_trgm_idx" in matches
    assert "payments_order_idx" in matches


# Names for the search paths below: "poster" in 1 order of 3, "zyx" in 3 of 90, "Éclair"
# and "éCLAIR" (case folding beyond ASCII), "100%" and "snake_case" (wildcards taken
# literally), and texts without three word characters in a row, which give the trigram
# index nothing.
SEARCHED = [
    "poster",
    "POSTER 1",
    "r 1",
    "zyx",
    "banner ZYX",
    "éclair",
    "yer",
    "er",
    "o",
    "%",
    "e_c",
    "nothing like it",
]


def _search_orders() -> list[tuple[uuid.UUID, str, datetime]]:
    """90 orders, three to a creation time (ties are broken by order_id)."""
    at = datetime(2026, 3, 1, tzinfo=UTC)
    made = []
    for i in range(90):
        if i in (5, 40, 77):
            name = f"Banner zyx {i}"
        elif i % 3 == 0:
            name = f"Poster {i}"
        elif i in (8, 50):
            name = "Éclair box" if i == 8 else "boîte éCLAIR"
        elif i in (13, 62):
            name = "100% cotton" if i == 13 else "snake_case"
        else:
            name = f"Flyer {i}"
        made.append((uuid.uuid4(), name, at + timedelta(minutes=i // 3)))
    return made


async def _insert_search_orders(engine: AsyncEngine) -> uuid.UUID:
    """`_search_orders`, the fourth oldest with a payment and an invoice (its id)."""
    made = _search_orders()
    async with engine.begin() as conn:
        for order_id, name, at in made:
            await conn.execute(
                text(
                    "INSERT INTO orders VALUES (:o, :n, 1, 'USD', 'a@example.com', 'A', "
                    "'PENDING', :t, :t)"
                ),
                {"o": order_id, "n": name, "t": at},
            )
        paid, _, at = made[3]
        ids = {"c": uuid.uuid4(), "o": paid, "p": uuid.uuid4(), "i": uuid.uuid4(), "t": at}
        for statement in (
            "INSERT INTO checkouts VALUES (:c, :o, 'PAID', NULL, NULL, :t, :t)",
            "INSERT INTO payments VALUES (:p, :c, :o, 1, 'USD', 'SUCCESSFUL', NULL, NULL, :t, :t)",
            "INSERT INTO invoices VALUES (:i, :o, :c, 1, 'USD', 'CREATED', :p, :t, :t)",
        ):
            await conn.execute(text(statement), ids)
    return paid


async def _pages(client: httpx.AsyncClient, name: str, limit: int) -> list[list[dict[str, Any]]]:
    """Every page of a search, following next_cursor."""
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while len(pages) < 100:
        params: dict[str, Any] = {"name": name, "limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/orders", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    return pages


async def _as_before(engine: AsyncEngine, name: str, limit: int, after: Any) -> list[Any]:
    """A page as the search's one statement of before returns it (the planner's plan)."""
    params: dict[str, Any] = {"pattern": contains_pattern(name), "limit": limit}
    if after is not None:
        params |= {"after_created_at": after[0], "after_order_id": after[1]}
    async with engine.connect() as conn:
        rows = await conn.execute(select_orders(by_name=True, after=after is not None), params)
        return [to_order(row).model_dump(mode="json") for row in rows]


@pytest.mark.parametrize("windows", [(1, 1, 1), (2, 3, 10), (4, 10, 20), queries.SEARCH_WINDOWS])
async def test_every_search_path_pages_like_the_one_statement_of_before(
    settings: Settings,
    clean_db: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    windows: tuple[int, int, int],
) -> None:
    """Whichever way a page is found (in the first window of newest orders, in several,
    through the trigram index, or by the planner's statement), every page of every
    search is the one the single statement of before returned: the same orders with
    their payment and invoice, in the same order, with the same cursors."""
    paid = await _insert_search_orders(clean_db)
    monkeypatch.setattr(queries, "SEARCH_WINDOWS", windows)
    monkeypatch.setattr(queries, "WINDOWS_PAGE", 3)  # pages of 3+ walk bigger windows
    statements: list[list[str]] = []  # the statements of each search, in order
    search = queries.search_orders

    async def spied_search(*args: Any, **kwargs: Any) -> Any:
        statements.append([])
        return await search(*args, **kwargs)

    monkeypatch.setattr(queries, "search_orders", spied_search)

    def spy(build: Any) -> Any:
        def built(*args: Any, **kwargs: Any) -> Any:
            statements[-1].append(build.__name__)
            return build(*args, **kwargs)

        return built

    for attribute in ("search_window", "search_matches", "select_orders"):
        monkeypatch.setattr(queries, attribute, spy(getattr(queries, attribute)))

    names_newest_first = await _names_newest_first(clean_db)
    unlimited = settings.model_copy(update={"api_rate_limit": "100000/second"})
    async with api_client(unlimited) as client:
        await _check_every_page(client, clean_db, names_newest_first)
        shown = {o["order_id"]: o for page in await _pages(client, "poster", 100) for o in page}
    assert shown[str(paid)]["payment"]["status"] == "SUCCESSFUL"
    assert shown[str(paid)]["invoice"]["status"] == "CREATED"
    paths = {
        "one window"
        if steps == ["search_window"]
        else "planner"
        if steps == ["select_orders"]
        else "trigram index"
        if steps[-1] == "search_matches"
        else "windows"
        for steps in statements
    }
    if windows != queries.SEARCH_WINDOWS:
        assert paths == {"one window", "windows", "trigram index", "planner"}


async def _check_every_page(
    client: httpx.AsyncClient, engine: AsyncEngine, names_newest_first: list[str]
) -> None:
    for name in SEARCHED:
        expected = [n for n in names_newest_first if name.lower() in n.lower()]
        assert expected or name == "nothing like it"
        for limit in (1, 2, 5, 20):
            pages = await _pages(client, name, limit)
            assert [o["order_name"] for page in pages for o in page] == expected, (name, limit)
            assert [len(page) for page in pages[:-1]] == [limit] * (len(pages) - 1)
            after = None
            for page in pages:
                assert page == await _as_before(engine, name, limit, after), (name, limit)
                if page:
                    last = page[-1]
                    after = (
                        datetime.fromisoformat(last["created_at"]),
                        uuid.UUID(last["order_id"]),
                    )


async def _names_newest_first(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text("SELECT order_name FROM orders ORDER BY created_at DESC, order_id DESC")
        )
        return list(result.scalars())


async def test_the_windows_of_a_page_read_one_snapshot(
    settings: Settings, clean_db: AsyncEngine
) -> None:
    """A page walked in several windows is read in one REPEATABLE READ transaction, so
    an order committed between two of its statements cannot shift it."""
    await _insert_search_orders(clean_db)
    url = libpq_url(settings.database_url.get_secret_value())
    async with await psycopg.AsyncConnection.connect(url) as conn:
        params = {"pattern": contains_pattern("poster"), "limit": 3}
        rows = await queries._orders_named(conn, "poster", params, after=False)
        assert [row["order_name"] for row in rows] == ["Poster 87", "Poster 84", "Poster 81"]
        isolation = await (await conn.execute("SHOW transaction_isolation")).fetchone()
        assert isolation == ("repeatable read",)
