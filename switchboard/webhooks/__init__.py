"""``switchboard webhooks``: the dispatcher that delivers webhook events (docs/webhooks.md).

One leader at a time (a lease in Redis; standbys wait). The leader confirms debounced events
whose time has come (:mod:`.dispatcher`), sweeps the connections of dead gateways
(:mod:`.sweep`), and posts what the outboxes hold to the receiver, signed, in batches, retried
with backoff until a 2xx (:mod:`.deliver`). Every step is idempotent, so a crash or a second
leader only repeats work: delivery is at least once.
"""
