"""All breakers of one process, built from Settings: "websocket" and "api:<route template>".

The names are bounded (:data:`NAME_PATTERN`) and so is their number: past
:data:`MAX_API_BREAKERS` route templates, new ones share the "api:*" breaker. Listeners
added to the registry hear every breaker, those that exist and those created later;
:meth:`BreakerRegistry.close` silences them for good (the runtime calls it on stop).
"""

from __future__ import annotations

import logging
import random
import re
from typing import TYPE_CHECKING, Final

from backend_core.breakers.breaker import BreakerSnapshot, CircuitBreaker, Delivery, Listener
from backend_core.breakers.core import BreakerConfig
from backend_core.breakers.store import BreakerStore, InMemoryBreakerStore
from backend_core.clock import Clock, SystemClock

if TYPE_CHECKING:
    from backend_core.config import Settings

__all__ = [
    "API_OVERFLOW_NAME",
    "MAX_API_BREAKERS",
    "NAME_CHARACTERS",
    "NAME_PATTERN",
    "WEBSOCKET",
    "BreakerRegistry",
    "api_config_from_settings",
    "websocket_config_from_settings",
]

logger = logging.getLogger(__name__)

# A breaker name: "websocket", "api:<route template>" or "api:*". Templates are written in
# our code ("/api/v1/ticks/{symbol}"); the bound keeps names fit for logs, labels and rows.
# The characters are also those of a component name (http_input reads both with them).
NAME_CHARACTERS: Final = r"[A-Za-z0-9_:./{}*\-]"
NAME_PATTERN: Final = re.compile(rf"^{NAME_CHARACTERS}{{1,100}}$")
WEBSOCKET: Final = "websocket"
API_PREFIX: Final = "api:"
# 256 route templates is far above any real API and bounds the registry if a caller passes
# raw paths by mistake. Routes past the bound share one overflow breaker.
MAX_API_BREAKERS: Final = 256
API_OVERFLOW_NAME: Final = "api:*"

# The "websocket" breaker doubles its open period after each failed probe so a long Deriv
# outage is not hammered every WEBSOCKET_CB_RECOVERY_TIMEOUT seconds; the growth stops at
# 8x that timeout but no later than 10 minutes (a user waits for recovery), and the jitter
# spreads the probes of several instances.
WEBSOCKET_MAX_RECOVERY_FACTOR: Final = 8.0
WEBSOCKET_MAX_RECOVERY_S: Final = 600.0
WEBSOCKET_JITTER_RATIO: Final = 0.2
# A websocket probe is a connect plus an authorize: each may take the connection timeout.
WEBSOCKET_PROBE_TIMEOUTS: Final = 2.0
# An API probe longer than a minute is hung: re-open rather than wait for it.
API_HALF_OPEN_MAX_WAIT_S: Final = 60.0


def websocket_config_from_settings(settings: Settings) -> BreakerConfig:
    """WEBSOCKET_CB_FAILURE_THRESHOLD, WEBSOCKET_CB_RECOVERY_TIMEOUT, WEBSOCKET_CONNECTION_TIMEOUT."""
    recovery = settings.WEBSOCKET_CB_RECOVERY_TIMEOUT
    return BreakerConfig(
        failure_threshold=settings.WEBSOCKET_CB_FAILURE_THRESHOLD,
        recovery_timeout_s=recovery,
        half_open_max_wait_s=WEBSOCKET_PROBE_TIMEOUTS * settings.WEBSOCKET_CONNECTION_TIMEOUT,
        max_recovery_timeout_s=max(recovery, min(recovery * WEBSOCKET_MAX_RECOVERY_FACTOR, WEBSOCKET_MAX_RECOVERY_S)),
        jitter_ratio=WEBSOCKET_JITTER_RATIO,
    )


def api_config_from_settings(settings: Settings) -> BreakerConfig:
    """API_CB_FAILURE_THRESHOLD, API_CB_RECOVERY_TIMEOUT."""
    return BreakerConfig(
        failure_threshold=settings.API_CB_FAILURE_THRESHOLD,
        recovery_timeout_s=settings.API_CB_RECOVERY_TIMEOUT,
        half_open_max_wait_s=API_HALF_OPEN_MAX_WAIT_S,
    )


