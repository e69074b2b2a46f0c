"""The event log's pure parts: TIME arguments, selections, where a read stops, resuming."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest

from infra.messaging.event_log import max_age, retention_policy_command
from infra.messaging.topology import Topology
from infra.settings import SettingsError, load_settings
from operations.cli.events import resume_command
from operations.events.backfill import BackfillOutcome
from operations.events.event import LoggedEvent
from operations.events.reading import ATTACH_MARGIN, LATE_MARGIN, Window
from operations.events.selection import EventSelection
from operations.events.times import BadTime, parse_time

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


def event(offset: int = 0, at: datetime | None = NOW, **changes: object) -> LoggedEvent:
    fields: dict[str, object] = {
        "offset": offset,
        "message_id": f"m{offset}",
        "correlation_id": "c",
        "message_type": "OrderPaid",
        "routing_key": "order.paid",
        "timestamp": at,
        "content_type": "application/json",
        "content_encoding": None,
        "delivery_mode": 2,
        "headers": {"x-schema-version": 1},
        "body": b'{"order_id": "o1"}',
    }
    fields.update(changes)
    return LoggedEvent(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", NOW - timedelta(hours=2)),
        ("30m", NOW - timedelta(minutes=30)),
        ("7d", NOW - timedelta(days=7)),
        ("45s", NOW - timedelta(seconds=45)),
        ("1w", NOW - timedelta(weeks=1)),
        ("2026-12-04T10:00:00Z", datetime(2026, 12, 4, 10, tzinfo=UTC)),
        ("2026-12-04T11:00:00+01:00", datetime(2026, 12, 4, 10, tzinfo=UTC)),
        ("2026-12-04", datetime(2026, 12, 4, tzinfo=UTC)),
        ("2026-12-04T10:00:00", datetime(2026, 12, 4, 10, tzinfo=UTC)),  # no offset: UTC
    ],
)
def test_times_are_rfc_3339_or_a_duration_ago(text: str, expected: datetime) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2y", "-2h", "", "12:00", "2026-13-01"])
def test_anything_else_is_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(BadTime, match=r"RFC 3339 .* duration ago \(30s, 15m, 2h, 7d, 1w\)"):
        parse_time(text, NOW)


def test_a_selection_takes_a_range_types_by_name_or_key_and_an_order() -> None:
    selection = EventSelection(since=NOW - timedelta(hours=1), until=NOW, types=("order.paid",))
    assert selection.matches(event())
    assert not selection.matches(event(at=NOW + timedelta(seconds=1)))
    assert not selection.matches(event(at=NOW - timedelta(hours=2)))
    assert not selection.matches(event(message_type="OrderPaymentFailed", routing_key="x"))
    assert EventSelection(types=("OrderPaid",)).matches(event())
    assert EventSelection(order_id="o1").matches(event())
    assert not EventSelection(order_id="o2").matches(event())
    assert not EventSelection(since_offset=5).matches(event(offset=4))
    assert EventSelection(since_offset=5).matches(event(offset=5))


def test_a_selection_refuses_an_end_before_its_start() -> None:
    with pytest.raises(ValueError, match="--until is before --since"):
        EventSelection(since=NOW, until=NOW - timedelta(seconds=1))


def test_a_read_starts_early_for_clock_skew_and_stops_at_the_command_start_or_after_until() -> None:
    started = NOW
    assert Window.of(EventSelection(), started).start_argument() == "first"
    assert Window.of(EventSelection(since_offset=7), started).start_argument() == 7
    since = NOW - timedelta(hours=1)
    assert Window.of(EventSelection(since=since), started).start_argument() == since - ATTACH_MARGIN
    assert Window.of(EventSelection(), started).stop_after == started
    until = NOW - timedelta(hours=2)
    window = Window.of(EventSelection(until=until), started)
    assert window.stop_after == until + LATE_MARGIN
    assert window.end == until
    # An end in the future is the command's start: the log's end when it began.
    assert Window.of(EventSelection(until=NOW + timedelta(days=1)), started).end == started


def test_a_copy_keeps_every_property_and_header() -> None:
    original = event(offset=3)
    copy = original.copy()
    assert copy.message_id == "m3"
    assert copy.correlation_id == "c"
    assert copy.type == "OrderPaid"
    assert copy.timestamp == NOW
    assert copy.content_type == "application/json"
    assert copy.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert copy.headers == {"x-schema-version": 1}
    assert copy.body == original.body


def test_the_resume_command_keeps_the_range_and_starts_after_the_last_event_handled() -> None:
    selection = EventSelection(since=NOW - timedelta(hours=2), types=("OrderPaid",))
    outcome = BackfillOutcome("ns.orders.log", "team.q", Window.of(selection, NOW), rate=5.0)
    outcome.handled(event(offset=10), copied=True)
    outcome.handled(event(offset=11, message_type="Other", routing_key="x"), copied=False)

    words = shlex.split(resume_command(outcome, outcome.resume_offset, "late team"))

    assert words[:5] == ["checkout", "events", "backfill", "--to-queue", "team.q"]
    assert words[words.index("--since-offset") + 1] == "12"
    assert words[words.index("--since") + 1] == (NOW - timedelta(hours=2)).isoformat()
    assert words[words.index("--until") + 1] == NOW.isoformat()  # the first run's end
    assert words[words.index("--type") + 1] == "OrderPaid"
    assert words[words.index("--rate") + 1] == "5"
    assert words[words.index("--reason") + 1] == "late team"


def test_retention_is_in_days_and_a_policy_changes_it() -> None:
    assert max_age(30) == "30D"
    command = retention_policy_command("checkout.orders.log", 60)
    assert "'^checkout\\.orders\\.log$'" in command
    assert '"max-age":"60D"' in command


def test_the_retention_setting_defaults_to_30_days_and_a_bad_one_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CHECKOUT_EVENT_LOG_DAYS", raising=False)
    assert load_settings().event_log_days == 30
    assert Topology.from_settings(load_settings(event_log_days=7)).event_log_days == 7
    for bad in ("abc", "0", "-3", "1.5"):
        monkeypatch.setenv("CHECKOUT_EVENT_LOG_DAYS", bad)
        with pytest.raises(SettingsError) as caught:
            load_settings()
        message = str(caught.value)
        assert message.startswith("CHECKOUT_EVENT_LOG_DAYS: ")
        assert "\n" not in message


def test_the_events_table_shows_whole_ids_on_80_columns() -> None:
    from io import StringIO

    from rich.console import Console

    from operations.cli.events import events_table

    order, message = "51bdc406-367a-4e96-831b-eee045a43db2", "b01d6531-08cd-4d02-b610-a462d94e52d5"
    shown = event(offset=123456, body=f'{{"order_id": "{order}"}}'.encode(), message_id=message)
    out = StringIO()
    Console(file=out, width=80, color_system=None).print(
        events_table([shown, event(offset=123457, message_type="OrderCancellationRejected")], "t")
    )
    text = out.getvalue()
    assert order in text
    assert message in text
    assert "123456" in text
    assert "OrderCancellati" in text  # a long type wraps, the ids do not
    assert max(len(line) for line in text.splitlines()) <= 80


def test_copies_not_recorded_are_reported_with_how_far_they_got_and_how_to_go_on() -> None:
    from operations.cli.events import _not_recorded
    from operations.events.errors import BackfillNotRecorded, BackfillStopped

    settings = load_settings(database_url="postgresql+psycopg://postgres@127.0.0.1:1/x")
    outcome = BackfillOutcome("ns.orders.log", "team.q", Window.of(EventSelection(), NOW))
    outcome.handled(event(offset=41), copied=True)
    cause = RuntimeError("relation dlq_audit does not exist")

    line = _not_recorded(settings, BackfillNotRecorded(outcome, cause), "why")
    assert line.startswith("1 event was copied to team.q, the last at offset 41")
    assert "but the audit log was not written: PostgreSQL at 127.0.0.1:1" in line
    assert "to go on" not in line

    stopped = BackfillStopped(outcome, "interrupted (Ctrl-C)")
    line = _not_recorded(settings, BackfillNotRecorded(outcome, cause, stopped), "why")
    assert line.startswith("the backfill stopped (interrupted (Ctrl-C)): 1 event was copied")
    assert "--since-offset 42" in line


def test_the_console_says_which_offset_a_stopped_backfill_goes_on_from() -> None:
    from operations.console.events_page import stopped_line
    from operations.events.errors import BackfillStopped

    # A resumed backfill that stopped again before it handled any event: it goes on from
    # where it was asked to start, not from "offset None".
    outcome = BackfillOutcome(
        "ns.orders.log", "team.q", Window.of(EventSelection(since_offset=42), NOW)
    )
    line = stopped_line(BackfillStopped(outcome, "interrupted (Ctrl-C)"))
    assert line.endswith(f"until {NOW.isoformat()} and from offset 42")
    assert "None" not in line

    outcome.handled(event(offset=50), copied=True)
    line = stopped_line(BackfillStopped(outcome, "interrupted (Ctrl-C)"))
    assert "1 events were copied to team.q" in line
    assert line.endswith("from offset 51")

    # From a time, stopped at once: the same range again, no offset to give.
    fresh = BackfillOutcome(
        "ns.orders.log", "team.q", Window.of(EventSelection(since=NOW - timedelta(hours=1)), NOW)
    )
    line = stopped_line(BackfillStopped(fresh, "interrupted (Ctrl-C)"))
    assert line.endswith(f"until {NOW.isoformat()}")
    assert "None" not in line
