"""Every error is `application/problem+json` (RFC 9457).

Problem types: `about:blank` for plain HTTP errors (unknown route, wrong method,
unexpected failure), where the title is the status phrase; `urn:checkout:problem:<slug>`
for this API's own problems (validation-error, order-not-found, checkout-not-found,
cancellation-not-found, order-already-paid, order-already-cancelled,
refund-window-expired, order-cancelled, idempotency-key-reused, not-ready). URNs are
stable identifiers, not links. Responses never carry exception text from outside the domain.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import HTTPExceptionHandler

from checkout_api.usecases.errors import (
    CancellationNotFound,
    CheckoutNotFound,
    IdempotencyKeyReused,
    OrderAlreadyCancelled,
    OrderAlreadyPaid,
    OrderCancelled,
    OrderNotFound,
    RefundWindowExpired,
)

PROBLEM_JSON = "application/problem+json"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def problem_type(slug: str) -> str:
    return f"urn:checkout:problem:{slug}"


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


def problem(
    status: int,
    detail: str,
    *,
    type_: str = "about:blank",
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> ProblemResponse:
    """An RFC 9457 response; `title` defaults to the status phrase."""
    body = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return ProblemResponse(body, status_code=status, headers=headers)


def field_name(loc: Sequence[str | int]) -> str:
    """Name an invalid input: `customer.email`, `limit`, `order_id`, `Idempotency-Key`.

    Locations are `(source, *path)`; the body's fields are named without "body", a
    header by its canonical name, a value that is the whole body as "body".
    """
    if not loc:
        return "body"
    source, path = loc[0], [str(part) for part in loc[1:]]
    if source == "header" and path:
        return "-".join(word.capitalize() for word in path[0].replace("_", "-").split("-"))
    if source in ("body", "query", "path", "cookie"):
        return ".".join(path) or "body"
    return ".".join(str(part) for part in loc)


def validation_problem(
    errors: Iterable[tuple[str, str]],
    *,
    slug: str = "validation-error",
    title: str = "Request validation failed",
) -> ProblemResponse:
    """A 422 listing each (field, message)."""
    listed = [{"field": field, "message": message} for field, message in errors]
    names = ", ".join(dict.fromkeys(e["field"] for e in listed))
    return problem(
        422,
        f"invalid input: {names}",
        type_=problem_type(slug),
        title=title,
        errors=listed,
    )


def _validation_entries(exc: RequestValidationError) -> list[tuple[str, str]]:
    entries = []
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        if error.get("type") == "json_invalid":
            entries.append(("body", "is not valid JSON"))
        elif error.get("type") == "extra_forbidden" and loc and loc[0] == "body":
            entries.append((field_name(loc), "is not a field of this request; remove it"))
        else:
            entries.append((field_name(loc), str(error.get("msg", "is invalid"))))
    return entries


def _sent_json(request: Request) -> bool:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if not _sent_json(request) and any(tuple(e["loc"]) == ("body",) for e in exc.errors()):
        # FastAPI does not parse a body that is not declared JSON; say so, not "not an object".
        return problem(415, "send the body as JSON, with Content-Type: application/json")
    return validation_problem(_validation_entries(exc))


def _http_error_handler(routes: Sequence[BaseRoute]) -> HTTPExceptionHandler:
    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        status = exc.status_code
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
        if status == 404 and detail == "Not Found":
            detail = f"no resource at {request.url.path}"
        elif status == 405:
            # Starlette's Allow names only the first route on the path; RFC 9110 wants all.
            detail = f"{request.method} is not allowed on {request.url.path}"
            return problem(405, detail, headers={"Allow": _allowed(routes, request.url.path)})
        return problem(status, detail, headers=exc.headers)

    return on_http_error


def _allowed(routes: Sequence[BaseRoute], path: str) -> str:
    methods: set[str] = set()
    for route in routes:
        if isinstance(route, Route) and route.path_regex.match(path):
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


async def _on_not_found(request: Request, exc: Exception) -> Response:
    if isinstance(exc, OrderNotFound):
        slug = "order-not-found"
    elif isinstance(exc, CancellationNotFound):
        slug = "cancellation-not-found"
    else:
        slug = "checkout-not-found"
    return problem(404, str(exc), type_=problem_type(slug), title="Not found")


_CONFLICTS = {
    OrderAlreadyCancelled: ("order-already-cancelled", "Order already cancelled"),
    RefundWindowExpired: ("refund-window-expired", "Refund window expired"),
    OrderCancelled: ("order-cancelled", "Order cancelled"),
}


async def _on_conflict(request: Request, exc: Exception) -> Response:
    slug, title = _CONFLICTS[type(exc)]
    return problem(409, str(exc), type_=problem_type(slug), title=title)


async def _on_already_paid(request: Request, exc: Exception) -> Response:
    return problem(
        409, str(exc), type_=problem_type("order-already-paid"), title="Order already paid"
    )


async def _on_key_reused(request: Request, exc: Exception) -> Response:
    # Its own title: a client that reads titles must not take it for a malformed request.
    return validation_problem(
        [(IDEMPOTENCY_HEADER, str(exc))],
        slug="idempotency-key-reused",
        title="Idempotency key reused for another order",
    )


def install_error_handlers(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """Map framework and domain errors to problems (unexpected ones: see the middleware).

    `routes` are the app's routes, to name every allowed method in a 405.
    """
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _http_error_handler(routes))
    app.add_exception_handler(OrderNotFound, _on_not_found)
    app.add_exception_handler(CheckoutNotFound, _on_not_found)
    app.add_exception_handler(CancellationNotFound, _on_not_found)
    app.add_exception_handler(OrderAlreadyPaid, _on_already_paid)
    for conflict in _CONFLICTS:
        app.add_exception_handler(conflict, _on_conflict)
    app.add_exception_handler(IdempotencyKeyReused, _on_key_reused)
