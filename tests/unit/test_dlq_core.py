"""The dead-letter operations' pure parts: selection, replay headers, output shapes, pacing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from infra.messaging import failures
from infra.messaging.topology import Topology
from operations.dlq.errors import UnknownQueue
from operations.dlq.letters import DeadLetter, jsonable
from operations.dlq.outcome import Outcome
from operations.dlq.pacing import Pacer
from operations.dlq.queues import resolve
from operations.dlq.replay import REPLAY_COUNT, REPLAYED_AT, replay_headers
from operations.dlq.selection import Selection

TOPOLOGY = Topology("ns", (100, 200))
NOW = datetime(2026, 11, 22, 10, 0, 1, tzinfo=UTC)


@pytest.mark.parametrize("name", ["ns.email", "ns.email.dlq", "email"])
def test_a_queue_is_named_by_its_name_its_dlq_or_its_short_key(name: str) -> None:
    assert resolve(TOPOLOGY, name).dlq == "ns.email.dlq"


def test_an_unknown_queue_lists_the_known_ones() -> None:
    with pytest.raises(UnknownQueue) as info:
        resolve(TOPOLOGY, "billing")

    for key in ("payment", "invoice", "email", "production"):
        assert f"ns.{key}" in str(info.value)
    assert "billing" in str(info.value)


def test_selection_of_ids_matches_only_them_and_reports_the_missing_in_order() -> None:
    selection = Selection.of(["b", "a", "b", " ", "c"])

    assert selection.ids == ("b", "a", "c")
    assert selection.matches("a")
    assert not selection.matches("d")
    assert not selection.matches(None)
    assert selection.missing(["a", None]) == ["b", "c"]


def test_selection_of_every_message_matches_anything_and_misses_nothing() -> None:
    selection = Selection.every()

    assert selection.matches("x")
    assert selection.matches(None)
    assert selection.missing([]) == []


def test_an_empty_selection_of_ids_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Selection.of(["", "  "])


def test_replay_headers_reset_the_attempts_and_keep_the_history() -> None:
    dead = {
        failures.ORIGINAL_QUEUE: "ns.email",
        failures.ATTEMPTS: 4,
        failures.FIRST_FAILURE_AT: "2026-11-22T09:00:00+00:00",
        failures.LAST_FAILURE_AT: "2026-11-22T09:01:00+00:00",
        failures.ERROR_TYPE: "TransientFailure",
        failures.ERROR_MESSAGE: "503",
        failures.FAILURE_KIND: "transient",
        "x-schema-version": 1,
        "x-death": [{"count": 1}],
        "x-delivery-count": 20,
    }

    headers = replay_headers(dead, NOW)

    assert failures.ATTEMPTS not in headers
    assert "x-death" not in headers
    assert "x-delivery-count" not in headers
    assert headers[REPLAY_COUNT] == 1
    assert headers[REPLAYED_AT] == NOW.isoformat()
    for kept in (
        failures.ORIGINAL_QUEUE,
        failures.FIRST_FAILURE_AT,
        failures.LAST_FAILURE_AT,
        failures.ERROR_TYPE,
        failures.ERROR_MESSAGE,
        failures.FAILURE_KIND,
        "x-schema-version",
    ):
        assert headers[kept] == dead[kept]


def test_a_second_replay_counts_on() -> None:
    assert replay_headers({REPLAY_COUNT: 2, failures.ATTEMPTS: 1}, NOW)[REPLAY_COUNT] == 3


def test_a_dead_letter_as_json_parses_a_json_body() -> None:
    letter = DeadLetter("m1", "c1", "OrderPaid", {failures.ATTEMPTS: 4}, b'{"order_id": "o1"}')

    assert letter.as_json() == {
        "message_id": "m1",
        "correlation_id": "c1",
        "headers": {failures.ATTEMPTS: 4},
        "body": {"order_id": "o1"},
    }


def test_a_dead_letter_as_json_keeps_a_body_that_is_not_json_as_text() -> None:
    letter = DeadLetter(None, None, None, {}, b"{not json")

    assert letter.as_json()["body"] == "{not json"
    assert letter.as_json()["message_id"] is None


def test_header_values_become_json_values() -> None:
    value = {"x-death": [{"time": NOW, "reason": b"delivery_limit", "n": Decimal("1.5")}]}

    converted = jsonable(value)

    assert converted == {
        "x-death": [{"time": NOW.isoformat(), "reason": "delivery_limit", "n": "1.5"}]
    }
    json.dumps(converted)


def test_the_error_of_a_dead_letter_names_type_and_message() -> None:
    ours = DeadLetter(
        "m",
        None,
        None,
        {failures.ERROR_TYPE: "PermanentFailure", failures.ERROR_MESSAGE: "bounced"},
    )
    brokers = DeadLetter("m", None, None, {"x-first-death-reason": "delivery_limit"})

    assert ours.error == "PermanentFailure: bounced"
    assert brokers.error == "dead-lettered by the broker: delivery_limit"
    assert DeadLetter("m", None, None).error == ""


def test_the_summaries_have_the_documented_shapes() -> None:
    queue = TOPOLOGY.queues["email"]
    replayed = Outcome("replay", queue, dry_run=True, message_ids=["a"], missing=["b"])
    purged = Outcome("purge", queue, message_ids=["a", "c"])

    assert replayed.summary() == {
        "queue": "ns.email",
        "replayed": 1,
        "message_ids": ["a"],
        "missing": ["b"],
        "dry_run": True,
    }
    assert purged.summary() == {
        "queue": "ns.email",
        "purged": 2,
        "message_ids": ["a", "c"],
        "missing": [],
    }


class FakeClock:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_the_pacer_spaces_calls_by_one_over_the_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(20, clock=clock, sleep=clock.sleep)

    for _ in range(10):
        await pacer.wait()

    assert clock.now == pytest.approx(100.0 + 9 / 20)
    assert clock.sleeps == pytest.approx([0.05] * 9)


async def test_the_pacer_counts_time_spent_between_calls() -> None:
    clock = FakeClock()
    pacer = Pacer(10, clock=clock, sleep=clock.sleep)

    await pacer.wait()
    clock.now += 0.07  # a slow publish
    await pacer.wait()
    clock.now += 0.5  # a very slow one: no burst afterwards
    await pacer.wait()
    await pacer.wait()

    assert clock.sleeps == pytest.approx([0.03, 0.1])


async def test_the_pacer_without_a_rate_never_sleeps() -> None:
    clock = FakeClock()
    pacer = Pacer(None, clock=clock, sleep=clock.sleep)

    for _ in range(100):
        await pacer.wait()

    assert clock.sleeps == []


def test_the_pacer_refuses_a_rate_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Pacer(0)


@pytest.mark.parametrize(
    ("body", "order_id"),
    [
        (
            b'{"order_id": "8C6E1C0B-3C8A-4F43-9A47-1A2B3C4D5E6F", "x": 1}',
            "8c6e1c0b-3c8a-4f43-9a47-1a2b3c4d5e6f",
        ),
        (b'{"order_id": "<script>"}', None),  # a hostile body names no order
        (b'{"order_id": 12}', None),
        (b'["order_id"]', None),
        (b"not json", None),
        (b"", None),
    ],
)
def test_a_dead_letter_names_its_order_only_by_a_uuid(body: bytes, order_id: str | None) -> None:
    letter = DeadLetter(message_id="m", correlation_id="c", message_type="OrderPaid", body=body)
    assert letter.order_id == order_id
