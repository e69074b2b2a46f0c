"""Folding writes into one statement (`infra.db.statements.as_one`)."""

from __future__ import annotations

import pytest

from infra.db.statements import as_one


def test_one_write_is_sent_as_it_is() -> None:
    assert as_one([("UPDATE t SET a = %s", (1,))]) == ("UPDATE t SET a = %s", (1,))


def test_all_but_the_last_become_ctes_with_their_parameters_in_order() -> None:
    sql, params = as_one(
        [
            ("INSERT INTO a VALUES (%s, %s)", (1, 2)),
            ("UPDATE b SET x = %s", (3,)),
            ("INSERT INTO c VALUES (%s) RETURNING k", (4,)),
        ]
    )
    assert sql == (
        "WITH w0 AS (INSERT INTO a VALUES (%s, %s)), w1 AS (UPDATE b SET x = %s)"
        " INSERT INTO c VALUES (%s) RETURNING k"
    )
    assert params == (1, 2, 3, 4)


def test_nothing_to_combine_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="no writes"):
        as_one([])
