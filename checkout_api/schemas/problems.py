"""RFC 9457 problem details: the body of every error response."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Problem(BaseModel):
    """An error (`application/problem+json`)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str


class FieldError(BaseModel):
    """One invalid input: `field` is a dotted body path, a query or path parameter, or a header."""

    field: str
    message: str


class ValidationProblem(Problem):
    """A 422: the request names an invalid value; `errors` lists each bad field."""

    errors: list[FieldError]
