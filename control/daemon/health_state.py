"""Health of the edges as pydp-control knows it: the checker's decisions (control.health) and their counts.

Written on the daemon's loop (the checker's callbacks and the target updates), read by the store thread when it
publishes, by status and by metrics scrapes: every access goes through one lock. An edge not decided yet counts as
up (it is not in ``decided()``).
"""

from __future__ import annotations

import dataclasses
import threading


def targets_of(cfg) -> dict:
    """Every edge of every enabled cluster (draining and disabled ones too), with its cluster's settings."""
    if cfg is None:
        return {}
    return {(cl.name, e.name): (str(e.ip), dataclasses.replace(cl.health))
            for cl in cfg.clusters if cl.enabled for e in cl.edges}


class HealthState:
    def __init__(self):
        self._lock = threading.Lock()
        self._up: dict[tuple[str, str], bool] = {}
        self._transitions: dict[tuple[str, str], int] = {}
        self._targets: dict = {}            # (cluster, edge) -> (ip, HealthConfig) last given to the checker

    def set_targets(self, targets: dict) -> bool:
        """The checker's targets follow the store; returns False when nothing changed. Edges gone are forgotten."""
        with self._lock:
            if targets == self._targets:
                return False
            self._targets = dict(targets)
            for key in [k for k in self._up if k not in targets]:
                del self._up[key]
            for key in [k for k in self._transitions if k not in targets]:
                del self._transitions[key]
            return True

    def record(self, key: tuple[str, str], up: bool) -> tuple[bool, str | None] | None:
        """A decision of the checker: returns (changed, ip), or None for an edge that is no target any more."""
        with self._lock:
            if key not in self._targets:
                return None
            before = self._up.get(key, True)            # unknown counts as up
            self._up[key] = up
            self._transitions[key] = self._transitions.get(key, 0) + 1
            return before != up, self._targets[key][0]

    def decided(self) -> dict[tuple[str, str], bool]:
        with self._lock:
            return dict(self._up)

    def rows(self) -> list[tuple[tuple[str, str], bool | None, int]]:
        """(key, up or None when not decided yet, transitions) of every target, for metrics."""
        with self._lock:
            return [(k, self._up.get(k), self._transitions.get(k, 0)) for k in self._targets]
