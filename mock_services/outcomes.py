"""What a simulated service answers to one request, and the problem bodies of its errors.

Errors are `application/problem+json` (RFC 9457) like the checkout API's. A 5xx answer
is never final: it is not stored, so the next request with the key is processed afresh.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from mock_services.store import JsonObject

PROBLEM_BASE = "https://checkout.example/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


@dataclass(frozen=True)
class Outcome:
    """One answer: status, JSON body, and a label for the request log."""

    status_code: int
    body: JsonObject
    label: str
    slow: bool = False

    @property
    def final(self) -> bool:
        """Whether the answer is stored and replayed (2xx and 4xx; never a 503)."""
        return self.status_code < 500


def problem(status: int, slug: str, title: str, detail: str, **extra: object) -> JsonObject:
    """An RFC 9457 problem body."""
    return {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }


def unavailable(detail: str, label: str) -> Outcome:
    """A transient 503: the caller should retry with the same key."""
    return Outcome(503, problem(503, "service-unavailable", "Service unavailable", detail), label)


def flaky_failure(attempt: int, failures: int) -> Outcome:
    """The 503 of a flaky amount's `attempt`-th request, of the `failures` it gets."""
    return unavailable(f"simulated transient failure ({attempt} of {failures})", "flaky_failure")


def validation_errors(exc: ValidationError) -> list[JsonObject]:
    """Pydantic's errors as `{"field", "message", "type"}`, without the offending input."""
    return [
        {
            "field": ".".join(str(part) for part in error["loc"]) or "body",
            "message": error["msg"],
            "type": error["type"],
        }
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def invalid_body(errors: list[JsonObject]) -> JsonObject:
    """The 422 problem body for a request that does not validate."""
    return problem(
        422,
        "validation-error",
        "Invalid request",
        "the request body does not validate",
        errors=errors,
    )


def invalid(exc: ValidationError) -> Outcome:
    """A permanent 422 for a body that does not validate."""
    return Outcome(422, invalid_body(validation_errors(exc)), "invalid")
