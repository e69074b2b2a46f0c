"""`breaking_changes`: what a consumer of the old schema would trip over in the new one."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from contracts.schema import breaking_changes

BEFORE: dict[str, Any] = {
    "$defs": {
        "Customer": {
            "properties": {
                "email": {"title": "Email", "type": "string"},
                "name": {"title": "Name", "type": "string"},
            },
            "required": ["email", "name"],
            "title": "Customer",
            "type": "object",
        }
    },
    "title": "OrderPaid",
    "description": "The order's payment succeeded.",
    "type": "object",
    "properties": {
        "order_id": {"format": "uuid", "title": "Order Id", "type": "string"},
        "amount": {"title": "Amount", "type": "string"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "tags": {"items": {"type": "string"}, "type": "array"},
        "customer": {"$ref": "#/$defs/Customer"},
    },
    "required": ["order_id", "amount", "tags", "customer"],
    "x-schema-version": 1,
}


def after(change: Any) -> dict[str, Any]:
    schema = copy.deepcopy(BEFORE)
    change(schema)
    return schema


def test_the_same_schema_breaks_nothing() -> None:
    assert breaking_changes(BEFORE, copy.deepcopy(BEFORE)) == []


def test_an_added_optional_field_is_allowed() -> None:
    def add(s: dict[str, Any]) -> None:
        s["properties"]["discount"] = {"anyOf": [{"type": "string"}, {"type": "null"}]}

    assert breaking_changes(BEFORE, after(add)) == []


def test_an_optional_field_added_to_a_nested_object_is_allowed() -> None:
    def add(s: dict[str, Any]) -> None:
        s["$defs"]["Customer"]["properties"]["phone"] = {"type": "string"}

    assert breaking_changes(BEFORE, after(add)) == []


def test_titles_descriptions_and_examples_may_change() -> None:
    def reword(s: dict[str, Any]) -> None:
        s["description"] = "Paid."
        s["properties"]["amount"].update(title="Total", description="Two places", examples=["1.00"])
        s["$defs"]["Customer"]["title"] = "Buyer"

    assert breaking_changes(BEFORE, after(reword)) == []


def test_an_inlined_definition_equals_its_ref() -> None:
    def inline(s: dict[str, Any]) -> None:
        s["properties"]["customer"] = s["$defs"].pop("Customer")

    assert breaking_changes(BEFORE, after(inline)) == []


def test_a_removed_field_breaks() -> None:
    def remove(s: dict[str, Any]) -> None:
        del s["properties"]["amount"]
        s["required"].remove("amount")

    assert breaking_changes(BEFORE, after(remove)) == ["field 'amount' was removed (or renamed)"]


def test_a_renamed_field_breaks() -> None:
    def rename(s: dict[str, Any]) -> None:
        s["properties"]["total"] = s["properties"].pop("amount")
        s["required"] = ["total" if r == "amount" else r for r in s["required"]]

    assert breaking_changes(BEFORE, after(rename)) == [
        "field 'amount' was removed (or renamed)",
        "new field 'total' is required (add it as optional)",
    ]


def test_a_renamed_optional_field_breaks_too() -> None:
    def rename(s: dict[str, Any]) -> None:
        s["properties"]["comment"] = s["properties"].pop("note")

    assert breaking_changes(BEFORE, after(rename)) == ["field 'note' was removed (or renamed)"]


@pytest.mark.parametrize(
    ("field", "new_type", "expected"),
    [
        ("amount", {"type": "number"}, "field 'amount' changed type: string -> number"),
        ("order_id", {"type": "string"}, "field 'order_id' changed type: string (uuid) -> string"),
        (
            "amount",
            {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "field 'amount' changed type: string -> string | null",
        ),
        (
            "tags",
            {"items": {"type": "integer"}, "type": "array"},
            "field 'tags[]' changed type: string -> integer",
        ),
        ("customer", {"type": "string"}, "field 'customer' changed type: object"),
    ],
)
def test_a_retyped_field_breaks(field: str, new_type: dict[str, Any], expected: str) -> None:
    def retype(s: dict[str, Any]) -> None:
        s["properties"][field] = new_type

    [problem] = breaking_changes(BEFORE, after(retype))
    assert problem.startswith(expected)


def test_a_field_made_required_breaks() -> None:
    def require(s: dict[str, Any]) -> None:
        s["required"].append("note")

    assert breaking_changes(BEFORE, after(require)) == ["field 'note' became required"]


def test_a_new_required_field_breaks() -> None:
    def add(s: dict[str, Any]) -> None:
        s["properties"]["discount"] = {"type": "string"}
        s["required"].append("discount")

    assert breaking_changes(BEFORE, after(add)) == [
        "new field 'discount' is required (add it as optional)"
    ]


def test_a_field_made_optional_breaks_its_readers() -> None:
    def relax(s: dict[str, Any]) -> None:
        s["required"].remove("amount")

    assert breaking_changes(BEFORE, after(relax)) == ["field 'amount' is no longer required"]


def test_changes_inside_a_nested_object_are_named_by_path() -> None:
    def change(s: dict[str, Any]) -> None:
        customer = s["$defs"]["Customer"]
        del customer["properties"]["email"]
        customer["required"].remove("email")
        customer["properties"]["name"] = {"type": "integer"}

    assert breaking_changes(BEFORE, after(change)) == [
        "field 'customer.email' was removed (or renamed)",
        "field 'customer.name' changed type: string -> integer",
    ]


def test_every_problem_is_reported() -> None:
    def many(s: dict[str, Any]) -> None:
        del s["properties"]["order_id"]
        s["properties"]["amount"] = {"type": "number"}
        s["required"].append("note")

    assert len(breaking_changes(BEFORE, after(many))) == 3
