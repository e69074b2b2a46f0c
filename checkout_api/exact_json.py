"""JSON bodies with exact numbers: `19.99` arrives as `Decimal("19.99")`, not a float.

Starlette decodes a JSON body with `json.loads`, which turns every number with a
fraction into a float before any validator sees it: `19.9900000000000000001` becomes
19.99 and is accepted as an amount although it has more than two decimals, and digits
past a float's precision are lost silently. A route of `ExactNumbersRoute` decodes with
`parse_float=Decimal` instead, so the money validator judges the number that was sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class ExactNumbersRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                # FastAPI answers a JSONDecodeError with 422 "not valid JSON", anything
                # else with a bare 400; a body that is not UTF-8 is not JSON (RFC 8259).
                raise json.JSONDecodeError(
                    "the body is not UTF-8", repr(body[:50]), exc.start
                ) from None
            self._json = json.loads(text, parse_float=Decimal)
        return self._json


class ExactNumbersRoute(APIRoute):
    """An APIRoute whose JSON body keeps its numbers exact (see the module docstring)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def exact(request: Request) -> Response:
            return await handle(ExactNumbersRequest(request.scope, request.receive))

        return exact
