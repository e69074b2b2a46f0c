"""The checker on hand-made facts: a clean run passes, and each kind of failure is seen."""

from __future__ import annotations

import dataclasses

import pytest

from tests.faults.checker import (
    Applied,
    DeadLetter,
    Duplicate,
    Facts,
    FaultEvent,
    Fixable,
    LoggedFailure,
    MockRequest,
    Poison,
    ServiceCall,
    check,
)

pytestmark = pytest.mark.faults

PAID, FAILED, FIXED = "order-paid", "order-failed", "order-fixed"
C_PAID, C_FAILED, C_FIXED = "co-paid", "co-failed", "co-fixed"
M_PAID, M_FIXED = "msg-paid", "msg-fixed"
POISON = "msg-poison"
T0 = 1_000.0


def clean() -> Facts:
    """Three orders: one paid, one declined, one paid whose production step was replayed."""
    dlqs = ("ns.invoice.dlq", "ns.email.dlq")
    return Facts(
        seed=42,
        fault_seconds=60,
        accepted={C_PAID: PAID, C_FAILED: FAILED, C_FIXED: FIXED},
        orders={PAID: "PAID", FAILED: "FAILED", FIXED: "PAID"},
        checkouts={C_PAID: (PAID, "PAID"), C_FAILED: (FAILED, "FAILED"), C_FIXED: (FIXED, "PAID")},
        charges=[
            ServiceCall("payments", C_PAID, 3, PAID, 201, True),
            ServiceCall("payments", C_FAILED, 1, FAILED, 201, False),
            ServiceCall("payments", C_FIXED, 1, FIXED, 201, True),
        ],
        emails=[
            ServiceCall("emails", M_PAID, 1, PAID, 202, True),
            ServiceCall("emails", M_FIXED, 1, FIXED, 202, True),
        ],
        productions=[
            ServiceCall("production", M_PAID, 1, PAID, 201, True),
            ServiceCall("production", M_FIXED, 16, FIXED, 201, True),
        ],
        invoices=[(PAID, M_PAID), (FIXED, M_FIXED)],
        dead_letters=[
            DeadLetter(dlq, POISON, "permanent", dlq.removesuffix(".dlq"), 1, "PermanentFailure")
            for dlq in dlqs
        ],
        poison=[Poison(POISON, "undecodable", "ns.orders/order.paid", dlqs, T0)],
        fixable=[
            Fixable(
                M_FIXED,
                FIXED,
                "production",
                "ns.production.dlq",
                DeadLetter("ns.production.dlq", M_FIXED, "transient", "ns.production", 6, "X"),
                replayed=True,
            )
        ],
        applied=[
            Applied(c, m, T0 + 1) for c in ("invoice", "email", "production") for m in (M_PAID,)
        ]
        + [Applied(c, M_FIXED, T0 + 30) for c in ("invoice", "email", "production")],
        skipped={"invoice": 2, "saga": 1},
        retries=4,
        mock_requests=[
            MockRequest("payments", C_PAID, "flaky_failure", 503, T0),
            MockRequest("payments", C_PAID, "flaky_failure", 503, T0 + 0.1),
            MockRequest("payments", C_PAID, "succeeded", 201, T0 + 0.3),
        ],
    )


def failed(facts: Facts) -> dict[str, tuple[str, ...]]:
    report = check(facts)
    return {c.name: c.problems for c in report.checks if not c.ok}


def test_a_clean_run_passes_every_check_and_prints_a_table() -> None:
    report = check(clean())
    assert report.ok, report.text()
    text = report.text()
    assert "seed=42" in text
    assert "verdict=PASS" in text
    for c in report.checks:
        assert f"PASS  {c.name}" in text


def test_a_stuck_checkout_is_reported() -> None:
    facts = clean()
    facts.checkouts[C_PAID] = (PAID, "PAYMENT_PENDING")
    facts.orders[PAID] = "PENDING"
    problems = failed(facts)["checkouts final"]
    assert any("stuck in PAYMENT_PENDING" in p for p in problems)


def test_a_checkout_the_api_accepted_but_the_database_lacks_is_reported() -> None:
    facts = clean()
    del facts.checkouts[C_FAILED]
    assert any("not in the database" in p for p in failed(facts)["checkouts final"])


def test_a_second_checkout_and_a_wrong_order_status_are_reported() -> None:
    facts = clean()
    facts.checkouts["co-extra"] = (PAID, "PAID")
    facts.orders[FAILED] = "PAID"
    problems = failed(facts)["checkouts final"]
    assert any("never accepted" in p for p in problems)
    assert any(f"order {PAID} has 2 PAID checkouts" in p for p in problems)
    assert any(f"order {FAILED} is PAID" in p for p in problems)


