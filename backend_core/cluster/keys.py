"""The Redis keys of one cluster.

Every key starts with ``{ds:<cluster>}:``: the braces are a Redis Cluster hash tag, so the
multi-key scripts (lease check plus stream write) always run on one slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from backend_core.deriv.protocol import SYMBOL_PATTERN

#: A cluster name (``CLUSTER_NAME``): it becomes part of every key.
CLUSTER_NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    cluster: str

    def __post_init__(self) -> None:
        if not CLUSTER_NAME_PATTERN.match(self.cluster):
            raise ValueError("a cluster name is 1-64 letters, digits, '_', '.' or '-'")

    @property
    def prefix(self) -> str:
        return f"{{ds:{self.cluster}}}:"

    @property
    def leader(self) -> str:
        return self.prefix + "leader"

    @property
    def term(self) -> str:
        return self.prefix + "leader:term"

    @property
    def meta(self) -> str:
        return self.prefix + "meta"

    @property
    def status(self) -> str:
        return self.prefix + "status"

    @property
    def control(self) -> str:
        return self.prefix + "control"

    @property
    def retry_gate(self) -> str:
        return self.prefix + "retry:gate"

    @property
    def members(self) -> str:
        return self.prefix + "members"

    def ticks(self, symbol: str) -> str:
        if not SYMBOL_PATTERN.match(symbol):
            raise ValueError("not a Deriv symbol")
        return f"{self.prefix}ticks:{symbol}"

    def breaker(self, name: str) -> str:
        return f"{self.prefix}breaker:{name}"

    def member(self, instance_id: str) -> str:
        return f"{self.prefix}member:{instance_id}"
