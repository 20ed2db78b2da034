"""The data plane's region as pydp-control holds it: lent to several threads, replaced when the data plane restarts.

``RegionHolder`` lends the mapping out and closes a replaced one only once nobody uses it. ``DataplaneWatch``
looks at the region path and says what changed: attached, restarted, lost (stale heartbeat, region removed or
replaced) or resumed. Both are used from the daemon's store thread (the watcher) and read from the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

from control import observe
from control.logs import event

log = logging.getLogger("pydp.control")


class RegionHolder:
    """The attached region. use() lends it out; replace() swaps in another one, and the old mapping is closed
    only once nobody uses it any more (closing unmaps it: a reader must never see that)."""

    def __init__(self):
        self._cv = threading.Lock()
        self._region = None
        self._users = 0
        self._retired: list = []

    @contextlib.contextmanager
    def use(self):
        with self._cv:
            region = self._region
            self._users += 1
        try:
            yield region
        finally:
            with self._cv:
                self._users -= 1
                if self._users == 0:
                    self._close_retired()

    def _close_retired(self) -> None:
        for r in self._retired:
            with contextlib.suppress(Exception):
                r.close()
        self._retired.clear()

    def replace(self, new) -> None:
        with self._cv:
            if self._region is not None:
                self._retired.append(self._region)
            self._region = new
            if self._users == 0:
                self._close_retired()

    @property
    def current(self):
        return self._region


class DataplaneWatch:
    """Attaches the data plane's region when it appears and follows it. Its state (identity, alive) is written
    by check() on the store thread only; other threads read it (plain attribute reads)."""

    def __init__(self, holder: RegionHolder, path: str):
        self.holder = holder
        self.path = path
        self.identity: tuple | None = None      # (inode, pid, created_ms) of the attached region
        self.alive = False

    def check(self) -> str | None:
        """One look; returns what happened (attached, restarted, resumed) when a publish is called for."""
        from pydp.shm import Region, ShmError

        path = self.path
        try:
            ino = os.stat(path).st_ino
        except (FileNotFoundError, NotADirectoryError):
            ino = None
        region = self.holder.current
        now = observe.now_ms()
        if region is not None:
            h = region.hdr
            same = ino == self.identity[0] and (int(h.dp_pid), int(h.created_ms)) == self.identity[1:]
            alive = now - int(h.heartbeat_ms) <= observe.HEARTBEAT_STALE_MS
            if same:
                if alive and not self.alive:
                    self.alive = True
                    event("dataplane_resumed", pid=int(h.dp_pid), path=path)
                    return "data plane resumed"
                if not alive and self.alive:
                    self.alive = False
                    event("dataplane_lost", logging.ERROR, pid=int(h.dp_pid), path=path,
                          heartbeat_age_ms=now - int(h.heartbeat_ms))
                return None
            # another region (or none) at the path: the data plane restarted or stopped
            if self.alive and (ino is None or not alive):
                self.alive = False
                event("dataplane_lost", logging.ERROR, pid=int(h.dp_pid), path=path,
                      reason="region removed" if ino is None else "region replaced")
        if ino is None:
            return None
        try:
            new = Region.attach(path)
        except ShmError as exc:
            log.debug("cannot attach %s yet: %s", path, exc)
            return None
        h = new.hdr
        ready = (int(h.generation) >= 1 and now - int(h.heartbeat_ms) <= observe.HEARTBEAT_STALE_MS
                 and (int(h.heartbeat_ms) > int(h.created_ms) or any(h.workers[w].online
                                                                      for w in range(h.nb_workers))))
        try:
            new_ino = os.fstat(new._shm.fd).st_ino
        except OSError:
            new_ino = None
        identity = (new_ino, int(h.dp_pid), int(h.created_ms))
        if not ready or (region is not None and identity == self.identity):
            new.close()
            return None
        restarted = region is not None
        self.holder.replace(new)
        self.identity = identity
        self.alive = True
        event("dataplane_restarted" if restarted else "dataplane_attached", pid=identity[1], path=path,
              workers=int(h.nb_workers), generation=int(h.generation), managed=bool(h.managed))
        if not h.managed:
            event("dataplane_unmanaged", logging.WARNING, pid=identity[1], path=path,
                  hint="start pydp-dataplane with --managed: its SIGHUP would publish the file's clusters, which "
                       "this daemon then repairs as drift")
        return "data plane restarted" if restarted else "data plane attached"
