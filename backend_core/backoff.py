"""The one backoff strategy of the house: exponential growth with full jitter.

Every retry loop (upstream connect, subscribe, the breaker's open period, alert
delivery) waits with a tenacity wait strategy built here instead of a hand-written copy.
tenacity's :class:`~tenacity.wait_random_exponential` is exactly "full jitter"
(attempt *n* waits uniform(0, min(cap, base * 2**(n-1)))), except that its randomness
is the module-level :mod:`random`; :class:`FullJitter` takes an injected
:class:`random.Random` so tests and benches are repeatable, and offers :meth:`delay`
for loops that are not driven by tenacity's retry state.
"""

from __future__ import annotations

import random
from typing import Any

from tenacity import wait_random_exponential

__all__ = ["FullJitter", "Growth"]

# 2**30 * base is far past any cap; the bound keeps the power small (rule 5).
_MAX_EXPONENT = 30


class FullJitter(wait_random_exponential):
    """tenacity's full-jitter wait with injectable randomness (attempts are 1-based)."""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        if base_s < 0 or cap_s < 0:
            raise ValueError("base_s and cap_s must be >= 0")
        super().__init__(multiplier=base_s, max=cap_s, exp_base=2, min=0)
        self.base_s = base_s
        self.cap_s = cap_s
        self.rng = rng if rng is not None else random.Random()

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the wait after failed attempt ``attempt``."""
        exponent = max(0, min(attempt - 1, _MAX_EXPONENT))
        return float(min(self.cap_s, self.base_s * (2**exponent)))

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt ``attempt`` (1-based), for loops outside tenacity."""
        return float(self.rng.uniform(0.0, self.ceiling(attempt)))

    def __call__(self, retry_state: Any) -> float:
        return self.delay(retry_state.attempt_number)


class Growth:
    """A deterministic exponential schedule (no jitter) with a cap, for open periods.

    Level 0 is the base period; each level doubles it up to ``cap_s``. A small
    ``jitter_ratio`` spreads periods of many breakers that opened together.
    """

    def __init__(
        self, base_s: float, cap_s: float, jitter_ratio: float = 0.0, rng: random.Random | None = None
    ) -> None:
        if base_s < 0 or cap_s < base_s:
            raise ValueError("need 0 <= base_s <= cap_s")
        if not 0.0 <= jitter_ratio < 1.0:
            raise ValueError("jitter_ratio must be in [0, 1)")
        self.base_s = base_s
        self.cap_s = cap_s
        self.jitter_ratio = jitter_ratio
        self.rng = rng if rng is not None else random.Random()

    def period(self, level: int) -> float:
        exponent = max(0, min(level, _MAX_EXPONENT))
        period = min(self.cap_s, self.base_s * (2**exponent))
        if self.jitter_ratio:
            period *= 1.0 - self.jitter_ratio * self.rng.random()
        return float(period)