def test_a_system_that_did_not_settle_fails() -> None:
    facts = clean()
    facts.settled, facts.settle_seconds = False, 60
    assert any("did not settle" in p for p in failed(facts)["checkouts final"])


def test_two_charges_for_one_order_and_a_charge_for_a_failed_order_are_reported() -> None:
    facts = clean()
    facts.charges.append(ServiceCall("payments", "co-other", 1, PAID, 201, True))
    facts.charges[1] = ServiceCall("payments", C_FAILED, 1, FAILED, 201, True)
    problems = failed(facts)["one charge per paid order"]
    assert any(f"order {PAID} charged 2 times" in p for p in problems)
    assert any(f"order {FAILED} (FAILED) was charged" in p for p in problems)


def test_a_paid_order_without_a_charge_is_reported() -> None:
    facts = clean()
    facts.charges = facts.charges[1:]
    assert any("no successful charge" in p for p in failed(facts)["one charge per paid order"])


def test_missing_extra_and_misplaced_effects_are_reported() -> None:
    facts = clean()
    facts.emails = facts.emails[1:]  # the paid order got no e-mail
    facts.productions.append(ServiceCall("production", "m2", 1, PAID, 201, True))  # two
    facts.invoices.append((FAILED, "m3"))  # a failed order invoiced
    problems = failed(facts)["one of each effect per paid order"]
    assert f"PAID order {PAID} has 0 emails" in problems
    assert f"PAID order {PAID} has 2 productions" in problems
    assert f"order {FAILED} (FAILED) has 1 invoices" in problems


def test_a_failed_call_is_not_an_effect() -> None:
    facts = clean()
    facts.productions.append(ServiceCall("production", "m9", 15, FAILED, None, False))
    assert check(facts).ok


def test_poison_missing_from_a_dead_letter_queue_is_reported() -> None:
    facts = clean()
    facts.dead_letters = facts.dead_letters[:1]
    problems = failed(facts)["dead letters = poison; replay once"]
    assert any("missing from ns.email.dlq" in p for p in problems)


def test_a_real_message_in_a_dead_letter_queue_is_reported() -> None:
    facts = clean()
    facts.dead_letters.append(
        DeadLetter("ns.saga.dlq", "msg-real", "transient", "ns.saga", 6, "TransientFailure")
    )
    problems = failed(facts)["dead letters = poison; replay once"]
    assert any("unexpected ns.saga.dlq: msg-real (transient" in p for p in problems)


def test_poison_without_failure_headers_is_reported() -> None:
    facts = clean()
    facts.dead_letters[0] = DeadLetter("ns.invoice.dlq", POISON, None, None, None, None)
    problems = failed(facts)["dead letters = poison; replay once"]
    assert any("lacks its failure headers" in p for p in problems)


def test_two_copies_of_one_poison_message_are_noted_not_failed() -> None:
    facts = clean()
    facts.dead_letters.append(facts.dead_letters[0])
    report = check(facts)
    assert report.ok
    assert "1 extra copies" in report.check("dead letters = poison; replay once").summary


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"replayed": False}, "was not replayed"),
        ({"parked": None}, "was not parked"),
    ],
)
def test_a_fixable_message_that_was_not_parked_or_replayed_is_reported(
    change: dict[str, object], expected: str
) -> None:
    facts = clean()
    facts.fixable[0] = dataclasses.replace(facts.fixable[0], **change)  # type: ignore[arg-type]
    assert any(expected in p for p in failed(facts)["dead letters = poison; replay once"])


def test_a_replayed_message_applied_twice_or_never_is_reported() -> None:
    twice = clean()
    twice.applied.append(Applied("production", M_FIXED, T0 + 40))
    assert any(
        "applied 2 times by production" in p
        for p in failed(twice)["dead letters = poison; replay once"]
    )
    never = clean()
    never.applied = [a for a in never.applied if a.message_id != M_FIXED]
    assert any("applied 0 times" in p for p in failed(never)["dead letters = poison; replay once"])


def test_faults_that_did_not_bite_fail() -> None:
    facts = clean()
    facts.retries = 0
    facts.mock_requests = []
    facts.skipped = {}
    problems = failed(facts)["faults bit"]
    assert "no message was retried and no service call repeated" in problems
    assert "no duplicate was suppressed by an inbox" in problems


def test_a_message_applied_twice_is_a_duplicate() -> None:
    facts = clean()
    facts.applied.append(Applied("invoice", M_PAID, T0 + 5))
    problems = failed(facts)["no duplicate applied"]
    assert problems == (f"duplicate applied: invoice applied {M_PAID} 2 times",)


