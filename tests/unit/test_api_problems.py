"""How invalid inputs are named in problem responses."""

from __future__ import annotations

import json

import pytest

from checkout_api.errors import PROBLEM_JSON, field_name, problem, validation_problem


@pytest.mark.parametrize(
    ("loc", "name"),
    [
        (("body", "customer", "email"), "customer.email"),
        (("body", "amount"), "amount"),
        (("body",), "body"),
        (("query", "limit"), "limit"),
        (("path", "order_id"), "order_id"),
        (("header", "idempotency-key"), "Idempotency-Key"),
        (("header", "Idempotency-Key"), "Idempotency-Key"),
        (("body", "items", 2, "name"), "items.2.name"),
        ((), "body"),
    ],
)
def test_field_names(loc: tuple[str | int, ...], name: str) -> None:
    assert field_name(loc) == name


def test_problem_has_the_rfc_9457_members() -> None:
    response = problem(404, "order x does not exist")
    assert response.media_type == PROBLEM_JSON
    assert json.loads(bytes(response.body)) == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "order x does not exist",
    }


def test_validation_problem_lists_each_field_once_in_detail() -> None:
    response = validation_problem([("amount", "a"), ("amount", "b"), ("currency", "c")])
    body = json.loads(bytes(response.body))
    assert response.status_code == 422
    assert body["detail"] == "invalid input: amount, currency"
    assert body["errors"] == [
        {"field": "amount", "message": "a"},
        {"field": "amount", "message": "b"},
        {"field": "currency", "message": "c"},
    ]
