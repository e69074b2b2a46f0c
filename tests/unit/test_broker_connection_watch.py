"""Reconnect noise: one warning per outage, one info line per recovery, and the gauge."""

from __future__ import annotations

import asyncio
import logging

import pytest
from structlog.testing import capture_logs

from infra import metrics
from infra.messaging.connect import ConnectionWatch, OncePerOutage, broker_address


def _gauge(name: str) -> float:
    value = metrics.BROKER_CONNECTED.labels(name)._value.get()
    return float(value)


def test_an_outage_is_one_warning_and_its_end_one_info_line() -> None:
    watch = ConnectionWatch("test.part")
    with capture_logs() as logs:
        for _ in range(5):  # aio-pika calls back on every failed attempt too
            watch.on_close("amqp://node-1/", ConnectionResetError("reset by peer"))
        assert _gauge("test.part") == 0
        watch.on_reconnect("amqp://node-2/")
        watch.on_reconnect("amqp://node-2/")
    assert [(line["log_level"], line["event"]) for line in logs] == [
        ("warning", "broker connection lost; reconnecting"),
        ("info", "broker connection restored"),
    ]
    assert logs[0]["connection"] == "test.part"
    assert logs[0]["error"] == "reset by peer"
    assert _gauge("test.part") == 1


def test_our_own_close_is_no_outage() -> None:
    watch = ConnectionWatch("test.closing")
    with capture_logs() as logs:
        watch.on_close("amqp://node-1/", asyncio.CancelledError())
        watch.on_close("amqp://node-1/", None)
    assert logs == []
    assert _gauge("test.closing") == 0


def test_repeats_of_a_library_line_are_held_back_until_reset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.noisy")
    once = OncePerOutage()
    logger.addFilter(once)
    try:
        with caplog.at_level(logging.DEBUG, logger="test.noisy"):
            for attempt in range(3):
                logger.warning("Connection attempt to %s failed", f"node-{attempt}")
            logger.error("Reconnect attempt failed %s", "node-1")
            logger.debug("a debug line %s", 1)
            logger.debug("a debug line %s", 2)
            once.reset()
            logger.warning("Connection attempt to %s failed", "node-1")
    finally:
        logger.removeFilter(once)
    assert [r.getMessage() for r in caplog.records] == [
        "Connection attempt to node-0 failed",
        "Reconnect attempt failed node-1",
        "a debug line 1",
        "a debug line 2",
        "Connection attempt to node-1 failed",
    ]


def test_a_library_line_let_through_loses_its_traceback() -> None:
    once = OncePerOutage()
    try:
        raise ConnectionResetError("reset")
    except ConnectionResetError:
        import sys

        record = logging.LogRecord(
            "aiormq.connection", logging.WARNING, __file__, 1, "reader exited", (), sys.exc_info()
        )
    assert once.filter(record)
    assert record.exc_info is None


def test_a_list_of_brokers_is_named_by_every_address() -> None:
    urls = "amqp://u:p@rabbit-1:5672/,amqp://u:p@rabbit-2/, amqps://rabbit-3/"
    assert broker_address(urls) == "rabbit-1:5672, rabbit-2:5672, rabbit-3:5671"