def _repeat(service: str = "emails", key: str = M_PAID) -> Facts:
    """The paid order's e-mail was sent at T0+1 and asked for again at T0+20."""
    facts = clean()
    facts.mock_requests += [
        MockRequest(service, key, "sent", 202, T0 + 1),
        MockRequest(service, key, "replayed", 202, T0 + 20),
    ]
    return facts


def test_a_repeated_call_nothing_explains_is_a_duplicate() -> None:
    problems = failed(_repeat())["no duplicate applied"]
    assert len(problems) == 1
    assert problems[0].startswith(f"duplicate applied: email called emails again for {M_PAID}")


@pytest.mark.parametrize(
    "explanation",
    [
        LoggedFailure("email", M_PAID, C_PAID, "service call timed out", T0 + 2),
        FaultEvent(T0 + 10, "kill", "email", until=T0 + 11),
        FaultEvent(T0 - 2, "broker-close", "email"),
        FaultEvent(T0 + 5, "kill", "relay", until=T0 + 6),
        FaultEvent(T0 + 0.5, "latency", "emails", until=T0 + 3),
        FaultEvent(T0 + 19, "refuse", "emails", until=T0 + 19.5),
        Duplicate(M_PAID, "OrderPaid", C_PAID, T0 + 0.5),  # raced the original
    ],
)
def test_a_repeated_call_a_failure_fault_or_racing_copy_explains_is_fine(
    explanation: object,
) -> None:
    facts = _repeat()
    if isinstance(explanation, LoggedFailure):
        facts.failures.append(explanation)
    elif isinstance(explanation, FaultEvent):
        facts.faults.append(explanation)
    else:
        assert isinstance(explanation, Duplicate)
        facts.duplicates.append(explanation)
    report = check(facts)
    assert report.check("no duplicate applied").ok, report.text()


@pytest.mark.parametrize(
    "irrelevant",
    [
        FaultEvent(T0 + 10, "kill", "invoice", until=T0 + 11),  # another consumer
        FaultEvent(T0 + 10, "latency", "production", until=T0 + 12),  # another service
        FaultEvent(T0 - 30, "kill", "email", until=T0 - 29),  # long before
        FaultEvent(T0 + 40, "kill", "email", until=T0 + 41),  # after the repeat
        Duplicate(M_PAID, "OrderPaid", C_PAID, T0 + 10),  # published after it was applied
        LoggedFailure("email", "another-message", None, "service unreachable", T0 + 2),
    ],
)
def test_a_fault_elsewhere_or_a_late_copy_does_not_explain_a_repeat(irrelevant: object) -> None:
    facts = _repeat()
    if isinstance(irrelevant, LoggedFailure):
        facts.failures.append(irrelevant)
    elif isinstance(irrelevant, FaultEvent):
        facts.faults.append(irrelevant)
    else:
        assert isinstance(irrelevant, Duplicate)
        facts.duplicates.append(irrelevant)
    assert not check(facts).check("no duplicate applied").ok


def test_a_repeated_charge_is_explained_by_a_copy_of_its_command() -> None:
    facts = _repeat("payments", C_PAID)
    assert not check(facts).check("no duplicate applied").ok
    facts.duplicates.append(Duplicate("cmd-1", "ChargePayment", C_PAID, T0 + 15))
    assert check(facts).check("no duplicate applied").ok
    failure = LoggedFailure("saga", "cmd-1", C_PAID, "service call timed out", T0 + 2)
    facts = _repeat("payments", C_PAID)
    facts.failures.append(failure)
    assert check(facts).check("no duplicate applied").ok


def test_the_report_shows_problems_and_counts_a_fault_once() -> None:
    facts = clean()
    facts.applied.append(Applied("email", M_PAID, T0 + 5))
    facts.faults = [FaultEvent(T0, "broker-reset", part) for part in ("saga", "email")]
    report = check(facts)
    text = report.text()
    assert "verdict=FAIL" in text
    assert "FAIL  no duplicate applied" in text
    assert f"! duplicate applied: email applied {M_PAID} 2 times" in text
    assert report.numbers["broker_resets"] == 1
    assert report.failed() == ["no duplicate applied"]


def test_an_application_counts_once_whether_logged_recorded_or_both() -> None:
    facts = clean()
    # The paid order's invoice: logged and recorded in the database (the same application).
    facts.applied.append(Applied("invoice", M_PAID, T0 + 1, "db"))
    # The fixed order's e-mail: the log line was lost (SIGKILL after the commit).
    facts.applied = [a for a in facts.applied if (a.consumer, a.message_id) != ("email", M_FIXED)]
    facts.applied.append(Applied("email", M_FIXED, T0 + 30, "db"))
    assert check(facts).ok, check(facts).text()


