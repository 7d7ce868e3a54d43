"""Several instances on one Redis behaving as one system (shared/CLUSTER.md).

- :mod:`.coordinator`: the pure role state machine (leader, follower, degraded), time in.
- :mod:`.keys`: the Redis key names of one cluster, under one hash tag.
- :mod:`.lease`: the fenced leader lease (acquire, renew, release scripts).
- :mod:`.ticklog`: ticks as Redis Stream entries keyed by Deriv's epoch, the leader's
  fenced writer and every member's reader.
- :mod:`.status`: the upstream status stream's codec and fenced write.
- :mod:`.member`: one member's lease, writer and reader loops around the local hub.
- :mod:`.breaker_store`: the "websocket" breaker's state shared through Redis.
- :mod:`.wiring`: how a Runtime joins (Redis client, link adapter, health checks).

With ``REDIS_URL`` unset none of this runs.
"""
