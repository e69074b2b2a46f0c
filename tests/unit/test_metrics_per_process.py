"""Each worker exports the metric families it measures, and no other's."""

from __future__ import annotations

from prometheus_client import generate_latest

from infra import metrics
from infra.metrics import MEASURED_BY, registry_for


def _families(component: str) -> set[str]:
    """The component's checkout_ families. A counter or histogram that has observed also
    exports a `<name>_created` gauge; it is the same family (and appears only once some
    test in this process has used it, so it must not decide the result)."""
    text = generate_latest(registry_for(component)).decode()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE checkout_")}
    return {
        n
        for n in names
        if not (
            n.endswith("_created")
            and {(base := n.removesuffix("_created")), base + "_total"} & names
        )
    }


def test_the_saga_does_not_report_the_relays_outbox() -> None:
    metrics.OUTBOX_PENDING.set(3)  # set by a relay in this same test process

    saga = _families("saga")

    assert "checkout_outbox_pending_rows" not in saga
    assert "checkout_outbox_oldest_age_seconds" not in saga
    assert "checkout_relay_lag_seconds" not in saga
    assert "checkout_saga_transitions_total" in saga
    assert "checkout_outbox_pending_rows" in _families("relay")
    assert "checkout_outbox_pending_rows 3.0" in generate_latest(registry_for("relay")).decode()


def test_every_component_exports_exactly_its_own_families_and_the_process_ones() -> None:
    assert _families("consumer-invoice") == {
        "checkout_consumer_messages_total",
        "checkout_consumer_handling_seconds",
        "checkout_broker_connected",  # every part holds broker connections
    }
    assert _families("consumer-email") == {
        "checkout_consumer_messages_total",
        "checkout_consumer_handling_seconds",
        "checkout_broker_connected",
        "checkout_service_calls_total",
        "checkout_circuit_breaker_open",
    }
    assert "checkout_saga_transitions_total" not in _families("relay")
    for component in MEASURED_BY:
        text = generate_latest(registry_for(component)).decode()
        assert "process_cpu_seconds_total" in text or "python_info" in text


def test_a_registry_is_made_once_per_component() -> None:
    assert registry_for("saga") is registry_for("saga")
    assert registry_for("saga") is not registry_for("relay")
