"""Short words for incident causes and recoveries in messages to other programs.

The webhook alerts and the Statuspage-compatible API (``backend_core/statuspage.py``)
tell integrations what happened in a sentence; they share these words. The status page
has its own, longer ones in ``rxapp/history_view.py``. The database keeps only the codes.
"""

from __future__ import annotations

from typing import Final

from backend_core.incidents import Cause, Recovery

CAUSE_TEXT: Final[dict[Cause, str]] = {
    Cause.CONNECTION_LOST: "connection lost",
    Cause.COULD_NOT_CONNECT: "could not connect",
    Cause.CIRCUIT_OPEN: "circuit breaker open",
    Cause.PLANNED_MAINTENANCE: "planned maintenance",
    Cause.BREAKER_OPENED: "circuit breaker opened",
}
RECOVERY_TEXT: Final[dict[Recovery, str]] = {
    Recovery.RECONNECTED: "reconnected",
    Recovery.MANUAL_RETRY: "manual retry",
    Recovery.BREAKER_PROBE: "breaker probe",
    Recovery.RESET: "reset by an admin",
    Recovery.BREAKERS_ENABLED: "breakers re-enabled",
    Recovery.BREAKERS_DISABLED: "breakers disabled",
    Recovery.BREAKER_CLOSED: "closed",
    Recovery.SERVICE_STOPPED: "not recovered: the service stopped",
    Recovery.SERVICE_RESTARTED: "not recovered: the service restarted",
}


def recovery_text(recovery: Recovery, attempts: int | None) -> str:
    """``"reconnected after 3 attempts"``, ``"manual retry"``, ...: the alerts' words."""
    if recovery == Recovery.RECONNECTED and attempts:
        return f"reconnected after {attempts} attempt" + ("" if attempts == 1 else "s")
    return RECOVERY_TEXT.get(recovery, str(recovery))
