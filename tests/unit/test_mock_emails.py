"""The simulated Email Service: 202 for a sent e-mail, a permanent 422 for a bounce."""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

import httpx
import pytest
from structlog.testing import capture_logs


def _email(to: str) -> dict[str, Any]:
    return {"to": to, "subject": "Your order", "body": "Thanks!"}


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid4())}


async def test_an_email_is_accepted(mocks: httpx.AsyncClient) -> None:
    response = await mocks.post("/emails", json=_email("jane.doe@example.com"), headers=_key())

    assert response.status_code == 202
    assert response.json() == {"email_id": response.json()["email_id"], "status": "SENT"}


@pytest.mark.parametrize("to", ["bounce@example.com", "bounce.jane@example.com", "Bounce+1@x.io"])
async def test_a_bouncing_mailbox_is_a_permanent_422_that_the_key_replays(
    mocks: httpx.AsyncClient, to: str
) -> None:
    key = _key()

    bounced = await mocks.post("/emails", json=_email(to), headers=key)
    again = await mocks.post("/emails", json=_email(to), headers=key)

    assert bounced.status_code == 422
    assert bounced.headers["content-type"] == "application/problem+json"
    problem = bounced.json()
    assert problem["type"].endswith("/mailbox-bounced")
    assert (problem["status"], problem["title"]) == (422, "Mailbox bounced")
    assert to not in problem["detail"]
    assert (again.status_code, again.json()) == (422, problem)
    [entry] = (await mocks.get("/mock/emails", params={"include": "status_code"})).json()
    assert (entry["attempts"], entry["status_code"], entry["response"]) == (2, 422, problem)


@pytest.mark.parametrize("to", ["jane@bounce.example.com", "no-bounce@example.com"])
async def test_only_the_local_part_decides_a_bounce(mocks: httpx.AsyncClient, to: str) -> None:
    response = await mocks.post("/emails", json=_email(to))

    assert response.status_code == 202


@pytest.mark.parametrize("to", ["not-an-address", "two@at@example.com", "jane @example.com", 7])
async def test_an_invalid_recipient_is_a_validation_422(mocks: httpx.AsyncClient, to: Any) -> None:
    response = await mocks.post("/emails", json=_email(to))

    assert response.status_code == 422
    assert response.json()["type"].endswith("/validation-error")
    assert [e["field"] for e in response.json()["errors"]] == ["to"]


@pytest.mark.parametrize("to", ["jane.doe@example.com", "bounce.jane@example.com"])
async def test_the_log_masks_the_recipient(mocks: httpx.AsyncClient, to: str) -> None:
    with capture_logs() as logs:
        await mocks.post("/emails", json=_email(to), headers=_key())

    [line] = [log for log in logs if log["event"] == "mock_request"]
    assert line["to"] == f"{to[0]}***@example.com"
    assert (line["service"], line["attempts"]) == ("emails", 1)
    assert to not in json.dumps(logs, default=str)
