"""A failed message while its consumer's publisher connection is down.

Found by the chaos run: the consumer shell nacked such a message with requeue at once,
so it went round the queue as fast as RabbitMQ could redeliver it and was
dead-lettered for its delivery limit within a fraction of a second, without its
failure headers and without its retries (a real message that failed transiently was
parked, a checkout could stay PAYMENT_PENDING). Fixed in `QueueConsumer._settle`
(hold the message and retry the copy with backoff); this test keeps it fixed,
deterministically: only the publisher connection is dropped, then a poison message
arrives.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import aio_pika
import pytest

from infra.settings import Settings
from tests.faults import system as sysmod
from tests.faults.chaos import _poison_message
from tests.faults.checker import DeadLetter
from tests.faults.collect import peek_dead_letters
from tests.faults.system import destroy_system, start_system
from tests.support.polling import eventually

pytestmark = pytest.mark.faults


@pytest.mark.skipif(sysmod.RABBITMQCTL is None, reason="needs rabbitmqctl to drop one connection")
@pytest.mark.timeout(120)
async def test_a_message_failing_while_the_publisher_reconnects_keeps_its_failure_headers(
    settings: Settings, tmp_path: Path
) -> None:
    system = await start_system(settings, tmp_path / "parts", only=("production",))
    try:
        queue = system.topology.queues["production"]
        publisher = f"{system.namespace}.consumer-production.publisher"
        found = [
            pid
            for pid, name in await sysmod.broker_connections(system.namespace)
            if name == publisher
        ]
        assert found, f"no connection named {publisher}"
        # Drop only the consumer's publisher connection; it reconnects by itself a few
        # seconds later, while the consuming connection stays up.
        assert await sysmod.close_broker_connection(found[0], "fault test: publisher dropped")

        message_id = str(uuid.uuid4())
        connection = await aio_pika.connect(system.settings.rabbit_url.get_secret_value())
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await channel.default_exchange.publish(
                _poison_message("undecodable", "order.paid", message_id), queue.name
            )

            async def dead_lettered() -> DeadLetter | None:
                letters = await peek_dead_letters(connection, system.topology)
                return next((d for d in letters if d.message_id == message_id), None)

            letter = await eventually(
                dead_lettered,
                timeout=30,
                interval=0.2,
                what="the poison message in the dead-letter queue",
            )
        log = system.parts["production"].log.read_text(errors="replace")
        requeues = log.count("could not re-publish a failed message; requeueing it")
    finally:
        await destroy_system(system)

    assert letter is not None
    # What the contract promises: the dead-lettered message says why it failed ...
    assert (letter.failure_kind, letter.original_queue) == ("permanent", queue.name), (
        f"{letter} after {requeues} immediate requeues"
    )
    # ... and it did not go round the queue as fast as the broker could redeliver it.
    assert requeues < 5, f"{requeues} immediate requeues"
