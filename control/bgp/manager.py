"""BGP inside pydp-control: runs BIRD 2 as a child process and drives it through its control socket with birdc.

    manager = BgpManager(event=event)
    await manager.run(lambda: cfg, lambda: {"web": (True, "fit")}, stop)   # until stop is set

Each round (at once when woken, else every ROUND_S):

* no [bgp] section: BIRD is not running (stopped if it was);
* otherwise BIRD runs as ``bird -f -c config_path -s socket`` (PR_SET_PDEATHSIG: it dies with pydp-control). Its
  configuration is control.bgp.birdconf.render() of [bgp] and the bgp clusters, written to config_path; a change
  is checked with ``bird -p`` and loaded with ``birdc configure``. If BIRD exits it is started again (event
  ``bgp_engine_restarted``, at most once per RESTART_S);
* each bgp cluster is announced or withdrawn as the decisions say (``birdc enable|disable`` of its static
  protocol; events ``bgp_announce`` / ``bgp_withdraw`` with the reason). After a (re)start or a reconfigure the
  state of every cluster is asserted again (``configure`` resets a protocol to its ``disabled`` line);
* every POLL_S the sessions are read (``show protocols all``, ``show bfd sessions``): events ``bgp_session_up`` /
  ``bgp_session_down`` on every change, counted per peer.

Nothing here speaks BGP or BFD: BIRD does, this drives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time
from typing import Any, Callable

from control.bgp import birdc, birdconf

__all__ = ["BgpManager", "BIRD", "BIRDC"]

log = logging.getLogger("pydp.bgp")
bird_log = logging.getLogger("pydp.bird")

BIRD = os.environ.get("PYDP_BIRD", "bird")
BIRDC = os.environ.get("PYDP_BIRDC", "birdc")
ROUND_S = 0.2
POLL_S = 0.5
RESTART_S = 1.0
ERROR_PAUSE_S = 1.0             # after a failed round (BIRD refused a config, birdc failed) the next one waits this
START_WAIT_S = 10.0
BIRDC_TIMEOUT_S = 5.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec of the BIRD child: SIGTERM when pydp-control (the thread that started it) goes away."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _listening(path: str) -> bool:
    """Something accepts connections on the UNIX socket path."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


class BirdError(RuntimeError):
    pass


