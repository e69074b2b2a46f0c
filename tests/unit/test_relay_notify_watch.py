"""When the relay says NOTIFY seems lost: the poll keeps finding rows, no NOTIFY comes."""

from __future__ import annotations

from infra.messaging.relay import NotifyWatch


def test_it_warns_once_after_the_silence_and_again_only_after_a_notify() -> None:
    watch = NotifyWatch(silence_s=30)
    assert not watch.poll_found(100.0)  # the spell starts
    assert not watch.poll_found(129.0)
    assert watch.poll_found(130.0)  # 30 s of rows found only by the poll
    assert not watch.poll_found(200.0)  # said once
    assert watch.notified()  # NOTIFY again: the relay says so
    assert not watch.notified()
    assert not watch.poll_found(300.0)  # a new spell starts from here
    assert watch.poll_found(330.0)


def test_a_notify_within_the_silence_ends_the_spell() -> None:
    watch = NotifyWatch(silence_s=30)
    watch.poll_found(0.0)
    assert not watch.notified()  # no warning was given: nothing to announce
    assert not watch.poll_found(29.0)
    assert not watch.poll_found(58.0)
    assert watch.poll_found(59.0)
