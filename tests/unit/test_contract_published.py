"""The guard on published versions: a breaking change must raise `schema_version`.

`contracts/published/<Type>.v<N>.json` is the frozen schema of version N. Changing a
public event's field incompatibly without raising its version fails
`test_public_events_keep_their_published_versions`; the other tests show, with
variants of `OrderPaid`, that it would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import create_model

from contracts import PUBLIC_EVENTS, Message, OrderPaid
from contracts.schema import (
    ContractError,
    check_published,
    event_json_schema,
    load_published,
    schema_file_name,
    stale_files,
    write,
)


def test_public_events_keep_their_published_versions() -> None:
    problems = check_published(PUBLIC_EVENTS, load_published())
    assert not problems, "\n".join(p.message for p in problems)


def test_every_public_event_has_a_frozen_schema() -> None:
    published = load_published()
    for event in PUBLIC_EVENTS:
        assert schema_file_name(event) in published


N = OrderPaid.schema_version  # the current version; the variants below are relative to it
FIELD = next(iter(OrderPaid.model_fields))  # a field to change, e.g. order_id


def order_paid(
    changes: dict[str, Any] | None = None, *, version: int = N, drop: tuple[str, ...] = ()
) -> type[Message]:
    """A stand-in for `OrderPaid` as a developer might edit it."""
    fields: dict[str, Any] = {
        name: (info.annotation, info)
        for name, info in OrderPaid.model_fields.items()
        if name not in drop
    }
    fields.update(changes or {})
    model: type[Message] = create_model(
        "OrderPaid", __base__=Message, __doc__=OrderPaid.__doc__, **fields
    )
    model.routing_key = OrderPaid.routing_key
    model.schema_version = version
    return model


def current() -> dict[str, dict[str, Any]]:
    """`OrderPaid` as published at its current version (the baseline of the variants)."""
    return {schema_file_name(OrderPaid): event_json_schema(OrderPaid)}


def only(problems: list[Any]) -> Any:
    assert len(problems) == 1, problems
    return problems[0]


def test_an_unchanged_copy_of_order_paid_passes() -> None:
    assert event_json_schema(order_paid()) == event_json_schema(OrderPaid)
    assert check_published([order_paid()], load_published()) == []


@pytest.mark.parametrize(
    ("variant", "says"),
    [
        (lambda: order_paid({FIELD: (list[int], ...)}), f"field '{FIELD}' changed type"),
        (lambda: order_paid(drop=(FIELD,)), f"field '{FIELD}' was removed"),
        (
            lambda: order_paid({f"{FIELD}_new": (str, ...)}, drop=(FIELD,)),
            f"field '{FIELD}' was removed (or renamed); new field '{FIELD}_new' is required",
        ),
        (
            lambda: order_paid({FIELD: (OrderPaid.model_fields[FIELD].annotation, None)}),
            f"field '{FIELD}' is no longer required",
        ),
    ],
)
def test_changing_a_field_of_order_paid_without_raising_its_version_fails(
    variant: Any, says: str
) -> None:
    problem = only(check_published([variant()], current()))
    assert problem.kind == "breaking"
    assert says in problem.message
    assert f"raise OrderPaid.schema_version to {N + 1}" in problem.message
    assert "python -m contracts.schema" in problem.message
    assert f"OrderPaid.v{N + 1}.json" in problem.message


def test_an_optional_field_may_be_added_within_a_version() -> None:
    variant = order_paid({"coupon": (str | None, None)})
    assert check_published([variant], current()) == []


def test_a_raised_version_needs_its_schema_published() -> None:
    variant = order_paid({FIELD: (list[int], ...)}, version=N + 1)
    problem = only(check_published([variant], current()))
    assert problem.kind == "unpublished"
    assert f"OrderPaid v{N + 1} is not published" in problem.message
    assert f"contracts/published/OrderPaid.v{N + 1}.json" in problem.message
    assert "python -m contracts.schema" in problem.message


def test_a_version_cannot_go_down() -> None:
    newer = order_paid(version=N + 1)
    published = current() | {schema_file_name(newer): event_json_schema(newer)}
    problem = only(check_published([OrderPaid], published))
    assert problem.kind == "lowered"


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """A docs directory and a published directory holding OrderPaid's current version."""
    docs, published = tmp_path / "docs", tmp_path / "published"
    published.mkdir()
    for name, schema in current().items():
        (published / name).write_text(json.dumps(schema))
    return docs, published


def read(path: Path) -> Any:
    return json.loads(path.read_text())


def test_the_generator_publishes_a_raised_version_and_keeps_the_old_one(
    dirs: tuple[Path, Path],
) -> None:
    docs, published = dirs
    old, new = f"OrderPaid.v{N}.json", f"OrderPaid.v{N + 1}.json"
    variant = order_paid({FIELD: (list[int], ...)}, version=N + 1)
    write(docs, published, [variant])
    assert stale_files(docs, published, [variant]) == []
    assert {p.name for p in published.iterdir()} == {old, new}
    assert {p.name for p in (docs / "schemas").iterdir()} == {old, new}
    assert read(published / new)["x-schema-version"] == N + 1
    assert read(published / new)["properties"][FIELD]["type"] == "array"
    assert read(published / old) == event_json_schema(OrderPaid)


def test_the_generator_records_an_additive_change(dirs: tuple[Path, Path]) -> None:
    docs, published = dirs
    write(docs, published, [order_paid({"coupon": (str | None, None)})])
    assert "coupon" in read(published / f"OrderPaid.v{N}.json")["properties"]


def test_the_generator_refuses_a_breaking_change_and_writes_nothing(
    dirs: tuple[Path, Path],
) -> None:
    docs, published = dirs
    before = {p.name: p.read_text() for p in published.iterdir()}
    with pytest.raises(ContractError, match=rf"raise OrderPaid\.schema_version to {N + 1}"):
        write(docs, published, [order_paid(drop=(FIELD,))])
    assert {p.name: p.read_text() for p in published.iterdir()} == before
    assert not docs.exists()
