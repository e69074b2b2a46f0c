"""A handle on the in-process pipeline (see tests/integration/conftest.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from infra.messaging.publisher import Publisher
from infra.settings import Settings
from tests.support.polling import eventually


@dataclass
class Pipeline:
    settings: Settings
    api: httpx.AsyncClient
    mocks: httpx.AsyncClient
    publisher: Publisher
    engine: AsyncEngine

    async def order(self, amount: str, email: str = "jane@example.com") -> dict[str, Any]:
        response = await self.api.post(
            "/orders",
            json={
                "order_name": f"Pipeline poster {uuid.uuid4().hex[:6]}",
                "amount": amount,
                "currency": "EUR",
                "customer": {"email": email, "name": "Jane"},
            },
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def checkout(self, order_id: str) -> dict[str, Any]:
        response = await self.api.post(f"/orders/{order_id}/checkout")
        assert response.status_code == 202, response.text
        return dict(response.json())

    async def final(self, checkout_id: str) -> dict[str, Any]:
        async def probe() -> dict[str, Any]:
            return dict((await self.api.get(f"/checkouts/{checkout_id}")).json())

        return await eventually(
            probe,
            until=lambda c: c["state"] in ("PAID", "FAILED"),
            timeout=30,
            what=f"checkout {checkout_id} final",
        )

    async def effects(self, path: str, order_id: str) -> list[dict[str, Any]]:
        entries = (await self.mocks.get(path, params={"include": "status_code"})).json()
        return [e for e in entries if order_id in str(e["request"])]

    async def rows(self, model: type, order_id: str) -> int:
        async with self.engine.connect() as conn:
            statement = (
                select(func.count()).select_from(model).where(model.order_id == uuid.UUID(order_id))
            )  # type: ignore[attr-defined]
            return int((await conn.execute(statement)).scalar_one())
