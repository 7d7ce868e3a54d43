"""Uptime, minute by minute: each component's worst status and its seconds observed and down. Pure.

:class:`MinuteSampler` integrates each component's status over UTC minutes: per minute
the worst status seen, the seconds observed and the seconds down (enough to draw uptime
bars and compute uptime percentages exactly, not by whole minutes). The history writes
one :class:`MinuteSample` per component and minute; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final, Literal, TypeAlias

from backend_core.events import LinkState, UpstreamSnapshot
from backend_core.incidents import MAX_COMPONENTS, upstream_in_maintenance

# After a stall (suspended VM, clock step) at most one day of minutes is filled in; a
# longer gap is left empty rather than invented.
MAX_FILL_MINUTES: Final = 1440
# A history read adds at most this many not-yet-written minutes from memory (the roller
# emits every minute, so more only happens after a stall; the read stays cheap).
PEEK_MAX_MINUTES: Final = 60

SampleStatus: TypeAlias = Literal["up", "maintenance", "degraded", "down"]
# Worst-of order for a minute (and a day): a planned maintenance is better than an
# unplanned degradation, which is better than being down.
SEVERITY: Final[dict[str, int]] = {"up": 0, "maintenance": 1, "degraded": 2, "down": 3}
STATUS_BY_SEVERITY: Final[dict[int, str]] = {v: k for k, v in SEVERITY.items()}


@dataclass(frozen=True, slots=True)
class MinuteSample:
    component: str
    minute: int
    state: str
    status: str
    observed_s: float
    down_s: float

    @property
    def day(self) -> int:
        return self.minute // 1440

    @property
    def severity(self) -> int:
        return SEVERITY[self.status]


def upstream_sample_status(snapshot: UpstreamSnapshot) -> tuple[str, SampleStatus] | None:
    """The state and status the sampler records for a snapshot; ``None`` while stopped or starting."""
    state = snapshot.state
    if state == LinkState.STOPPED:
        return None
    if upstream_in_maintenance(snapshot):
        # Announced by the upstream (website_status "updating", a planned drop): blue, and
        # its seconds are not down seconds, so a deploy does not lower the uptime.
        return state.value, "maintenance"
    if state == LinkState.CONNECTED:
        return state.value, "up"
    if state == LinkState.CONNECTING and snapshot.last_error is None:
        # The first connect of a start that has not failed yet: the service is starting,
        # not degraded, so it must not paint the day's uptime bar amber after every restart.
        return None
    return state.value, "down"


def breaker_sample_status(state: str) -> tuple[str, SampleStatus]:
    if state in ("closed", "disabled"):
        return state, "up"
    if state == "half_open":
        return state, "degraded"
    return state, "down"


@dataclass(slots=True)
class _Track:
    state: str
    status: str
    since: float
    minute: int
    observed_s: float = 0.0
    down_s: float = 0.0
    worst_state: str = ""
    worst_severity: int = -1

    def see(self, state: str, status: str) -> None:
        severity = SEVERITY[status]
        if severity > self.worst_severity:
            self.worst_severity = severity
            self.worst_state = state

    def add(self, seconds: float) -> None:
        self.observed_s += seconds
        if self.status == "down":
            self.down_s += seconds

    def sample(self, component: str) -> MinuteSample:
        return MinuteSample(
            component,
            self.minute,
            self.worst_state,
            STATUS_BY_SEVERITY[self.worst_severity],
            round(self.observed_s, 3),
            round(self.down_s, 3),
        )

    def restart(self, minute: int, at: float) -> None:
        self.minute = minute
        self.since = at
        self.observed_s = 0.0
        self.down_s = 0.0
        self.worst_severity = -1
        self.see(self.state, self.status)


class MinuteSampler:
    """Per component, per UTC minute: the worst status, seconds observed and seconds down. Pure.

    ``observe`` reports a component's new state at ``now``; ``roll`` closes the minutes
    that have ended; ``forget`` stops observing a component (its partial minute is
    emitted). Time never observed (the service was stopped) produces no sample at all,
    so it counts neither as up nor as down.
    """

    def __init__(self, *, max_components: int = MAX_COMPONENTS, max_fill_minutes: int = MAX_FILL_MINUTES) -> None:
        self._tracks: dict[str, _Track] = {}
        self._max_components = max_components
        self._max_fill = max_fill_minutes
        self.ignored_components = 0

    @property
    def components(self) -> list[str]:
        return list(self._tracks)

    def observe(self, component: str, state: str, status: str, now: float) -> list[MinuteSample]:
        if status not in SEVERITY:
            raise ValueError(f"unknown status {status!r}")
        track = self._tracks.get(component)
        if track is None:
            if len(self._tracks) >= self._max_components:
                self.ignored_components += 1
                return []
            track = _Track(state, status, now, minute_of(now))
            track.see(state, status)
            self._tracks[component] = track
            return []
        out = self._advance(component, track, now)
        track.state, track.status = state, status
        track.see(state, status)
        return out

    def roll(self, now: float) -> list[MinuteSample]:
        out: list[MinuteSample] = []
        for component, track in self._tracks.items():
            out.extend(self._advance(component, track, now))
        return out

    def peek(self, component: str, now: float) -> list[MinuteSample]:
        """The minutes not yet emitted, up to ``now`` (the last one partial), without changing anything."""
        track = self._tracks.get(component)
        if track is None or now < track.since:
            return []
        copy = replace(track)
        out = self._advance(component, copy, now, max_fill=PEEK_MAX_MINUTES)
        if copy.observed_s > 0:
            out.append(copy.sample(component))
        return out

    def forget(self, component: str, now: float) -> list[MinuteSample]:
        track = self._tracks.pop(component, None)
        if track is None:
            return []
        out = self._advance(component, track, now)
        if track.observed_s > 0:
            out.append(track.sample(component))
        return out

    def finish(self, now: float) -> list[MinuteSample]:
        out: list[MinuteSample] = []
        for component in list(self._tracks):
            out.extend(self.forget(component, now))
        return out

    def _advance(self, component: str, track: _Track, now: float, max_fill: int | None = None) -> list[MinuteSample]:
        limit = self._max_fill if max_fill is None else max_fill
        out: list[MinuteSample] = []
        if now < track.since:
            # The wall clock stepped back: close what we have and start again from now.
            if track.observed_s > 0:
                out.append(track.sample(component))
            track.restart(minute_of(now), now)
            return out
        filled = 0
        while True:
            minute_end = (track.minute + 1) * 60.0
            if now < minute_end:
                track.add(now - track.since)
                track.since = now
                return out
            track.add(max(0.0, minute_end - track.since))
            if track.observed_s > 0:
                out.append(track.sample(component))
            filled += 1
            if filled > limit:
                # A stall longer than the fill limit: leave the gap empty, resume at now.
                track.restart(minute_of(now), now)
                return out
            track.restart(track.minute + 1, minute_end)


def minute_of(wall: float) -> int:
    return math.floor(wall / 60.0)


__all__ = [
    "SEVERITY",
    "STATUS_BY_SEVERITY",
    "MinuteSample",
    "MinuteSampler",
    "breaker_sample_status",
    "minute_of",
    "upstream_sample_status",
]
