"""The Redis keys of one cluster.

Every key starts with ``{ds:<cluster>}:``: the braces are a Redis Cluster hash tag, so the
multi-key scripts (lease check plus stream write) always run on one slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Final

from backend_core.deriv.protocol import SYMBOL_PATTERN

#: A cluster name (``CLUSTER_NAME``): it becomes part of every key.
CLUSTER_NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class _Key:
    """A fixed key of the cluster: its name after the cluster's prefix."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, keys: ClusterKeys, owner: type | None = None) -> str:
        return keys.prefix + self.name


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    cluster: str

    leader: ClassVar[_Key] = _Key("leader")
    term: ClassVar[_Key] = _Key("leader:term")
    meta: ClassVar[_Key] = _Key("meta")
    status: ClassVar[_Key] = _Key("status")
    control: ClassVar[_Key] = _Key("control")
    retry_gate: ClassVar[_Key] = _Key("retry:gate")
    members: ClassVar[_Key] = _Key("members")

    def __post_init__(self) -> None:
        if not CLUSTER_NAME_PATTERN.match(self.cluster):
            raise ValueError("a cluster name is 1-64 letters, digits, '_', '.' or '-'")

    @property
    def prefix(self) -> str:
        return f"{{ds:{self.cluster}}}:"

    def ticks(self, symbol: str) -> str:
        if not SYMBOL_PATTERN.match(symbol):
            raise ValueError("not a Deriv symbol")
        return f"{self.prefix}ticks:{symbol}"

    def breaker(self, name: str) -> str:
        return f"{self.prefix}breaker:{name}"

    def member(self, instance_id: str) -> str:
        return f"{self.prefix}member:{instance_id}"
