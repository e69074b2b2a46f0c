"""The checkout timeline: every hop of one checkout, in time order (`checkout trace`).

- `record`: the recorder the parts call on the hot path (`checkout_events`);
- `merge`: pure merging of every source's rows into one timeline per checkout;
- `query`: loads those rows (PostgreSQL, and optionally the dead-letter queues);
- `render`: a rich timeline for a terminal, and the JSON document for tools.
"""