def test_a_second_application_recorded_only_in_the_database_is_a_duplicate() -> None:
    facts = clean()
    facts.applied += [
        Applied("email", M_PAID, T0 + 1, "db"),
        Applied("email", M_PAID, T0 + 9, "db"),
    ]
    problems = failed(facts)["no duplicate applied"]
    assert problems == (f"duplicate applied: email applied {M_PAID} 2 times",)


# ---- refunds and cancellations ---------------------------------------------------

CANCELLED, REJECTED = "order-cancelled", "order-rejected"
C_CANCELLED, C_REJECTED = "co-cancelled", "co-rejected"
X_CANCELLED, X_REJECTED = "cx-cancelled", "cx-rejected"


def with_cancellations() -> Facts:
    """The clean run, plus a paid order cancelled with its refund and one rejected."""
    facts = clean()
    facts.accepted.update({C_CANCELLED: CANCELLED, C_REJECTED: REJECTED})
    facts.checkouts.update({C_CANCELLED: (CANCELLED, "PAID"), C_REJECTED: (REJECTED, "PAID")})
    facts.orders.update({CANCELLED: "CANCELLED", REJECTED: "PAID"})
    facts.charges += [
        ServiceCall("payments", C_CANCELLED, 1, CANCELLED, 201, True, "pay-cancelled"),
        ServiceCall("payments", C_REJECTED, 1, REJECTED, 201, True, "pay-rejected"),
    ]
    for order in (CANCELLED, REJECTED):
        facts.emails.append(ServiceCall("emails", f"m-{order}", 1, order, 202, True))
        facts.productions.append(ServiceCall("production", f"m-{order}", 1, order, 201, True))
        facts.invoices.append((order, f"m-{order}"))
    facts.cancellations = {
        X_CANCELLED: (CANCELLED, "CANCELLED"),
        X_REJECTED: (REJECTED, "REJECTED"),
    }
    facts.refunds = [ServiceCall("refunds", X_CANCELLED, 3, None, 201, True, "pay-cancelled")]
    return facts


def test_cancellations_with_their_refunds_pass() -> None:
    report = check(with_cancellations())
    assert report.ok, report.text()
    assert "1 CANCELLED, 1 REJECTED" in report.check("refunds match charges").summary


def test_a_refund_of_what_was_never_charged_is_reported() -> None:
    facts = with_cancellations()
    facts.refunds.append(ServiceCall("refunds", "other", 1, None, 201, True, "pay-unknown"))
    problems = failed(facts)["refunds match charges"]
    assert any("never successfully charged" in p for p in problems)


def test_a_charge_refunded_twice_is_reported() -> None:
    facts = with_cancellations()
    facts.refunds.append(ServiceCall("refunds", "again", 1, None, 201, True, "pay-cancelled"))
    problems = failed(facts)["refunds match charges"]
    assert any("refunded 2 times" in p for p in problems)


def test_a_cancelled_order_that_kept_its_charge_is_reported() -> None:
    facts = with_cancellations()
    facts.refunds = []
    problems = failed(facts)["refunds match charges"]
    assert any(f"CANCELLED order {CANCELLED}" in p and "refunded 0 times" in p for p in problems)


def test_a_rejected_cancellation_that_was_refunded_is_reported() -> None:
    facts = with_cancellations()
    facts.refunds.append(ServiceCall("refunds", X_REJECTED, 1, None, 201, True, "pay-rejected"))
    problems = failed(facts)["refunds match charges"]
    assert any(f"REJECTED cancellation {X_REJECTED} was refunded" in p for p in problems)


def test_a_cancellation_left_open_is_reported() -> None:
    facts = with_cancellations()
    facts.cancellations["cx-open"] = (REJECTED, "REFUNDING")
    problems = failed(facts)["refunds match charges"]
    assert any("cx-open stuck in REFUNDING" in p for p in problems)


def test_a_cancelled_order_is_expected_cancelled_whatever_its_checkout_says() -> None:
    facts = with_cancellations()
    facts.orders[CANCELLED] = "PAID"
    problems = failed(facts)["checkouts final"]
    assert any(f"order {CANCELLED} is PAID, its checkouts say CANCELLED" in p for p in problems)


def test_a_late_charge_of_a_failed_order_is_fine_once_refunded_once() -> None:
    facts = clean()
    facts.charges[1] = ServiceCall("payments", C_FAILED, 1, FAILED, 201, True, "pay-late")
    assert "one charge per paid order" in failed(facts)
    facts.refunds = [ServiceCall("refunds", "late-refund", 1, None, 201, True, "pay-late")]
    verdict = failed(facts)
    assert "one charge per paid order" not in verdict
    assert "refunds match charges" not in verdict
    facts.refunds.append(ServiceCall("refunds", "again", 1, None, 201, True, "pay-late"))
    problems = failed(facts)["refunds match charges"]
    assert any("pay-late" in p and "refunded 2 times" in p for p in problems)
