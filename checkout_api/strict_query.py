"""Unknown or repeated query parameters are an error (422 naming them), as unknown body
fields are.

A misspelt `?limt=5` would otherwise be ignored and the caller would get 20 orders
without knowing why; `?name=a&name=b` would silently search for "b" only (no
parameter of this API takes a list). Applied to every route as an app-wide dependency; it reads the
parameters the matched route declares, its sub-dependencies' included.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


_KNOWN_ATTRIBUTE = "_checkout_query_names"


def _known(route: APIRoute) -> frozenset[str]:
    """The query parameters `route` declares, computed once and kept on the route itself
    (a cache keyed by id() could hand a new route the set of a freed one)."""
    known: frozenset[str] | None = getattr(route, _KNOWN_ATTRIBUTE, None)
    if known is None:
        known = frozenset(_query_names(route.dependant))
        setattr(route, _KNOWN_ATTRIBUTE, known)
    return known


async def reject_unknown_query(request: Request) -> None:
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    known = _known(route)
    unknown = [name for name in dict.fromkeys(request.query_params.keys()) if name not in known]
    repeated = [
        name
        for name in dict.fromkeys(request.query_params.keys())
        if name in known and len(request.query_params.getlist(name)) > 1
    ]
    if unknown or repeated:
        takes = ", ".join(sorted(known)) or "none"
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name),
                    "msg": f"is not a parameter of this endpoint (it takes: {takes})",
                }
                for name in unknown
            ]
            + [
                {"type": "repeated", "loc": ("query", name), "msg": "must be given once"}
                for name in repeated
            ]
        )