class BreakerRegistry:
    """The breakers of one process. ``websocket_store`` is where the upstream's breaker
    keeps its state (CLUSTER.md: Redis, shared); the API breakers are per process."""

    WEBSOCKET: Final = WEBSOCKET

    def __init__(
        self,
        *,
        websocket_config: BreakerConfig | None = None,
        api_config: BreakerConfig | None = None,
        enabled: bool = True,
        clock: Clock | None = None,
        websocket_store: BreakerStore | None = None,
        api_store: BreakerStore | None = None,
        rng: random.Random | None = None,
        max_api_breakers: int = MAX_API_BREAKERS,
    ) -> None:
        if max_api_breakers < 1:
            raise ValueError("max_api_breakers must be at least 1")
        self.enabled: Final = enabled
        self._clock: Clock = clock or SystemClock()
        self._api_store: BreakerStore = api_store if api_store is not None else InMemoryBreakerStore()
        self._rng = rng
        self._api_config = api_config or BreakerConfig()
        self._max_api_breakers = max_api_breakers
        self._api_count = 0
        self._listeners: list[Listener] = []
        self._delivery = Delivery()
        self._breakers: dict[str, CircuitBreaker] = {}
        self.websocket: Final = self._create(
            WEBSOCKET,
            websocket_config or BreakerConfig(),
            websocket_store if websocket_store is not None else InMemoryBreakerStore(),
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        clock: Clock | None = None,
        websocket_store: BreakerStore | None = None,
        rng: random.Random | None = None,
    ) -> BreakerRegistry:
        """CIRCUIT_BREAKER_ENABLED, WEBSOCKET_CB_* and API_CB_* (see DESIGN.md "Configuration")."""
        return cls(
            websocket_config=websocket_config_from_settings(settings),
            api_config=api_config_from_settings(settings),
            enabled=settings.CIRCUIT_BREAKER_ENABLED,
            clock=clock,
            websocket_store=websocket_store,
            rng=rng,
        )

    def api(self, route_template: str) -> CircuitBreaker:
        """The breaker of one API route template, created on first use.

        ValueError when ``"api:" + route_template`` is not a valid name. Past
        ``max_api_breakers`` templates, new ones share the "api:*" breaker.
        """
        name = API_PREFIX + route_template
        breaker = self._breakers.get(name)
        if breaker is not None:
            return breaker
        if not route_template:
            raise ValueError("an API breaker needs a route template")
        _check_name(name)
        if self._api_count >= self._max_api_breakers:
            overflow = self._breakers.get(API_OVERFLOW_NAME)
            if overflow is None:
                logger.warning(
                    "more than %d API route templates; %r and later ones share the %r breaker",
                    self._max_api_breakers,
                    route_template,
                    API_OVERFLOW_NAME,
                )
                overflow = self._create(API_OVERFLOW_NAME, self._api_config, self._api_store)
            return overflow
        self._api_count += 1
        return self._create(name, self._api_config, self._api_store)

    def get(self, name: str) -> CircuitBreaker:
        """The breaker called ``name``; KeyError when there is none (whatever ``name`` is)."""
        return self._breakers[name]

    def names(self) -> list[str]:
        return list(self._breakers)

    def snapshots(self) -> list[BreakerSnapshot]:
        return [breaker.snapshot() for breaker in self._breakers.values()]

    def reset(self, name: str) -> None:
        """Reset the breaker called ``name``; KeyError when there is none."""
        self._breakers[name].reset()

    def add_listener(self, listener: Listener) -> None:
        """Listen to every breaker, those that exist and those created later."""
        if listener in self._listeners:
            return
        self._listeners.append(listener)
        for breaker in self._breakers.values():
            breaker.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners = [existing for existing in self._listeners if existing != listener]
        for breaker in self._breakers.values():
            breaker.remove_listener(listener)

    def close(self) -> None:
        """Stop delivering transitions (those already scheduled included); breakers keep working."""
        self._delivery.close()

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __len__(self) -> int:
        return len(self._breakers)

    def _create(self, name: str, config: BreakerConfig, store: BreakerStore) -> CircuitBreaker:
        _check_name(name)
        breaker = CircuitBreaker(
            name,
            config,
            clock=self._clock,
            store=store,
            rng=self._rng,
            enabled=self.enabled,
            listeners=self._listeners,
            delivery=self._delivery,
        )
        self._breakers[name] = breaker
        return breaker


def _check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"a breaker name has 1 to 100 of A-Z a-z 0-9 _:./{{}}*- (got {name[:120]!r})")
