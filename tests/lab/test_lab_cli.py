"""pydp-lab's command line: up / status / down leave nothing behind, down cleans up after an `up` that was
SIGKILLed half-way, and operator errors are clear (not root, already up, nothing to take down)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import requests

from netlab import assert_clean, eventually, lab_name, leftovers
from control.lab.lab import RUN_ROOT

pytestmark = [pytest.mark.dpdk, pytest.mark.netns]


def lab_cli(*args, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "control.lab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def test_up_status_down_leaves_nothing(tmp_path):
    name = lab_name()
    try:
        p = lab_cli("up", "--name", name, "--edges", "2", "--clients", "4")
        assert p.returncode == 0, p.stdout + p.stderr
        # the admin page of each appliance, on this host's loopback, with the credentials printed
        m = re.search(r"admin page: (http://\S+) \(appliance A\), (http://\S+) \(B\); sign in as (\S+) / (\S+)",
                      p.stdout)
        assert m, p.stdout
        pages = {"A": m[1], "B": m[2]}
        for who, url in pages.items():
            web = requests.Session()
            r = web.post(url + "api/v1/session", json={"user": m[3], "password": m[4]}, timeout=10)
            assert r.status_code == 200, r.text
            st = web.get(url + "api/v1/status", timeout=10).json()
            assert st["dataplane_up"] is True
            carp = {c["name"]: c["carp"]["local"] for c in st["clusters"]}
            assert carp["web"] == ("master" if who == "A" else "backup")
            assert requests.get(url + "api/v1/status", timeout=10).status_code == 401
        again = lab_cli("up", "--name", name)
        assert again.returncode == 2 and "already up" in again.stderr
        # demo and chaos refuse the name too, and leave the running lab alone (they used to remove it)
        for cmd in (["demo", "--out", str(tmp_path / "demo")], ["chaos", "--rounds", "1"]):
            again = lab_cli(*cmd, "--name", name)
            assert again.returncode == 2 and "already up" in again.stderr, again.stdout + again.stderr
        st = lab_cli("status", "--name", name, "--json")
        assert st.returncode == 0, st.stderr
        s = json.loads(st.stdout)
        assert s["up"] and s["ready"]
        assert s["appliances"]["A"]["clusters"]["web"]["carp"] == "master"
        assert s["appliances"]["B"]["clusters"]["web"]["carp"] == "backup"
        assert s["appliances"]["A"]["clusters"]["web"]["edges"] == {"e1": "up", "e2": "up"}
        cmds = " ".join(p["cmd"] for procs in s["namespaces"].values() for p in procs)
        for what in ("nginx", "pydp.dataplane", "control.daemon", "control.lab.udpecho"):
            assert what in cmds
        text = lab_cli("status", "--name", name)
        assert text.returncode == 0 and "appliance A cluster web" in text.stdout
        down = lab_cli("down", "--name", name, "--json")
        assert down.returncode == 0, down.stderr
        assert len(json.loads(down.stdout)["namespaces"]) == 6       # sw, cl, e1, e2, lbA, lbB
        assert_clean(name)
        for url in pages.values():
            with pytest.raises(requests.exceptions.ConnectionError):
                requests.get(url, timeout=5)
        nothing = lab_cli("down", "--name", name)
        assert nothing.returncode == 2 and "nothing to take down" in nothing.stderr
        gone = lab_cli("status", "--name", name)
        assert gone.returncode == 3 and "not up" in gone.stdout
    finally:
        lab_cli("down", "--name", name)


def test_down_after_a_killed_up():
    """SIGKILL `pydp-lab up` once both appliances' processes run: `down` still removes every trace."""
    name = lab_name()
    up = subprocess.Popen([sys.executable, "-P", "-m", "control.lab.cli", "up", "--name", name, "--edges", "2",
                           "--clients", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        state = RUN_ROOT / name / "state.json"
        eventually(lambda: state.exists() and "B" in json.loads(state.read_text() or "{}").get("sockets", {}), 90,
                   "pydp-lab up to reach appliance B")
        up.send_signal(signal.SIGKILL)
        up.wait(10)
        before = leftovers(name)
        assert before["namespaces"] and before["processes"] and before["files"]   # a real mess to clean
        p = lab_cli("down", "--name", name)
        assert p.returncode == 0, p.stderr
        assert_clean(name)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
        lab_cli("down", "--name", name)


def test_errors_are_clear(monkeypatch, capsys):
    p = lab_cli("up", "--edges", "1")
    assert p.returncode == 2 and "--edges 1: 2 to 15" in p.stderr
    p = lab_cli("up", "--scale-out", "5")
    assert p.returncode == 2 and "--scale-out 5: 2 to 4" in p.stderr
    p = lab_cli("up", "--name", "Bad_Name")
    assert p.returncode == 2 and "lab name" in p.stderr
    from control.lab import cli

    monkeypatch.setattr(os, "geteuid", lambda: 1000)          # an unprivileged user (this test runs as root)
    assert cli.main(["up", "--name", lab_name()]) == 2
    assert "needs root" in capsys.readouterr().err
    h = lab_cli("--help")
    assert h.returncode == 0 and "examples:" in h.stdout and "pydp-lab demo --json" in h.stdout
