"""A publisher replaces a channel that only nacks (RabbitMQ 3.10's stuck channel).

The channel and connection are fakes at aio-pika's boundary: the broker bug they stand
for needs a cluster losing a quorum queue's leader (the drill, `make drill`, shows it
end to end). What is tested here is the publisher's decision and its recovery.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq import spec

from infra.messaging.publisher import (
    NACK_STREAK_LIMIT,
    ConfirmTimeout,
    NackStreak,
    Outgoing,
    Publisher,
    SentBatch,
    nacked,
)


def _nack() -> aiormq.exceptions.DeliveryError:
    return aiormq.exceptions.DeliveryError(None, spec.Basic.Nack(delivery_tag=1))


def _returned() -> aiormq.exceptions.DeliveryError:
    """What aiormq raises for an unroutable `mandatory` message: not a nack."""
    return aiormq.exceptions.DeliveryError(None, spec.Basic.Return(reply_code=312))


class FakeExchange:
    def __init__(self, channel: FakeChannel) -> None:
        self._channel = channel

    async def publish(
        self, message: Any, routing_key: str, *, mandatory: bool, timeout: float | None = None
    ) -> None:
        if self._channel.closed:
            raise aiormq.exceptions.ChannelInvalidStateError("closed")
        self._channel.published.append(routing_key)
        if self._channel.silent:  # the confirm never comes: aio-pika's timeout ends the wait
            await asyncio.wait_for(asyncio.Event().wait(), timeout)
        if self._channel.stuck:
            raise _nack()


class FakeChannel:
    """A channel that acks everything, or (stuck) nacks everything."""

    def __init__(self, *, stuck: bool = False, silent: bool = False) -> None:
        self.stuck = stuck
        self.silent = silent
        self.closed = False
        self.published: list[str] = []
        self.default_exchange = FakeExchange(self)

    @property
    def is_closed(self) -> bool:
        return self.closed

    async def get_exchange(self, name: str, *, ensure: bool = True) -> FakeExchange:
        return self.default_exchange

    async def close(self) -> None:
        self.closed = True


class FakeConnection:
    def __init__(self) -> None:
        self.opened: list[FakeChannel] = []

    async def channel(self, **_: Any) -> FakeChannel:
        channel = FakeChannel()
        self.opened.append(channel)
        return channel


def _publisher(channel: FakeChannel, connection: FakeConnection) -> Publisher:
    return Publisher(cast("AbstractRobustConnection", connection), cast("AbstractChannel", channel))


def _message() -> Outgoing:
    return Outgoing("x", "order.paid", b"{}", "m-1", "c-1", "OrderPaid")


async def test_a_channel_that_only_nacks_is_replaced_and_the_next_publish_goes_through() -> None:
    stuck, connection = FakeChannel(stuck=True), FakeConnection()
    publisher = _publisher(stuck, connection)
    for _ in range(NACK_STREAK_LIMIT):
        with pytest.raises(aiormq.exceptions.DeliveryError):
            await publisher.publish(_message())
    assert connection.opened == []  # not before the limit

    await publisher.publish(_message())  # on a fresh channel: confirmed

    assert len(connection.opened) == 1
    assert connection.opened[0].published == ["order.paid"]
    assert stuck.closed
    assert publisher.channel is cast("AbstractChannel", connection.opened[0])
    assert publisher.channels_renewed == 1


async def test_an_ack_between_nacks_keeps_the_channel() -> None:
    channel, connection = FakeChannel(stuck=True), FakeConnection()
    publisher = _publisher(channel, connection)
    for _ in range(3):
        for _ in range(NACK_STREAK_LIMIT - 1):
            with pytest.raises(aiormq.exceptions.DeliveryError):
                await publisher.publish(_message())
        channel.stuck = False
        await publisher.publish(_message())
        channel.stuck = True
    assert connection.opened == []
    assert publisher.channels_renewed == 0


def test_a_streak_counts_rounds_nacked_with_none_acked() -> None:
    streak = NackStreak(limit=2)
    streak.record([_nack(), _nack(), _nack()])  # one batch: one round
    assert streak.count == 1
    assert not streak.stuck
    streak.record([_returned(), ConnectionError("lost")])  # neither nack nor ack
    assert streak.count == 1
    streak.record([_nack(), None])  # something got through: the channel works
    assert streak.count == 0
    streak.record([_nack()])
    streak.record([_nack()])
    assert streak.stuck


def test_only_a_nack_counts_as_nacked() -> None:
    assert nacked(_nack())
    assert not nacked(_returned())
    assert not nacked(None)
    assert not nacked(ConnectionError("lost"))


async def test_a_batch_whose_confirms_do_not_come_is_unconfirmed_after_its_timeout() -> None:
    loop = asyncio.get_running_loop()
    answered, silent = loop.create_future(), loop.create_future()
    answered.set_result(spec.Basic.Ack(delivery_tag=1))
    streak = NackStreak()
    batch = SentBatch(None, [answered, silent], [], streak.record, timeout=0.05)

    outcomes = await asyncio.wait_for(batch.outcomes(), timeout=10)

    assert outcomes[0] is None
    assert isinstance(outcomes[1], ConfirmTimeout)
    assert "0.05 s" in str(outcomes[1])
    # A channel that leaves a confirm unanswered is replaced, even with an ack beside it.
    assert streak.stuck
    streak.reset()
    assert not streak.stuck


async def test_a_channel_that_left_a_batch_unconfirmed_is_replaced_before_the_next_publish() -> (
    None
):
    channel, connection = FakeChannel(), FakeConnection()
    publisher = _publisher(channel, connection)
    publisher._nacks.record([ConfirmTimeout("no confirm")])

    await publisher.publish(_message())

    assert channel.closed
    assert len(connection.opened) == 1
    assert connection.opened[0].published == ["order.paid"]
    assert publisher.channels_renewed == 1


async def test_a_publish_whose_confirm_does_not_come_fails_and_its_channel_is_replaced() -> None:
    silent, connection = FakeChannel(silent=True), FakeConnection()
    publisher = _publisher(silent, connection)
    publisher.confirm_timeout = 0.05

    with pytest.raises(ConfirmTimeout):
        await asyncio.wait_for(publisher.publish(_message()), timeout=10)
    await publisher.publish(_message())  # on a fresh channel: confirmed

    assert silent.closed
    assert connection.opened[0].published == ["order.paid"]
    assert publisher.channels_renewed == 1
