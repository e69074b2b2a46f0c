"""`checkout stuck` knows an open circuit breaker from the saga process's own metrics."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from operations.stuck import Stuck, attach_breakers, breakers_open

METRICS = """\
# HELP checkout_circuit_breaker_open 1 while a service's circuit breaker is open
# TYPE checkout_circuit_breaker_open gauge
checkout_circuit_breaker_open{service="payment"} 1.0
checkout_circuit_breaker_open{service="production"} 0.0
# HELP other_metric something else
# TYPE other_metric gauge
other_metric{service="refunds"} 1.0
"""


def _stuck(kind: str, state: str) -> Stuck:
    now = datetime.now(UTC)
    return Stuck(kind, uuid.uuid4(), uuid.uuid4(), state, now, timedelta(minutes=9))


def test_only_open_breakers_are_read_from_the_metrics() -> None:
    assert breakers_open(METRICS) == {"payment"}
    assert breakers_open("") == set()


def test_an_open_breaker_is_what_the_states_that_call_that_service_wait_for() -> None:
    pending = _stuck("checkout", "PAYMENT_PENDING")
    refunding = _stuck("cancellation", "REFUNDING")
    attach_breakers([pending, refunding], {"payment"}, "http://127.0.0.1:8003/metrics")
    [waiting] = pending.waiting
    assert waiting.what == "service"
    assert waiting.detail.startswith("payment circuit breaker open in the saga process")
    # A breaker only closes at a call, and a message parked in a dead-letter queue makes
    # none: the repair says to replay it once the service is back.
    assert waiting.repair == (
        "# bring the payment service back (CHECKOUT_PAYMENT_URL); then replay what it parked "
        "in a dead-letter queue (listed here, if any); the breaker closes at the next call"
    )
    assert refunding.waiting == []
