"""Which role this member plays, decided from the lease's answers and the time (pure).

A member is a ``FOLLOWER`` (reads the tick log, runs no upstream link), the ``LEADER``
(holds the lease, runs the one upstream link, writes the log) or ``DEGRADED`` (Redis is
configured but has not answered for ``degrade_after_s``: it runs its own link for its own
clients, as a single process does). The driver asks :meth:`Coordinator.next_step` what to
do now, performs it (a lease call), and reports the outcome; every report may return a
:class:`RoleChange`, on which the driver starts or stops the local upstream link.

The timing rules (shared/CLUSTER.md 2.1):

- the leader renews every ``ttl_s / 3``; followers try to acquire every
  ``min(1 s, ttl_s / 4)``;
- a leader steps down when no renew has succeeded for ``0.8 * ttl_s``, measured from the
  *send* time of the last successful renew (so a reply delayed by a pause cannot make a
  lease that already expired in Redis look fresh), and at once when a renew or a fenced
  write says the lease is someone else's;
- any role becomes ``DEGRADED`` after ``degrade_after_s`` without a successful Redis call,
  and a degraded member competes for the lease again as soon as Redis answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    FOLLOWER = "follower"
    LEADER = "leader"
    DEGRADED = "degraded"
    STOPPING = "stopping"


class Step(StrEnum):
    """What the driver should do now."""

    ACQUIRE = "acquire"
    RENEW = "renew"
    RELEASE = "release"
    WAIT = "wait"


@dataclass(frozen=True, slots=True)
class Plan:
    step: Step
    #: When to ask again (this clock's monotonic seconds).
    next_at: float


@dataclass(frozen=True, slots=True)
class RoleChange:
    before: Role
    after: Role
    reason: str
    term: int | None = None


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    ttl_s: float = 5.0
    degrade_after_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0.5 <= self.ttl_s <= 600:
            raise ValueError("ttl_s must be from 0.5 to 600 seconds")
        if self.degrade_after_s < self.ttl_s:
            raise ValueError("degrade_after_s must be at least ttl_s")

    @property
    def renew_every_s(self) -> float:
        return self.ttl_s / 3

    @property
    def acquire_every_s(self) -> float:
        return min(1.0, self.ttl_s / 4)

    @property
    def step_down_after_s(self) -> float:
        return 0.8 * self.ttl_s


class Coordinator:
    """The role state machine of one member. Not thread-safe; one driver task owns it."""

    def __init__(self, timing: LeaseTiming, now: float) -> None:
        self.timing = timing
        self.role = Role.FOLLOWER
        self.term: int | None = None
        self._last_redis_ok = now
        self._renewed_sent_at: float | None = None
        self._next_at = now

    # --- what to do -----------------------------------------------------------------

    def next_step(self, now: float) -> Plan:
        """The step due at ``now`` (``WAIT`` until ``next_at`` when none is)."""
        if self.role is Role.STOPPING:
            return Plan(Step.WAIT, now + 3600.0)
        if now < self._next_at:
            return Plan(Step.WAIT, self._next_at)
        if self.role is Role.LEADER:
            return Plan(Step.RENEW, now + self.timing.renew_every_s)
        return Plan(Step.ACQUIRE, now + self.timing.acquire_every_s)

    def check(self, now: float) -> RoleChange | None:
        """Time-driven changes: step down on a stale lease, degrade without Redis."""
        if self.role is Role.STOPPING:
            return None
        if (
            self.role is Role.LEADER
            and self._renewed_sent_at is not None
            and now - self._renewed_sent_at >= self.timing.step_down_after_s
        ):
            if now - self._last_redis_ok >= self.timing.degrade_after_s:
                # One change, so the driver sees that it was the leader (and lets the grant go).
                return self._become(Role.DEGRADED, "the lease was not renewed in time; Redis has not answered")
            return self._become(Role.FOLLOWER, "the lease was not renewed in time")
        if self.role is not Role.DEGRADED and now - self._last_redis_ok >= self.timing.degrade_after_s:
            return self._become(Role.DEGRADED, "Redis has not answered")
        return None

    # --- what happened ----------------------------------------------------------------

    def acquired(self, term: int, sent_at: float, now: float) -> RoleChange | None:
        self._redis_ok(now)
        self.term = term
        self._renewed_sent_at = sent_at
        self._next_at = now + self.timing.renew_every_s
        return self._become(Role.LEADER, "acquired the lease", term)

    def not_acquired(self, now: float) -> RoleChange | None:
        """Another member holds the lease: follow it (leaving degraded mode)."""
        self._redis_ok(now)
        self._next_at = now + self.timing.acquire_every_s
        if self.role is Role.DEGRADED:
            return self._become(Role.FOLLOWER, "Redis answers again; another member leads")
        return None

    def renewed(self, sent_at: float, now: float) -> RoleChange | None:
        self._redis_ok(now)
        if self.role is Role.LEADER:
            self._renewed_sent_at = max(self._renewed_sent_at or sent_at, sent_at)
            self._next_at = now + self.timing.renew_every_s
        return None

    def lease_lost(self, now: float, reason: str = "the lease belongs to another member") -> RoleChange | None:
        """A renew or a fenced write was refused: step down at once."""
        self._redis_ok(now)
        self._next_at = now + self.timing.acquire_every_s
        if self.role is Role.LEADER:
            return self._become(Role.FOLLOWER, reason)
        return None

    def redis_failed(self, now: float) -> RoleChange | None:
        """A Redis call failed or timed out; retry at the step's own pace."""
        interval = self.timing.renew_every_s if self.role is Role.LEADER else self.timing.acquire_every_s
        self._next_at = now + interval
        return self.check(now)

    def stopping(self) -> RoleChange | None:
        """The member shuts down; a leader releases the lease first (``Step.RELEASE``)."""
        return self._become(Role.STOPPING, "shutting down")

    # --- helpers ------------------------------------------------------------------------

    def _redis_ok(self, now: float) -> None:
        self._last_redis_ok = now

    def _become(self, role: Role, reason: str, term: int | None = None) -> RoleChange | None:
        if role is self.role:
            return None
        change = RoleChange(self.role, role, reason, term if term is not None else self.term)
        self.role = role
        if role is not Role.LEADER:
            self._renewed_sent_at = None
        return change
