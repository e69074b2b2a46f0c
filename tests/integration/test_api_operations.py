"""Health, readiness, metrics, OpenAPI and the error contract of the API as a whole."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import structlog
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from checkout_api.app import create_app
from checkout_api.testing import api_client, running
from infra.auth.keys import Role
from infra.settings import Settings
from tests.support.polling import eventually

pytestmark = pytest.mark.integration

PROBLEM_JSON = "application/problem+json"
CLOSED_BROKER = SecretStr("amqp://guest:guest@127.0.0.1:1/")
CLOSED_DATABASE = SecretStr("postgresql+psycopg://postgres@127.0.0.1:1/checkout")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings) as c:
        yield c


async def test_live_is_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json()["status"] == "live"


async def test_ready_is_200_once_database_and_broker_answer(client: httpx.AsyncClient) -> None:
    response = await eventually(
        lambda: client.get("/health/ready"),
        until=lambda r: r.status_code == 200,
        timeout=10,
        what="readiness",
    )
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


async def test_ready_is_503_naming_the_broker_when_it_is_unreachable(settings: Settings) -> None:
    broken = settings.model_copy(update={"rabbit_url": CLOSED_BROKER})
    async with api_client(broken, role=None) as client:
        response = await client.get("/health/ready")
        assert (await client.get("/health/live")).status_code == 200
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["checks"] == {"database": "ok", "broker": "unreachable"}
    assert "broker" in body["detail"]
    assert "database" not in body["detail"]
    assert "guest" not in response.text  # no URLs or credentials


async def test_ready_is_503_naming_the_database_when_it_is_unreachable(
    settings: Settings,
) -> None:
    broken = settings.model_copy(update={"database_url": CLOSED_DATABASE})
    async with api_client(broken, role=None) as client:
        response = await client.get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["database"] == "unreachable"
    assert "database" in body["detail"]
    assert "postgres" not in response.text


async def test_an_unexpected_error_is_a_generic_500_problem_without_details(
    settings: Settings,
) -> None:
    app = create_app(settings)

    async def boom() -> None:
        raise RuntimeError("psycopg: SELECT secret FROM orders at 127.0.0.1 (OperationalError)")

    app.add_api_route("/boom", boom)  # behind the key check, like every unknown route
    with structlog.testing.capture_logs() as logs:
        async with running(app, Role.clerk) as client:
            response = await client.get("/boom", headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["x-request-id"] == "req-500"
    body = response.json()
    assert body == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "detail": body["detail"],
    }
    for leak in ("psycopg", "SELECT", "Traceback", "127.0.0.1", "OperationalError"):
        assert leak not in response.text
    assert any(e["event"] == "unhandled error" and e.get("exc_info") for e in logs)


async def test_with_the_database_down_a_protected_route_is_503_without_details(
    settings: Settings,
) -> None:
    broken = settings.model_copy(update={"database_url": CLOSED_DATABASE})
    async with api_client(broken, role=None) as client:
        response = await client.get("/orders", headers={"Authorization": "Bearer ck_whatever"})
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["retry-after"] == "5"
    assert response.json()["type"] == "urn:checkout:problem:auth-unavailable"
    for leak in ("psycopg", "SELECT", "Traceback", "127.0.0.1", "OperationalError"):
        assert leak not in response.text


async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    await client.get("/health/live")
    await client.get("/orders/00000000-0000-0000-0000-000000000000")
    await client.get("/no/such/route")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'http_requests_total{method="GET",route="/health/live",status="200"} 1.0' in text
    assert 'http_requests_total{method="GET",route="/orders/{order_id}",status="404"} 1.0' in text
    assert 'http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert (
        'http_request_duration_seconds_bucket{le="0.005",method="GET",route="/health/live"}' in text
    )
    assert "checkouts_started_total 0.0" in text


async def test_two_apps_in_one_process_have_separate_metrics(settings: Settings) -> None:
    async with api_client(settings) as first, api_client(settings) as second:
        await first.get("/health/live")
        text = (await second.get("/metrics")).text
    assert 'route="/health/live"' not in text


async def test_unknown_route_and_wrong_method_are_problems(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM_JSON
    assert missing.json()["status"] == 404

    wrong = await client.delete("/orders")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == PROBLEM_JSON
    assert wrong.json()["status"] == 405
    assert "GET" in wrong.headers["allow"]
    assert "POST" in wrong.headers["allow"]


async def test_openapi_documents_the_api_and_its_problems(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    paths = document["paths"]
    assert {
        "/orders",
        "/orders/{order_id}",
        "/orders/{order_id}/checkout",
        "/checkouts/{checkout_id}",
        "/health/live",
        "/health/ready",
        "/metrics",
    } <= set(paths)
    post_checkout = paths["/orders/{order_id}/checkout"]["post"]
    assert {"202", "404", "409", "422"} <= set(post_checkout["responses"])
    assert "Location" in post_checkout["responses"]["202"]["headers"]
    error = post_checkout["responses"]["409"]["content"]
    assert error == {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    schemas = document["components"]["schemas"]
    assert {"Problem", "ValidationProblem", "FieldError", "CreateOrder"} <= set(schemas)
    assert "HTTPValidationError" not in schemas
    assert (await client.get("/docs")).status_code == 200


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    given = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await client.get("/health/live", headers={"X-Request-ID": "bad id\t!"})
    assert len(made.headers["x-request-id"]) == 32


async def test_each_request_logs_one_line_with_its_ids(
    client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        created = await client.post(
            "/orders",
            json={
                "order_name": "Log me",
                "amount": "1.00",
                "customer": {"email": "jane.doe@example.com", "name": "Jane"},
            },
        )
        order_id = created.json()["order_id"]
        started = await client.post(f"/orders/{order_id}/checkout")
        await client.get("/health/live")
    requests = [e for e in logs if e["event"] == "request"]
    assert [(e["method"], e["route"], e["status"]) for e in requests] == [
        ("POST", "/orders", 201),
        ("POST", "/orders/{order_id}/checkout", 202),
        ("GET", "/health/live", 200),
    ]
    assert requests[0]["order_id"] == order_id
    assert requests[1]["checkout_id"] == started.json()["checkout_id"]
    assert "order_id" not in requests[2]
    assert "checkout_id" not in requests[2]
    assert all(e["request_id"] and e["duration_ms"] >= 0 for e in requests)
    assert "jane.doe@example.com" not in repr(logs)
    assert "j***@example.com" in repr(logs)


async def test_a_chunked_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" " * 1024

    response = await client.post(
        "/orders", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM_JSON


async def test_an_app_can_be_started_twice(settings: Settings) -> None:
    app = create_app(settings)
    for _ in range(2):
        async with running(app) as client:
            assert (await client.get("/health/live")).status_code == 200
