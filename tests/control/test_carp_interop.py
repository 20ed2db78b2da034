"""pydp-carp against ucarp (the Debian package) with real packets: network namespaces on a bridge.

Topology: a bridge in the namespace "sw"; h1 (192.0.2.1) runs pydp-carp, h2 (192.0.2.2) runs ucarp, c
(192.0.2.100) is a client and the observer: it captures every CARP advertisement and ARP frame on the segment
(AF_PACKET) and forges advertisements. The cluster IP is 192.0.2.50, vhid 7, advbase 1 s. Roles are read from
which namespace holds the cluster IP (``ip -n NS addr``), pydp-carp's --json-status file and ucarp's log.

ucarp does not put the address on the interface itself: its up/down scripts here do (``ip addr add/del``).
Takeover times go to a summary printed at the end of the module.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netlab import RAW_SENDER, addresses, bridge, bridge_host, link_mac, netns, ns_run, pydp_carp_argv, report, run, wait_until
from control.carp import codec

pytestmark = [pytest.mark.netns]

VHID = 7
VIP = "192.0.2.50"
H1, H2, CLIENT = "192.0.2.1", "192.0.2.2", "192.0.2.100"
PASS = b"tr0ub4dor&3-carp"          # 16 bytes: within ucarp's 19
WRONG = "not-the-passphrase"
UCARP = shutil.which("ucarp") or "/usr/sbin/ucarp"
ADVBASE = 1
SLOW_SKEW = 100                     # the less preferred node: interval 1 + 100/256 s
VIRTUAL_MAC = "00:00:5e:00:01:%02x" % VHID
UCARP_ADVERT_MAC = "00:00:5e:00:00:%02x" % VHID


def interval(skew: int) -> float:
    return ADVBASE + skew / 256


def takeover_bound(skew: int) -> float:
    """3 intervals (master down) + 1 interval (ucarp checks its timer only when its poll wakes up) + 1 s slack."""
    return 3 * interval(skew) + interval(skew) + 1.0




SNIFFER = r"""
import json, socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind(("eth0", 0))
out = open(sys.argv[1], "a", buffering=1)
out.write(json.dumps({"kind": "ready", "t": time.monotonic()}) + "\n")
while True:
    frame, meta = s.recvfrom(65535)
    if meta[2] == socket.PACKET_OUTGOING or len(frame) < 14:
        continue
    t = time.monotonic()
    etype = struct.unpack("!H", frame[12:14])[0]
    rec = None
    if etype == 0x0800 and len(frame) >= 34 and frame[23] == 112:
        ihl = (frame[14] & 15) * 4
        carp = frame[14 + ihl:14 + ihl + 36]
        rec = {"kind": "carp", "src_mac": frame[6:12].hex(":"), "ip_src": socket.inet_ntoa(frame[26:30]),
               "ttl": frame[22], "len": len(carp)}
        if len(carp) >= 6:
            rec.update(vhid=carp[1], advskew=carp[2], advbase=carp[5])
    elif etype == 0x0806 and len(frame) >= 42:
        arp = frame[14:42]
        rec = {"kind": "arp", "op": struct.unpack("!H", arp[6:8])[0], "src_mac": frame[6:12].hex(":"),
               "sha": arp[8:14].hex(":"), "spa": socket.inet_ntoa(arp[14:18]), "tpa": socket.inet_ntoa(arp[24:28])}
    if rec:
        rec["t"] = t
        out.write(json.dumps(rec) + "\n")
