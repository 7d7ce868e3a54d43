"""Maintenance is not an outage: one rule (``upstream_in_maintenance``) read the same way by the
uptime sampler, the metrics' upstream_state label, the Statuspage component and the page."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import pytest

from backend_core import status_view
from backend_core import statuspage as sp
from backend_core.clock import FakeClock
from backend_core.config import load_settings
from backend_core.events import ErrorInfo, LinkState, UpstreamSnapshot
from backend_core.history.minutes import upstream_sample_status
from backend_core.incidents import upstream_in_maintenance
from backend_core.metrics import MAINTENANCE, UpstreamCollector, upstream_state
from backend_core.runtime import Runtime
from rxapp.ui_logic import banner_for, feed_link_view
from tests.helpers import statuspage_observation

T0 = 1_700_000_040.0


def snap(state: LinkState, *, planned: bool = False, site: str | None = "up", error: bool = True) -> UpstreamSnapshot:
    return UpstreamSnapshot(
        state=state,
        since=T0,
        url="wss://example/websockets/v3",
        simulated=True,
        max_attempts=3,
        planned_reconnect=planned,
        site_status=site,
        last_error=ErrorInfo("SiteUpdating", "Deriv is updating its servers; reconnecting.", T0) if error else None,
    )


COMBINATIONS = [
    snap(state, planned=planned, site=site)
    for state, planned, site in itertools.product(LinkState, (False, True), ("up", "updating", None))
]


def test_the_rule() -> None:
    assert not upstream_in_maintenance(snap(LinkState.CONNECTED))
    assert not upstream_in_maintenance(snap(LinkState.RECONNECTING))  # an unannounced drop is an outage
    assert upstream_in_maintenance(snap(LinkState.CONNECTED, site="updating"))  # Deriv is deploying
    assert not upstream_in_maintenance(snap(LinkState.CONNECTED, planned=True))  # announced, site back up, serving
    assert upstream_in_maintenance(snap(LinkState.RECONNECTING, planned=True))  # the announced drop
    assert upstream_in_maintenance(snap(LinkState.CIRCUIT_OPEN, planned=True))  # retries after it
    assert not upstream_in_maintenance(snap(LinkState.STOPPED, planned=True, site="updating"))


@pytest.mark.parametrize(
    "snapshot", COMBINATIONS, ids=lambda s: f"{s.state.value}-{s.planned_reconnect}-{s.site_status}"
)
def test_every_surface_agrees(snapshot: UpstreamSnapshot, runtime: Runtime) -> None:
    maintenance = upstream_in_maintenance(snapshot)
    sampled = upstream_sample_status(snapshot)
    assert (sampled is not None and sampled[1] == "maintenance") == maintenance
    # The metric keeps a serving link "connected" (no outage alert either way).
    assert (upstream_state(snapshot) == MAINTENANCE) == (maintenance and snapshot.state != LinkState.CONNECTED)
    if snapshot.state != LinkState.STOPPED:
        observation = statuspage_observation(
            upstream_state=snapshot.state.value,
            upstream_error=True,
            site_updating=snapshot.site_status == "updating",
            planned_drop=snapshot.planned_reconnect,
        )
        assert (sp.feed_status(observation) == "under_maintenance") == maintenance
    page = page_status(runtime, snapshot)
    assert (banner_for(page, T0).level == "maintenance") == maintenance
    if snapshot.state != LinkState.CONNECTED:
        assert (feed_link_view(page["upstream"], T0).tone == "blue") == maintenance


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    """A Runtime at ``T0`` (nothing started): one for the module, as building one takes a while."""
    db = tmp_path_factory.mktemp("maintenance") / "status.db"
    return Runtime(load_settings({"DB_URL": f"sqlite:///{db}"}), clock=FakeClock(start_wall=T0))


def page_status(runtime: Runtime, snapshot: UpstreamSnapshot) -> dict[str, Any]:
    """The status the page reads (``status_view.status``) while the manager reports ``snapshot``."""
    runtime.manager = _Manager(snapshot)  # type: ignore[assignment]
    return status_view.status(runtime)


class _Manager:
    def __init__(self, snapshot: UpstreamSnapshot) -> None:
        self._snapshot = snapshot

    def snapshot(self) -> UpstreamSnapshot:
        return self._snapshot

    def stats(self) -> Mapping[str, Any]:
        return {}


def _states(collector: UpstreamCollector) -> dict[str, float]:
    family = next(m for m in collector.collect() if m.name == "deriv_status_upstream_state")
    return {sample.labels["state"]: sample.value for sample in family.samples}


def test_the_metric_exports_maintenance_in_place_of_the_link_state() -> None:
    dropped = _states(UpstreamCollector(lambda: _Manager(snap(LinkState.RECONNECTING, planned=True))))
    assert dropped["maintenance"] == 1.0 and dropped["reconnecting"] == 0.0 and dropped["connected"] == 0.0
    assert sum(dropped.values()) == 1.0  # one state at a time, as before
    outage = _states(UpstreamCollector(lambda: _Manager(snap(LinkState.RECONNECTING))))
    assert outage["reconnecting"] == 1.0 and outage["maintenance"] == 0.0
    deploying = _states(UpstreamCollector(lambda: _Manager(snap(LinkState.CONNECTED, site="updating"))))
    assert deploying["connected"] == 1.0 and deploying["maintenance"] == 0.0
    stopped = _states(UpstreamCollector(lambda: None))
    assert stopped["stopped"] == 1.0 and stopped["maintenance"] == 0.0