class BgpManager:
    def __init__(self, *, event: Callable[..., None]):
        self.event = event
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr_task: asyncio.Task | None = None
        self.bgp = None                     # the [bgp] BIRD runs with
        self.socket: str | None = None
        self.structure: str | None = None   # render() with every cluster withdrawn: a change needs a configure
        self.announced: dict[str, bool] = {}    # cluster -> announced in BIRD now
        self.reasons: dict[str, str] = {}
        self.since: dict[str, float] = {}       # cluster -> Unix time of its last announce/withdraw
        self.sessions: dict[str, dict] = {}     # peer address -> status row
        self.changes: dict[str, int] = {}       # peer address -> session state changes
        self.version: str | None = None
        self.restarts = 0
        self.last_start = 0.0
        self.last_poll = 0.0
        self.error: str | None = None           # the last engine error (cannot start, bad config), for status
        self.wake = asyncio.Event()
        self.peers: list = []

    # ---- BIRD, the process ----
    async def _birdc(self, *args: str, check: bool = True) -> str:
        proc = await asyncio.create_subprocess_exec(BIRDC, "-s", self.socket, *args, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), BIRDC_TIMEOUT_S)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise BirdError(f"birdc {' '.join(args)}: no answer within {BIRDC_TIMEOUT_S:g} s") from None
        text = out.decode(errors="replace")
        if check and proc.returncode != 0:
            raise BirdError(f"birdc {' '.join(args)}: " + " ".join(text.split())[-300:])
        return text

    @staticmethod
    def _write(path: str, text: str) -> None:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    async def _check_text(self, path: str, text: str) -> None:
        """bird -p (parse only) on text written to a temporary file beside path."""
        tmp = f"{path}.check{os.getpid()}"
        self._write(tmp, text)
        try:
            try:
                proc = await asyncio.create_subprocess_exec(BIRD, "-p", "-c", tmp, stdin=asyncio.subprocess.DEVNULL,
                                                            stdout=asyncio.subprocess.PIPE,
                                                            stderr=asyncio.subprocess.STDOUT)
            except FileNotFoundError:
                raise BirdError(f"{BIRD} is not installed (Debian's bird2 package: scripts/setup.sh installs "
                                "it)") from None
            out, _ = await asyncio.wait_for(proc.communicate(), BIRDC_TIMEOUT_S)
            if proc.returncode != 0:
                raise BirdError("the generated BIRD configuration was refused: " + " ".join(out.decode(
                    errors="replace").split())[-300:])
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    async def _start(self, bgp, text: str) -> None:
        self.socket = bgp.socket
        if _listening(bgp.socket):
            raise BirdError(f"another BIRD already answers on {bgp.socket}: give [bgp] socket (and config_path) "
                            "paths of this appliance's own")
        await self._check_text(bgp.config_path, text)
        self._write(bgp.config_path, text)
        os.makedirs(os.path.dirname(bgp.socket), mode=0o755, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(bgp.socket)           # a socket left by a BIRD that died with us
        self.last_start = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            BIRD, "-f", "-c", bgp.config_path, "-s", bgp.socket, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent)
        self.stderr_task = asyncio.create_task(self._read_stderr(self.proc))
        deadline = time.monotonic() + START_WAIT_S
        try:
            while True:
                if self.proc.returncode is not None:
                    raise BirdError(f"bird exited at start with status {self.proc.returncode}")
                try:
                    self.version = birdc.version(await self._birdc("show", "status"))
                    break
                except BirdError:
                    if time.monotonic() > deadline:
                        raise BirdError(f"bird did not answer on {bgp.socket} within {START_WAIT_S:g} s") from None
                    await asyncio.sleep(0.05)
        except BaseException:
            await self._stop_bird()
            raise
        self.bgp = bgp
        self.peers = list(bgp.peers)
        self.error = None
        log.info("bird %s started (pid %d, %s)", self.version, self.proc.pid, bgp.config_path)

    async def _read_stderr(self, proc) -> None:
        with contextlib.suppress(Exception):
            while True:
                line = await proc.stderr.readline()
                if not line:
                    return
                bird_log.info("%s", line.decode(errors="replace").rstrip())

    async def _stop_bird(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self.stderr_task is not None:
            self.stderr_task.cancel()
            with contextlib.suppress(BaseException):
                await self.stderr_task
            self.stderr_task = None
        self.bgp = None
        self.structure = None
        self.sessions = {}
        self.announced = {}

    # ---- the rounds ----
    async def run(self, get_cfg: Callable[[], Any], decisions: Callable[[], dict], stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                pause = 0.0
                try:
                    await self.round(get_cfg(), decisions())
                    self.error = None
                except asyncio.CancelledError:
                    raise
                except BirdError as exc:
                    if str(exc) != self.error:
                        self.event("bgp_engine_error", logging.ERROR, error=str(exc))
                    self.error = str(exc)
                    pause = ERROR_PAUSE_S
                except Exception:
                    log.exception("bgp round")
                    pause = ERROR_PAUSE_S
                if pause:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), pause)     # not a busy loop while BIRD fails
                self.wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), ROUND_S)
        finally:
            await self.shutdown()

    async def round(self, cfg, wanted: dict) -> None:
        bgp = cfg.bgp if cfg is not None else None
        if bgp is None:
            if self.proc is not None:
                await self.withdraw_all("no [bgp] section")
                await self._stop_bird()
                self.event("bgp_engine_stopped", reason="no [bgp] section")
            return
        clusters = [cl for cl in cfg.clusters if cl.mode == "cluster" and cl.failover == "bgp"]
        structure = birdconf.render(bgp, clusters)
        if self.proc is not None and self.proc.returncode is not None:
            code = self.proc.returncode
            self._sessions_gone(f"bird exited with status {code}")
            await self._stop_bird()
            if time.monotonic() - self.last_start < RESTART_S:
                return                              # restarted at most once per RESTART_S
            await self._start(bgp, birdconf.render(bgp, clusters, {}))
            self.restarts += 1
            self.structure = structure
            self.event("bgp_engine_restarted", logging.WARNING, status=code, pid=self.proc.pid)
        elif self.proc is None:
            if time.monotonic() - self.last_start < RESTART_S:
                return
            await self._start(bgp, birdconf.render(bgp, clusters, {}))
            self.structure = structure
            self.event("bgp_engine_started", engine="bird", version=self.version, pid=self.proc.pid,
                       config=bgp.config_path, socket=bgp.socket)
        elif structure != self.structure:
            if bgp.socket != self.bgp.socket:
                await self.withdraw_all("the engine's socket changed")
                await self._stop_bird()
                return                              # started again next round
            text = birdconf.render(bgp, clusters, self.announced)
            await self._check_text(bgp.config_path, text)
            self._write(bgp.config_path, text)
            await self._birdc("configure")
            self.bgp = bgp
            self.peers = list(bgp.peers)
            self.structure = structure
            self.event("bgp_engine_reconfigured", config=bgp.config_path)
            # configure sets each static protocol to its "disabled" line: assert the state below
            self.announced = {k: v for k, v in self.announced.items() if any(c.name == k for c in clusters)}
            for name, on in self.announced.items():
                await self._birdc("enable" if on else "disable", birdconf.static_name(name))
        for cl in clusters:
            want, why = wanted.get(cl.name, (False, "not decided yet"))
            await self._set(cl.name, want, why)
        for name in [n for n in self.announced if not any(c.name == n for c in clusters)]:
            self.announced.pop(name, None)
            self.reasons.pop(name, None)
            self.event("bgp_withdraw", cluster=name, reason="no longer a bgp cluster")
        if time.monotonic() - self.last_poll >= POLL_S:
            await self.poll()

    async def _set(self, name: str, want: bool, why: str) -> None:
        had = self.announced.get(name)
        self.reasons[name] = why
        if had is want:
            return
        await self._birdc("enable" if want else "disable", birdconf.static_name(name))
        self.announced[name] = want
        self.since[name] = time.time()
        if want:
            self.event("bgp_announce", cluster=name, reason=why)
        elif had is not None or why != "not decided yet":
            self.event("bgp_withdraw", logging.WARNING if had else logging.INFO, cluster=name, reason=why)

    async def withdraw_all(self, why: str) -> None:
        """Every bgp cluster withdrawn at once (a drain, a stop)."""
        if self.proc is None or self.proc.returncode is not None:
            return
        for name, on in list(self.announced.items()):
            if on:
                with contextlib.suppress(BirdError):
                    await self._set(name, False, why)

    async def poll(self) -> None:
        self.last_poll = time.monotonic()
        protos = birdc.parse_protocols(await self._birdc("show", "protocols", "all"))
        bfd = birdc.parse_bfd(await self._birdc("show", "bfd", "sessions")) if self.bgp and self.bgp.bfd else {}
        sessions = {}
        for i, p in enumerate(self.peers):
            addr = str(p.address)
            pr = protos.get(birdconf.peer_name(i), {})
            state = pr.get("bgp_state") or (pr.get("state") or "unknown").capitalize()
            b = bfd.get(addr)
            sessions[addr] = {"peer": addr, "as": p.asn, "state": state,
                              "established": state == "Established",
                              "since": pr.get("since"), "bfd": (b["state"] if b else ("off" if not self.bgp.bfd
                                                                                      else "none")),
                              "routes": pr.get("exported", 0) if state == "Established" else 0,
                              "last_error": pr.get("last_error") or None,
                              "changes": self.changes.get(addr, 0)}
        for addr, s in sessions.items():
            old = self.sessions.get(addr)
            was_up = bool(old and old["established"])
            if s["established"] != was_up and (old is not None or s["established"]):
                self.changes[addr] = self.changes.get(addr, 0) + 1
                s["changes"] = self.changes[addr]
                if s["established"]:
                    self.event("bgp_session_up", peer=addr, peer_as=s["as"], bfd=s["bfd"])
                else:
                    self.event("bgp_session_down", logging.WARNING, peer=addr, peer_as=s["as"], state=s["state"],
                               bfd=s["bfd"], error=s["last_error"])
        self.sessions = sessions

    def _sessions_gone(self, why: str) -> None:
        """BIRD is gone: every established session went with it."""
        for addr, s in self.sessions.items():
            if s["established"]:
                self.changes[addr] = self.changes.get(addr, 0) + 1
                self.event("bgp_session_down", logging.WARNING, peer=addr, peer_as=s["as"], state="engine gone",
                           bfd=None, error=why)

    async def shutdown(self) -> None:
        """Withdraw every cluster, give the routers a moment to hear it, stop BIRD."""
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            await self.withdraw_all("pydp-control stopping")
        await self._stop_bird()

    # ---- reading ----
    def status(self) -> dict:
        """The "bgp" part of pydpctl status."""
        running = self.proc is not None and self.proc.returncode is None
        return {"engine": "bird", "version": self.version, "running": running,
                "pid": self.proc.pid if running else None, "restarts": self.restarts, "error": self.error,
                "socket": self.socket,
                "sessions": [dict(s) for s in self.sessions.values()],
                "clusters": {name: {"announced": bool(self.announced.get(name)), "reason": self.reasons.get(name),
                                    "since": self.since.get(name)}
                             for name in sorted(set(self.announced) | set(self.reasons))}}

    def metrics(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("pydp_bgp_session_up", "1 while the BGP session with the peer is established",
                               labels=["peer"])
        ch = CounterMetricFamily("pydp_bgp_session_changes", "BGP session state changes (up or down) with the peer",
                                 labels=["peer"])
        ann = GaugeMetricFamily("pydp_bgp_announced", "1 while this appliance announces the cluster's address over "
                                "BGP", labels=["cluster"])
        rs = CounterMetricFamily("pydp_bgp_engine_restarts", "times the routing engine (BIRD) was started again "
                                 "after it died")
        for addr, s in self.sessions.items():
            up.add_metric([addr], 1 if s["established"] else 0)
            ch.add_metric([addr], self.changes.get(addr, 0))
        for name in sorted(set(self.announced) | set(self.reasons)):
            ann.add_metric([name], 1 if self.announced.get(name) else 0)
        rs.add_metric([], self.restarts)
        return [up, ch, ann, rs]