"""



# ---- the lab ------------------------------------------------------------------------------------------------

class Lab:
    def __init__(self, sw, h1, h2, c, workdir: Path):
        self.sw, self.h1, self.h2, self.c = sw, h1, h2, c
        self.workdir = workdir
        self.capture = workdir / "capture.jsonl"
        self.macs = {h1: link_mac(h1, "eth0"), h2: link_mac(h2, "eth0"), c: link_mac(c, "eth0")}
        self.timings: list[tuple[str, float, float]] = []      # (what, seconds, bound)
        self.notes: list[str] = []
        self.sniffer: subprocess.Popen | None = None

    def holders(self) -> set[str]:
        return {name for name, ns in (("h1", self.h1), ("h2", self.h2)) if VIP in addresses(ns)}

    def drop_vip(self, ns: str) -> None:
        """What a crashed host loses on reboot: the cluster IP left on its interface."""
        run("ip", "-n", ns, "addr", "del", f"{VIP}/32", "dev", "eth0", check=False)

    def frames(self, since: float = 0.0, **match) -> list[dict]:
        out = []
        for line in self.capture.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("t", 0) >= since and all(rec.get(k) == v for k, v in match.items()):
                out.append(rec)
        return out

    def neigh_mac(self, ip: str = VIP) -> str | None:
        out = run("ip", "-j", "-n", self.c, "neigh", "show", ip, "dev", "eth0", check=False).stdout or "[]"
        entries = json.loads(out)
        return entries[0].get("lladdr") if entries else None


@pytest.fixture(scope="module")
def lab(tmp_path_factory, request):
    if not os.access(UCARP, os.X_OK):
        pytest.skip("ucarp is not installed (apt-get install ucarp)")
    workdir = tmp_path_factory.mktemp("carp")
    with contextlib.ExitStack() as stack:
        sw = stack.enter_context(netns("carpsw"))
        h1 = stack.enter_context(netns("carph1"))
        h2 = stack.enter_context(netns("carph2"))
        c = stack.enter_context(netns("carpc"))
        bridge(sw, "br0")
        bridge_host(sw, "br0", h1, "p1", addr=f"{H1}/24")
        bridge_host(sw, "br0", h2, "p2", addr=f"{H2}/24")
        bridge_host(sw, "br0", c, "p3", addr=f"{CLIENT}/24")
        lab = Lab(sw, h1, h2, c, workdir)
        lab.capture.touch()
        lab.sniffer = subprocess.Popen(["ip", "netns", "exec", c, sys.executable, "-c", SNIFFER, str(lab.capture)])
        try:
            wait_until(lambda: lab.frames(kind="ready"), 10, "the sniffer to start")
            yield lab
        finally:
            lab.sniffer.kill()
            lab.sniffer.wait(5)
            _summary(request, lab)


def _summary(request, lab: Lab) -> None:
    lines = ["", "CARP interop (pydp-carp <-> ucarp 1.5.2, advbase 1 s): measured times"]
    for what, secs, bound in lab.timings:
        lines.append(f"  {what:<76} {secs:5.2f} s  (bound {bound:.2f} s)")
    lines += [f"  note: {n}" for n in lab.notes]
    text = "\n".join(lines)
    (lab.workdir / "summary.txt").write_text(text + "\n")
    report(request, text)




def timed(pred, timeout: float, what: str, t0: float) -> float:
    wait_until(pred, timeout, what)
    return time.monotonic() - t0


# ---- processes ----------------------------------------------------------------------------------------------

class Proc:
    def __init__(self, name: str, ns: str, argv: list[str], log: Path):
        self.name, self.ns, self.log = name, ns, log
        with open(log, "ab") as f:
            self.p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=f, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.p.pid             # ip netns exec execs the command: same pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.p.poll() is None

    def term(self, timeout: float = 10.0) -> int:
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        return self.p.returncode

    def kill(self) -> None:
        if self.alive():
            self.p.kill()
            self.p.wait(5)


class Ours(Proc):
    def __init__(self, lab: Lab, name: str, ns: str, src: str, *, skew: int, preempt=False, mac="real",
                 key: bytes = PASS, use_pass: bool = False, extra=()):
        self.status_path = lab.workdir / f"{name}.json"
        with contextlib.suppress(FileNotFoundError):
            self.status_path.unlink()
        passfile = lab.workdir / f"{name}.key"
        passfile.write_bytes(key + b"\n")
        passfile.chmod(0o600)
        secret = ["--pass", key.decode()] if use_pass else ["--passfile", str(passfile)]
        argv = [*pydp_carp_argv(), "-i", "eth0", "-s", src, "-v", str(VHID), *secret, "-a", VIP, "-b", str(ADVBASE),
                "-k", str(skew), "--mac", mac, "--json-status", str(self.status_path), "--log-level", "debug",
                *(["--preempt"] if preempt else []), *extra]
        super().__init__(name, ns, argv, lab.workdir / f"{name}.log")

    def status(self) -> dict:
        for _ in range(20):
            try:
                return json.loads(self.status_path.read_text())
            except (FileNotFoundError, ValueError):
                time.sleep(0.05)
        raise AssertionError(f"{self.name}: no status file\n{self.text()}")

    def state(self) -> str | None:
        try:
            return json.loads(self.status_path.read_text()).get("state")
        except (FileNotFoundError, ValueError):
            return None


class Ucarp(Proc):
    def __init__(self, lab: Lab, name: str, ns: str, src: str, *, skew: int, preempt=False, shutdown=False,
                 passphrase: str | None = None):
        up, down = lab.workdir / "vip-up.sh", lab.workdir / "vip-down.sh"
        if not up.exists():
            up.write_text('#!/bin/sh\nexec ip addr add "$2"/32 dev "$1"\n')
            down.write_text('#!/bin/sh\nip addr del "$2"/32 dev "$1" 2>/dev/null\nexit 0\n')
            up.chmod(0o755)
            down.chmod(0o755)
        argv = [UCARP, "-i", "eth0", "-s", src, "-v", str(VHID), "-p", passphrase or PASS.decode(), "-a", VIP,
                "-b", str(ADVBASE), "-k", str(skew), "-u", str(up), "-d", str(down), "-f", "none",
                *(["-P"] if preempt else []), *(["-z"] if shutdown else [])]
        super().__init__(name, ns, argv, lab.workdir / f"{name}.log")

    def state(self) -> str | None:
        states = [line.rsplit(":", 1)[1].strip() for line in self.text().splitlines()
                  if "Switching to state:" in line]
        return states[-1] if states else None


def arp_sysctls(ns: str) -> tuple[str, str]:
    out = ns_run(ns, "sysctl", "-n", "net.ipv4.conf.eth0.arp_ignore", "net.ipv4.conf.eth0.arp_announce").stdout
    return tuple(out.split())


def vmac_links(ns: str) -> list[str]:
    """mac=virtual children (vmac<ifindex>.<vhid>) in ns."""
    out = json.loads(run("ip", "-j", "-n", ns, "link", "show").stdout or "[]")
    return [link["ifname"] for link in out if link["ifname"].startswith("vmac")]


@pytest.fixture
def procs(lab):
    started: list[Proc] = []

    def track(p: Proc) -> Proc:
        started.append(p)
        return p

    lab.drop_vip(lab.h1)
    lab.drop_vip(lab.h2)
    try:
        yield track
    finally:
        for p in started:
            p.kill()
        for ns in (lab.h1, lab.h2):
            lab.drop_vip(ns)
            for name in vmac_links(ns):
                run("ip", "-n", ns, "link", "del", name, check=False)


def delayed_garp(lab: Lab, since: float, mac: str) -> list[dict]:
    """The gratuitous ARPs from `mac` since `since`: the one on taking over and the delayed second one, about two
    intervals later (there may be more: a master reasserts itself when it hears a less preferred one)."""
    def check():
        g = lab.frames(since, kind="arp", spa=VIP, tpa=VIP, src_mac=mac)
        return g if any(1.5 <= x["t"] - g[0]["t"] <= 3.0 for x in g[1:]) else None

    return wait_until(check, 4, "a gratuitous ARP and the delayed second one")


# ---- interop ------------------------------------------------------------------------------------------------

def test_ucarp_master_then_ours_preempts_fails_over_and_bows_out(lab, procs):
    """ucarp master + ours backup; ours preempts only with --preempt; ucarp takes over when ours is killed;
    ours bows out on SIGTERM and ucarp takes over at once."""
    ucarp = procs(Ucarp(lab, "a-ucarp", lab.h2, H2, skew=SLOW_SKEW))
    wait_until(lambda: lab.holders() == {"h2"}, 8, "ucarp to become master")

    # ours, preferred (advskew 0) but without --preempt, joins later: it stays backup
    ours = procs(Ours(lab, "a-ours1", lab.h1, H1, skew=0))
    time.sleep(3.0 + 1.0)                                           # longer than our master-down interval
    st = ours.status()
    assert st["state"] == "BACKUP", ours.text()
    assert st["received_ok"] >= 2 and sum(st["drops"].values()) == 0, st
    assert lab.holders() == {"h2"} and ucarp.state() == "MASTER", ucarp.text()
    assert ours.term() == 0
    assert lab.holders() == {"h2"}                                  # a backup leaving changes nothing

    # the client knows the cluster IP at ucarp's MAC
    ns_run(lab.c, "ping", "-c", "1", "-W", "1", VIP, check=False)
    assert lab.neigh_mac() == lab.macs[lab.h2]

    # with --preempt it takes over at ucarp's next advertisement
    t0 = time.monotonic()
    ours = procs(Ours(lab, "a-ours2", lab.h1, H1, skew=0, preempt=True))
    secs = timed(lambda: lab.holders() == {"h1"}, 1 + interval(SLOW_SKEW) + 2, "ours to preempt ucarp", t0)
    lab.timings.append(("ours (--preempt) preempts ucarp master, incl. process start", secs,
                        1 + interval(SLOW_SKEW) + 2))
    assert "preempting" in ours.status()["reason"]
    wait_until(lambda: ucarp.state() == "BACKUP", 3, "ucarp to go back to BACKUP")
    # our gratuitous ARP moved the client's entry without any traffic; a second one follows ~2 intervals later
    wait_until(lambda: lab.neigh_mac() == lab.macs[lab.h1], 2, "the client's ARP entry to move to h1")
    garps = delayed_garp(lab, t0, lab.macs[lab.h1])
    assert garps[0]["op"] == 1 and garps[0]["sha"] == lab.macs[lab.h1]
    # our advertisements: TTL 255, our source, our real MAC (mac=real)
    ads = lab.frames(t0, kind="carp", ip_src=H1)
    assert ads and all(a["ttl"] == 255 and a["src_mac"] == lab.macs[lab.h1] and a["vhid"] == VHID for a in ads)
    assert all(a["advbase"] == 1 and a["advskew"] == 0 for a in ads)

    # ours master + ucarp backup, steady
    time.sleep(interval(SLOW_SKEW) * 3 + 0.5)
    assert lab.holders() == {"h1"} and ucarp.state() == "BACKUP" and ours.state() == "MASTER"

    # failover: ours is killed (no bow-out); ucarp takes over after its master-down timer
    t0 = time.monotonic()
    ours.kill()
    lab.drop_vip(lab.h1)
    secs = timed(lambda: lab.holders() == {"h2"}, takeover_bound(SLOW_SKEW) + 1, "ucarp to take over", t0)
    lab.timings.append(("failover: ours SIGKILLed -> ucarp holds the VIP", secs, takeover_bound(SLOW_SKEW)))
    assert secs <= takeover_bound(SLOW_SKEW)
    wait_until(lambda: lab.neigh_mac() == lab.macs[lab.h2], 2, "ucarp's gratuitous ARP to reach the client")

    # ours comes back (preempts), then stops gracefully: bow-out, ucarp takes over at once
    marks = lab.workdir / "a-marks.txt"
    script = lab.workdir / "a-mark.sh"
    script.write_text(f'#!/bin/sh\necho "$0 $1 $2" >> {marks}\n')
    script.chmod(0o755)
    up, down = lab.workdir / "a-up.sh", lab.workdir / "a-down.sh"
    for link in (up, down):
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(script)
    ours = procs(Ours(lab, "a-ours3", lab.h1, H1, skew=0, preempt=True,
                      extra=["--upscript", str(up), "--downscript", str(down), "--shutdown"]))
    wait_until(lambda: lab.holders() == {"h1"}, 1 + interval(SLOW_SKEW) + 2, "ours to preempt again")
    wait_until(lambda: ucarp.state() == "BACKUP", 3, "ucarp to go back to BACKUP")
    t0 = time.monotonic()
    assert ours.term() == 0
    # ucarp reads packets through libpcap with a 1 s buffer timeout: it may see the bow-out up to ~1 s late,
    # still well before its master-down timer (3 x 1 s + 100/256 s after our last advertisement)
    bound = interval(SLOW_SKEW) + 0.5
    secs = timed(lambda: lab.holders() == {"h2"}, 3, "ucarp to take over after our bow-out", t0)
    lab.timings.append(("bow-out: ours SIGTERMed -> ucarp holds the VIP", secs, bound))
    assert secs < bound, "ucarp should take over at once, well before its master-down timer (3.4 s)"
    assert "Putting MASTER DOWN (going to time out)" in ucarp.text()       # ucarp's reaction to 255/255
    bow = lab.frames(t0 - 0.5, kind="carp", ip_src=H1, advbase=255, advskew=255)
    assert len(bow) == 1, bow
    assert "bow-out advertisement sent" in ours.text()
    assert marks.read_text().split("\n")[:3] == [f"{down} eth0 {VIP}", f"{up} eth0 {VIP}", f"{down} eth0 {VIP}"]


def test_ours_master_then_ucarp_preempts_fails_over_and_stops(lab, procs):
    """ours master + ucarp backup; ucarp preempts only with -P; ours takes over when ucarp is killed, and when
    ucarp stops with SIGTERM (ucarp 1.5.2 does not bow out: ours waits for its master-down timer)."""
    t_start = time.monotonic()
    ours = procs(Ours(lab, "b-ours", lab.h1, H1, skew=SLOW_SKEW, mac="ucarp"))
    wait_until(lambda: lab.holders() == {"h1"}, 8, "ours to become master")

    ucarp = procs(Ucarp(lab, "b-ucarp1", lab.h2, H2, skew=0))
    time.sleep(3.0 + 1.0)
    assert lab.holders() == {"h1"} and ucarp.state() == "BACKUP", ucarp.text()
    assert ours.status()["state"] == "MASTER"
    # mac=ucarp: adverts from 00:00:5e:00:00:<vhid> as ucarp sends them, gratuitous ARP from the real MAC
    ads = lab.frames(t_start, kind="carp", ip_src=H1)
    assert ads and all(a["src_mac"] == UCARP_ADVERT_MAC and a["ttl"] == 255 for a in ads)
    assert ucarp.term() in (0, -signal.SIGTERM)
    assert lab.holders() == {"h1"}

    t0 = time.monotonic()
    ucarp = procs(Ucarp(lab, "b-ucarp2", lab.h2, H2, skew=0, preempt=True))
    secs = timed(lambda: lab.holders() == {"h2"}, interval(SLOW_SKEW) + 3, "ucarp to preempt ours", t0)
    lab.timings.append(("ucarp (-P) preempts ours, incl. process start", secs, interval(SLOW_SKEW) + 3))
    st = wait_until(lambda: (s := ours.status())["state"] == "BACKUP" and s, 2, "ours to go back to BACKUP")
    assert "faster" in st["reason"], st

    # ucarp master + ours backup, steady
    time.sleep(interval(0) * 3 + 0.5)
    assert lab.holders() == {"h2"} and ours.state() == "BACKUP"

    # failover: ucarp killed
    t_kill = time.monotonic()
    ucarp.kill()
    lab.drop_vip(lab.h2)
    secs = timed(lambda: lab.holders() == {"h1"}, takeover_bound(SLOW_SKEW) + 1, "ours to take over", t_kill)
    lab.timings.append(("failover: ucarp SIGKILLed -> ours holds the VIP", secs, takeover_bound(SLOW_SKEW)))
    assert secs <= takeover_bound(SLOW_SKEW)
    st = ours.status()
    assert st["state"] == "MASTER" and st["reason"] == "master-down timer expired", st
    garps = delayed_garp(lab, t_kill, lab.macs[lab.h1])
    assert all(g["src_mac"] == g["sha"] == lab.macs[lab.h1] for g in garps)

    # graceful stop of ucarp (-z: its downscript removes the address)
    ucarp = procs(Ucarp(lab, "b-ucarp3", lab.h2, H2, skew=0, preempt=True, shutdown=True))
    wait_until(lambda: lab.holders() == {"h2"}, interval(SLOW_SKEW) + 3, "ucarp to preempt again")
    wait_until(lambda: ours.state() == "BACKUP", 2, "ours to go back to BACKUP")
    t0 = time.monotonic()
    ucarp.term()
    secs = timed(lambda: lab.holders() == {"h1"}, takeover_bound(SLOW_SKEW) + 1, "ours to take over", t0)
    bowed = lab.frames(t0 - 0.2, kind="carp", ip_src=H2, advbase=255, advskew=255)
    st = ours.status()
    if bowed:
        lab.notes.append("ucarp 1.5.2 sent a bow-out advertisement on SIGTERM")
        assert secs < 1.0 and "bowed out" in st["reason"], st
    else:
        lab.notes.append("ucarp 1.5.2 does not bow out on SIGTERM (-z runs its downscript and exits): "
                         "ours takes over on its master-down timer")
        assert st["reason"] == "master-down timer expired", st
        assert 1.0 <= secs <= takeover_bound(SLOW_SKEW), secs
    lab.timings.append((f"ucarp SIGTERMed ({'bow-out' if bowed else 'no bow-out'}) -> ours holds the VIP", secs,
                        1.0 if bowed else takeover_bound(SLOW_SKEW)))


def test_wrong_passphrase_rejected_by_both(lab, procs):
    """Mismatched keys: each drops the other's advertisements (HMAC), so both become master (split brain is the
    expected outcome). The passphrase stays out of ps, the log and the status file."""
    ours = procs(Ours(lab, "c-ours", lab.h1, H1, skew=0))
    ucarp = procs(Ucarp(lab, "c-ucarp", lab.h2, H2, skew=SLOW_SKEW, passphrase=WRONG))
    wait_until(lambda: lab.holders() == {"h1", "h2"}, 8, "both to hold the VIP")
    st = wait_until(lambda: (s := ours.status())["drops"]["hmac"] >= 2 and s, 4, "hmac drops in our status")
    assert st["state"] == "MASTER" and st["received_ok"] == 0, st
    assert not any(n for reason, n in st["drops"].items() if reason != "hmac"), st
    wait_until(lambda: "Bad digest" in ucarp.text(), 4, "ucarp to reject our digest")
    assert ucarp.state() == "MASTER"
    # ours says so too: the failures are logged (rate-limited) and, master meanwhile, it raises the alarm
    st = wait_until(lambda: (s := ours.status())["auth_alarm"] and s, 6, "our split-brain alarm")
    assert "failed authentication" in st["auth_alarm_detail"] and st["auth_alarms"] == 1, st
    text = ours.text()
    assert "failed authentication (hmac" in text and "split brain suspected" in text
    assert text.count("failed authentication (hmac") <= 2                  # at most one line per 10 s
    # secrets
    cmdline = Path(f"/proc/{ours.pid}/cmdline").read_bytes()
    assert b"pydp-carp" in cmdline or b"control.carp.cli" in cmdline
    assert PASS not in cmdline
    assert PASS.decode() not in ours.text()
    assert PASS.decode() not in ours.status_path.read_text()
    assert "hmac" in ours.text()                                    # the drops are logged at debug ...
    assert WRONG not in ours.text()                                 # ... without any key


def test_forged_adverts_counted_and_ignored_virtual_mac(lab, procs):
    """Forged advertisements from the client, each better than ours (advskew 0) and each broken in one way, are
    dropped and counted per reason without a state change; a valid one then does demote ours (so the forged ones
    did reach it). mac=virtual: the cluster IP answers ARP with 00:00:5e:00:01:<vhid>. --pass is masked in ps."""
    # the client has an old entry for the cluster IP (gratuitous ARPs update entries, they do not create them)
    run("ip", "-n", lab.c, "neigh", "replace", VIP, "lladdr", "02:00:00:00:00:99", "dev", "eth0", "nud", "stale")
    t_start = time.monotonic()
    ours = procs(Ours(lab, "d-ours", lab.h1, H1, skew=SLOW_SKEW, mac="virtual", use_pass=True))
    wait_until(lambda: lab.holders() == {"h1"}, 8, "ours to become master")
    assert PASS not in Path(f"/proc/{ours.pid}/cmdline").read_bytes()
    assert "warning: --pass puts the passphrase in the process list" in ours.text()
    assert arp_sysctls(lab.h1) == ("1", "2")

    # our gratuitous ARP pointed the client at the virtual MAC; a fresh ARP resolution gets it too, and traffic
    # to the cluster IP works (its answers, sent through the parent, do not move the client's entry)
    wait_until(lambda: lab.neigh_mac() == VIRTUAL_MAC, 2, "the client's entry to point at the virtual MAC")
    run("ip", "-n", lab.c, "neigh", "flush", "dev", "eth0")
    assert ns_run(lab.c, "ping", "-c", "2", "-i", "0.2", "-W", "2", VIP, check=False).returncode == 0
    assert lab.neigh_mac() == VIRTUAL_MAC
    ads = lab.frames(t_start, kind="carp", ip_src=H1)
    assert ads and all(a["src_mac"] == VIRTUAL_MAC for a in ads)
    garps = lab.frames(t_start, kind="arp", spa=VIP, tpa=VIP)
    assert garps and all(g["src_mac"] == g["sha"] == VIRTUAL_MAC for g in garps)

    before = ours.status()
    c_mac = bytes.fromhex(lab.macs[lab.c].replace(":", ""))
    eth = codec.GROUP4_MAC + c_mac + struct.pack("!H", 0x0800)

    counters = itertools.count(12345)      # a new counter per advert: a repeated one is dropped as a replay

    def carp(key=PASS, vhid=VHID, first=None, advbase=1, advskew=0):
        raw = bytearray(codec.encode(vhid, advbase, advskew, 0, next(counters), key, [VIP]))
        if first is not None:                       # another version/type, checksum made right again
            raw[0] = first
            raw[6:8] = b"\0\0"
            raw[6:8] = struct.pack("!H", codec.checksum(bytes(raw)))
        return bytes(raw)

    def ip(carp_bytes, ttl=255):
        pkt = bytearray(codec.ipv4_packet(CLIENT, carp_bytes))
        if ttl != 255:
            pkt[8] = ttl
            pkt[10:12] = b"\0\0"
            pkt[10:12] = struct.pack("!H", codec.checksum(bytes(pkt[:20])))
        return bytes(pkt)

    bad_sum = bytearray(carp())
    bad_sum[6] ^= 0xFF
    forged = {
        "ttl": ip(carp(), ttl=64),
        "checksum": ip(bytes(bad_sum)),
        "short": ip(carp()[:20]),
        "version": ip(carp(first=0x31)),
        "type": ip(carp(first=0x22)),
        "hmac": ip(carp(key=WRONG.encode())),
        "vhid": ip(carp(vhid=VHID + 1)),
    }
    ns_run(lab.c, sys.executable, "-c", RAW_SENDER, *[(eth + p).hex() for p in forged.values()])
    st = wait_until(lambda: (s := ours.status())["drops"] != before["drops"]
                    and all(s["drops"][r] >= before["drops"][r] + 1 for r in forged) and s, 3,
                    "the forged adverts to be counted")
    assert all(st["drops"][r] == before["drops"][r] + 1 for r in forged), (before["drops"], st["drops"])
    assert st["state"] == "MASTER" and st["received_ok"] == before["received_ok"], st
    assert st["to_backup"] == before["to_backup"]
    time.sleep(0.3)
    assert lab.holders() == {"h1"} and ours.state() == "MASTER"

    # the same advert, well formed: ours yields to it (and the test forger is not a real master)
    ns_run(lab.c, sys.executable, "-c", RAW_SENDER, (eth + ip(carp())).hex())
    wait_until(lambda: ours.state() == "BACKUP", 2, "ours to yield to a valid advert")
    wait_until(lambda: lab.holders() == set(), 2, "ours to release the VIP")
    assert ours.status()["received_ok"] == before["received_ok"] + 1

    # the forged "master" bows out (advbase 255, advskew 255): ours takes over at once, not after master-down
    t0 = time.monotonic()
    ns_run(lab.c, sys.executable, "-c", RAW_SENDER, (eth + ip(carp(advbase=255, advskew=255))).hex())
    secs = timed(lambda: lab.holders() == {"h1"}, 2, "ours to take over after a bow-out", t0)
    lab.timings.append(("bow-out received by ours (BACKUP) -> ours holds the VIP, incl. sender start", secs, 0.5))
    assert secs < 0.5
    assert "bowed out" in ours.status()["reason"]

    assert ours.term() == 0
    assert vmac_links(lab.h1) == []
    assert arp_sysctls(lab.h1) == ("0", "0")
    assert PASS.decode() not in ours.text()


# ---- command line errors (no namespace needed) --------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["-v", "0"], "--vhid must be between 1 and 255"),
    (["-v", "256"], "--vhid must be between 1 and 255"),
    (["-k", "255"], "--advskew must be between 0 and 254"),
    (["--pass", "x" * 21], "at most 20 bytes"),
    (["-i", "nosuchif0"], "no interface named 'nosuchif0'"),
    (["-a", "192.0.2.300"], "--addr must be an IPv4 or IPv6 address"),
    (["--pass", None], "a passphrase is required"),
    (["--passfile", "/nonexistent/key"], "cannot read /nonexistent/key"),
])
def test_cli_rejects_bad_flags(args, message):
    base = {"-i": "lo", "-s": "127.0.0.1", "-v": "1", "--pass": "secret-21", "-a": "192.0.2.50"}
    given = dict(zip(args[::2], args[1::2]))
    if "--passfile" in given:
        base.pop("--pass")
    base.update(given)
    argv = [x for k, v in base.items() if v is not None for x in (k, v)]
    proc = subprocess.run([*pydp_carp_argv(), *argv], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc
    assert message in proc.stderr, proc.stderr
    assert "x" * 21 not in proc.stderr and "secret-21" not in proc.stderr
