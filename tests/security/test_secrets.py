"""No shell is ever built from input, and the CARP passphrase stays out of logs (debug level included), the
process list, status and exports unless --include-secrets is given. (The live two-appliance check with CARP
running is tests/control/test_failover_live.py::test_i_passphrase_never_shown.)"""

import ast
import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from control import rpc
from netlab import ControlProcess

ROOT = Path(__file__).resolve().parents[2]
PASS = "Sec-" + uuid.uuid4().hex[:12]
SHELL_CALLS = {"system", "popen", "getoutput", "getstatusoutput", "create_subprocess_shell"}


def _python_files():
    for d in ("control", "pydp"):
        yield from sorted((ROOT / d).rglob("*.py"))
    yield from (ROOT / "tests" / "netlab.py", ROOT / "tests" / "failover_lab.py", ROOT / "tests" / "traffic.py")


def _shell_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        if name in SHELL_CALLS:
            found.append(f"{where}: {name}()")
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append(f"{where}: shell=")
    return found


def test_no_shell_built_from_input():
    """Commands are argument lists (execve), never strings a shell would parse: in the control plane, the
    launcher, the lab helpers and the bootstrap scripts."""
    found = [f for p in _python_files() for f in _shell_uses(p)]
    assert not found, "shell use: " + "; ".join(found)
    for script in sorted((ROOT / "scripts").glob("*.sh")):
        text = script.read_text()
        assert not re.search(r"^\s*eval\b|\bsh -c\b|\bbash -c\b", text, re.M), f"{script.name} runs a shell string"


def test_the_static_check_finds_shell_use(tmp_path):
    bad = ROOT / "control" / f"_tmp_shell_{uuid.uuid4().hex[:6]}.py"
    try:
        bad.write_text("import asyncio, os, subprocess\nos.system('ls ' + x)\nsubprocess.run(f'ip link {dev}', shell=True)\n"
                       "asyncio.create_subprocess_shell(cmd)\n")
        found = _shell_uses(bad)
    finally:
        bad.unlink()
    assert len(found) == 3, found


@pytest.fixture
def daemon(tmp_path):
    from control.http import auth
    users = str(tmp_path / "http-users")
    token, secret = auth.new_token()
    auth.set_entry(users, "robot", "admin", secret)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ControlProcess(None, tmp_path, tmp_path / "pydp.db", f"/dev/shm/pydp-sec-none-{uuid.uuid4().hex[:8]}",
                        metrics="", args=["--log-level", "debug", "--http", f"127.0.0.1:{port}",
                                          "--http-users", users]) as d:
        d.http = (f"http://127.0.0.1:{port}/api/v1/", {"Authorization": "Bearer " + token})
        yield d


def _pydpctl(d, *args, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-P", "-m", "control.cli", "--socket", d.socket, *args],
                       capture_output=True, text=True, timeout=30)
    assert not check or r.returncode == 0, r
    return r


def test_passphrase_kept_out_of_logs_ps_status_and_exports(daemon, tmp_path):
    key = tmp_path / "key"
    key.write_text(PASS + "\n")
    os.chmod(key, 0o600)
    _pydpctl(daemon, "cluster", "add", "web", "--cluster-ip", "198.51.100.10", "--edge", "e1=198.51.100.21",
             "--edge", "e2=198.51.100.22",
             "--vhid", "10", "--passphrase-file", str(key))
    _pydpctl(daemon, "cluster", "edit", "web", "--advskew", "20")
    texts = {
        "show": _pydpctl(daemon, "cluster", "show", "web", "--json").stdout,
        "status": _pydpctl(daemon, "status", "--json").stdout,
        "export": _pydpctl(daemon, "export", "-").stdout,
        "rpc status": repr(rpc.call(daemon.socket, "status")),
        "history": _pydpctl(daemon, "history", "--json").stdout,
        "ps": subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout,
        "cmdline": Path(f"/proc/{daemon.proc.pid}/cmdline").read_bytes().decode(errors="replace"),
    }
    out = tmp_path / "appliance.toml"
    _pydpctl(daemon, "export", str(out))
    texts["export file"] = out.read_text()
    import requests
    api, auth_header = daemon.http
    for path in ("clusters/web", "clusters", "status", "history", "ops"):
        r = requests.get(api + path, headers=auth_header, timeout=10)
        assert r.status_code == 200, r.text
        texts[f"HTTP {path}"] = r.text
    r = requests.get(api + "clusters/web", headers=auth_header, timeout=10)
    assert r.json()["carp"]["passphrase_set"] is True
    r = requests.patch(api + "clusters/web", headers={**auth_header, "If-Match": "*"}, timeout=10,
                       json={"carp": {"passphrase": PASS[::-1]}})
    assert r.status_code == 200 and PASS[::-1] not in r.text
    texts["HTTP history after a change over HTTP"] = requests.get(api + "history", headers=auth_header,
                                                                  timeout=10).text
    assert PASS[::-1] not in texts["HTTP history after a change over HTTP"]
    r = requests.patch(api + "clusters/web", headers={**auth_header, "If-Match": "*"}, timeout=10,
                       json={"carp": {"passphrase": PASS}})         # back, for the export below
    assert r.status_code == 200 and PASS not in r.text
    texts["daemon log (debug)"] = daemon.log.read_text()
    assert any('"level":"debug"' in line for line in texts["daemon log (debug)"].splitlines()) or \
        daemon.events("config_changed"), "the daemon logged nothing"
    for what, text in texts.items():
        assert text, what
        assert PASS not in text, f"the passphrase appears in {what}"
    assert "passphrase_set" in texts["show"]
    # asked for: there, in a file only root can read
    secret = tmp_path / "secret.toml"
    _pydpctl(daemon, "export", str(secret), "--include-secrets")
    assert f'passphrase = "{PASS}"' in secret.read_text()
    assert (secret.stat().st_mode & 0o077) == 0
    assert PASS not in daemon.log.read_text() and PASS[::-1] not in daemon.log.read_text()
