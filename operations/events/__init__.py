"""The event log (`{ns}.orders.log`): read it, and backfill one queue from it.

```
times      TIME arguments: RFC 3339 or a duration ago (`2h`, `30m`, `7d`)
event      one logged event: its offset, properties, headers and body
selection  which events an operation takes (time range, types, order)
reading    attach to the stream at a time or an offset and read up to its end
listing    `checkout events list`: the matching events, nothing consumed
backfill   `checkout events backfill`: copy them into one existing queue, paced,
           confirmed, resumable; recorded in the audit log (`record`)
errors     what can go wrong, with what was done before it
```

Reading a stream never consumes it: each reader attaches at a point of its own and
acks only to be sent more. A stream read over AMQP 0.9.1 has no end marker, so the
reader decides where the end is (`reading`): at the first event stamped after the
range, or once the broker has had nothing more to deliver for a moment (it has caught
up with the stream's end). Either way a command ends; it never waits for new events.
"""
