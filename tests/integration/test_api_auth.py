"""Who may call what: bearer keys, roles, revocation, the rate limit, and what a refusal says."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from checkout_api import lifespan
from checkout_api.app import create_app
from checkout_api.testing import running
from infra.auth.keys import Role, create_key, revoke_key
from infra.settings import Settings

pytestmark = pytest.mark.integration

PROBLEM_JSON = "application/problem+json"
ORDER = {
    "order_name": "auth poster",
    "amount": "19.99",
    "currency": "EUR",
    "customer": {"email": "ada@example.com", "name": "Ada"},
}
SOME_ID = "00000000-0000-0000-0000-000000000000"
PUBLIC = ("/health/live", "/health/ready", "/metrics", "/docs", "/openapi.json", "/asyncapi.json")


@pytest.fixture
async def anonymous(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as client:
        yield client


async def _key(engine: AsyncEngine, role: Role) -> dict[str, str]:
    made = await create_key(engine, f"auth-{role.value}-{uuid.uuid4().hex[:8]}", role)
    return {"Authorization": f"Bearer {made.token}"}


def _protected_operations(document: dict[str, object]) -> list[tuple[str, str]]:
    paths = document["paths"]
    assert isinstance(paths, dict)
    found = []
    for path, operations in paths.items():
        for method, operation in operations.items():
            if operation.get("security"):
                found.append(
                    (
                        method.upper(),
                        path.replace("{order_id}", SOME_ID).replace("{checkout_id}", SOME_ID),
                    )
                )
    return found


async def test_every_protected_operation_without_a_key_is_401_with_a_challenge(
    anonymous: httpx.AsyncClient,
) -> None:
    document = (await anonymous.get("/openapi.json")).json()
    operations = _protected_operations(document)
    assert {path for _, path in operations} >= {
        "/orders",
        f"/orders/{SOME_ID}",
        f"/orders/{SOME_ID}/checkout",
        f"/checkouts/{SOME_ID}",
        f"/checkouts/{SOME_ID}/timeline",
    }
    for method, path in operations:
        response = await anonymous.request(method, path, json=ORDER)
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"] == 'Bearer realm="checkout"'
        assert response.headers["content-type"] == PROBLEM_JSON
        body = response.json()
        assert body["type"] == "urn:checkout:problem:unauthenticated"
        assert "Authorization: Bearer" in body["detail"]


async def test_health_metrics_and_documents_need_no_key(anonymous: httpx.AsyncClient) -> None:
    for path in PUBLIC:
        response = await anonymous.get(path)
        assert response.status_code in (200, 503), path  # ready may still be warming up
        assert response.status_code != 401


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer ck_not-a-key",
        "Bearer ",
        "Basic YWRhOnNlY3JldA==",
        "ck_no-scheme",
        "Bearer " + "x" * 500,
    ],
)
async def test_a_bad_key_or_scheme_is_401(anonymous: httpx.AsyncClient, authorization: str) -> None:
    response = await anonymous.get("/orders", headers={"Authorization": authorization})

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="checkout"')
    assert "ck_not-a-key" not in response.text  # the token is never echoed


async def test_an_unknown_key_gets_the_invalid_token_challenge(
    anonymous: httpx.AsyncClient,
) -> None:
    response = await anonymous.get("/orders", headers={"Authorization": "Bearer ck_unknown"})

    assert response.headers["www-authenticate"] == 'Bearer realm="checkout", error="invalid_token"'
    assert "checkout apikey create" in response.json()["detail"]


async def test_a_clerk_orders_and_checks_out_but_gets_403_on_operator_routes(
    anonymous: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    clerk = await _key(engine, Role.clerk)

    created = await anonymous.post("/orders", json=ORDER, headers=clerk)
    assert created.status_code == 201
    order_id = created.json()["order_id"]
    assert (await anonymous.get(f"/orders/{order_id}", headers=clerk)).status_code == 200
    assert (await anonymous.get("/orders?name=auth", headers=clerk)).status_code == 200
    checkout = await anonymous.post(f"/orders/{order_id}/checkout", headers=clerk)
    assert checkout.status_code == 202
    checkout_id = checkout.json()["checkout_id"]
    assert (await anonymous.get(f"/checkouts/{checkout_id}", headers=clerk)).status_code == 200

    refused = await anonymous.get(f"/checkouts/{checkout_id}/timeline", headers=clerk)
    assert refused.status_code == 403
    assert refused.headers["content-type"] == PROBLEM_JSON
    assert refused.json()["type"] == "urn:checkout:problem:forbidden"
    assert "operator" in refused.json()["detail"]

    operator = await _key(engine, Role.operator)
    allowed = await anonymous.get(f"/checkouts/{checkout_id}/timeline", headers=operator)
    assert allowed.status_code == 200


async def test_a_revoked_key_is_refused_from_the_next_request(
    anonymous: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    made = await create_key(engine, f"auth-revoke-{uuid.uuid4().hex[:8]}", Role.clerk)
    headers = {"Authorization": f"Bearer {made.token}"}
    assert (await anonymous.get("/orders", headers=headers)).status_code == 200

    await revoke_key(engine, made.key.name)

    response = await anonymous.get("/orders", headers=headers)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_an_unknown_path_needs_a_key_before_it_is_404(
    anonymous: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    assert (await anonymous.get("/admin")).status_code == 401
    assert (
        await anonymous.get("/admin", headers=await _key(engine, Role.clerk))
    ).status_code == 404


async def test_a_large_body_without_a_key_is_refused_unread(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.post(
        "/orders", content=b" " * (1024 * 1024), headers={"content-type": "application/json"}
    )
    assert response.status_code == 401


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after(
    settings: Settings, engine: AsyncEngine
) -> None:
    limited = settings.model_copy(update={"api_rate_limit": "3/minute"})
    busy, idle = await _key(engine, Role.clerk), await _key(engine, Role.clerk)
    async with running(create_app(limited)) as client:
        statuses = [
            (await client.get("/orders?limit=1", headers=busy)).status_code for _ in range(4)
        ]
        refused = await client.get("/orders?limit=1", headers=busy)
        other = await client.get("/orders?limit=1", headers=idle)

    assert statuses == [200, 200, 200, 429]
    assert refused.status_code == 429
    assert refused.headers["content-type"] == PROBLEM_JSON
    assert refused.json()["type"] == "urn:checkout:problem:rate-limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert other.status_code == 200  # the limit is per key


async def test_only_a_hash_of_the_token_is_stored(engine: AsyncEngine) -> None:
    made = await create_key(engine, f"auth-hash-{uuid.uuid4().hex[:8]}", Role.clerk)
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT * FROM api_keys WHERE key_id = :id"), {"id": made.key.key_id}
            )
        ).one()
    stored = " ".join(str(value) for value in row)
    assert made.token not in stored
    assert made.token[10:] not in stored  # nothing past the shown prefix


async def test_the_openapi_document_declares_the_bearer_scheme_and_refusals(
    anonymous: httpx.AsyncClient,
) -> None:
    document = (await anonymous.get("/openapi.json")).json()

    scheme = document["components"]["securitySchemes"]["apiKey"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    timeline = document["paths"]["/checkouts/{checkout_id}/timeline"]["get"]
    assert timeline["x-required-role"] == "operator"
    assert {"401", "403", "429"} <= set(timeline["responses"])
    post_order = document["paths"]["/orders"]["post"]
    assert post_order["x-required-role"] == "clerk"
    assert {"401", "413", "429"} <= set(post_order["responses"])
    assert document["paths"]["/health/live"]["get"]["security"] == []  # public on purpose


async def test_a_key_cannot_be_checked_without_the_database_503_with_retry_after(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago, now closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nowhere = settings.model_copy(
        update={"database_url": SecretStr(f"postgresql+psycopg://postgres@127.0.0.1:{port}/x")}
    )
    monkeypatch.setattr(lifespan, "POOL_TIMEOUT_S", 0.5)  # fail fast; the wait isn't tested
    async with running(create_app(nowhere)) as client:
        response = await client.get("/orders", headers={"Authorization": "Bearer ck_whatever"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["type"] == "urn:checkout:problem:auth-unavailable"
    assert "database is unreachable" in body["detail"]


async def test_requests_in_hand_each_get_their_own_keys_verdict(
    anonymous: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    # The key lookups of concurrent requests share reads; each request still gets its
    # own key's answer: a live clerk, a live operator, a revoked key, an unknown token.
    clerk = await _key(engine, Role.clerk)
    operator = await _key(engine, Role.operator)
    revoked = await create_key(engine, f"auth-gone-{uuid.uuid4().hex[:8]}", Role.operator)
    await revoke_key(engine, revoked.key.name)
    gone = {"Authorization": f"Bearer {revoked.token}"}
    unknown = {"Authorization": "Bearer ck_" + "x" * 43}
    timeline = f"/checkouts/{SOME_ID}/timeline"  # operators only

    responses = await asyncio.gather(
        *(anonymous.get(timeline, headers=h) for h in [clerk, operator, gone, unknown] * 5)
    )

    codes = [r.status_code for r in responses]
    assert codes == [403, 404, 401, 401] * 5, codes
