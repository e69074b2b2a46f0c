"""Operating the dead-letter queues: read them, replay or purge messages, keep an audit log.

Every operation walks a snapshot of one `<queue>.dlq` with `basic.get` on a channel
of its own, without acking (`operations.dlq.reading`). What it selects it settles one by
one (replay: publish a copy to the queue, wait for the confirm, then ack; purge: ack);
everything else stays unacked until the channel closes, when RabbitMQ puts those
messages back where they were, in their order. A crash at any point therefore loses
nothing: an unacked message returns to the dead-letter queue, and the worst case is a
replayed copy whose original also returned, which consumers de-duplicate by
`message_id`.

The functions take an open broker connection and, for the audit log, a
`UnitOfWork`, so the command line (`operations.cli.dlq`) and a later HTTP endpoint share
them.
"""
