"""Only root may drive pydp: the RPC socket and the shared-memory region refuse an unprivileged user, tried for
real as `nobody` (setpriv). The daemon also checks the peer's credentials (SO_PEERCRED), so a socket whose mode was
loosened by hand still refuses; the region attach refuses a region root did not make (its offsets are followed).

The unprivileged Python is the interpreter nobody can run; when nobody cannot read the installed packages (an
interpreter under /root), they are hard-linked (or copied) into a private directory that nobody can read."""

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from control import rpc
from pydp._ffi import ffi
from pydp.shm import Region, ShmError
from netlab import ControlProcess

pytestmark = pytest.mark.root          # chattr, mounts, commands run as nobody

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
MODULES = ("control", "pydp", "msgpack", "numpy", "numpy.libs", "cffi", "_cffi_backend")


def _nobody_python(extra_path: str = "") -> list[str]:
    env = ["env", f"PYTHONPATH={extra_path}"] if extra_path else []
    for exe in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run([*NOBODY, *env, exe, "-c", "import control.cli, pydp.shm"], capture_output=True,
                               cwd="/")
        if probe.returncode == 0:
            return [*env, exe]
    return []


@pytest.fixture(scope="module")
def nobody_py():
    """The command prefix that runs Python as nobody with pydp importable."""
    cmd = _nobody_python()
    if cmd:
        yield cmd
        return
    tree = tempfile.mkdtemp(prefix="pydp-nobody-")
    try:
        os.chmod(tree, 0o755)
        import importlib.util
        for name in MODULES:
            spec = importlib.util.find_spec(name.split(".")[0])
            origin = Path(spec.origin if name != "numpy.libs" else importlib.util.find_spec("numpy").origin)
            src = origin.parent if origin.name == "__init__.py" else origin
            if name == "numpy.libs":
                src = src.parent / "numpy.libs"
                if not src.exists():
                    continue
            dst = Path(tree) / src.name
            if subprocess.run(["cp", "-al", str(src), str(dst)], capture_output=True).returncode != 0:
                subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
        cmd = _nobody_python(tree)
        assert cmd, "no Python that nobody can run imports pydp"
        yield cmd
    finally:
        shutil.rmtree(tree, ignore_errors=True)


@pytest.fixture
def public_dir():
    """A directory nobody may enter (pytest's tmp_path is private to root)."""
    d = tempfile.mkdtemp(prefix="pydp-sec-")
    os.chmod(d, 0o755)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_nobody(prefix: list[str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*NOBODY, *prefix, *args], capture_output=True, text=True, timeout=timeout, cwd="/")


@pytest.fixture
def daemon(public_dir):
    db = public_dir / "pydp.db"
    with ControlProcess(None, public_dir, db, f"/dev/shm/pydp-sec-none-{uuid.uuid4().hex[:8]}",
                        metrics="") as d:
        yield d


RAW_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect:", e.strerror); sys.exit(3)
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
except (BrokenPipeError, ConnectionResetError):
    pass                    # the server may refuse and hang up before the request is written
buf = b""
while True:
    try:
        chunk = s.recv(65536)
    except ConnectionResetError:
        break
    if not chunk:
        break
    buf += chunk
print(buf.hex())
"""


def test_rpc_socket_refuses_nobody(daemon, nobody_py):
    st = os.stat(daemon.socket)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    nobody_uid = pwd.getpwnam("nobody").pw_uid

    # pydpctl as nobody: a clear error, no fall-back to some store file, exit status 1
    r = as_nobody(nobody_py, "-m", "control.cli", "--socket", daemon.socket, "cluster", "list")
    assert r.returncode != 0, r
    assert "permission denied" in r.stderr.lower() and "root" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr

    # the socket loosened by hand: the daemon itself refuses the peer (SO_PEERCRED), replies why and hangs up
    os.chmod(daemon.socket, 0o666)
    ping = rpc.frame(rpc.make_request(1, "ping")).hex()
    r = as_nobody(nobody_py, "-c", RAW_CLIENT, daemon.socket, ping)
    assert r.returncode == 0, r
    reply = rpc.decode(bytes.fromhex(r.stdout.strip())[4:])
    assert reply["ok"] is False and reply["error"]["type"] == "Unavailable", reply
    assert "permission denied" in reply["error"]["message"] and str(nobody_uid) in reply["error"]["message"]
    refused = daemon.events("rpc_refused")
    assert refused and refused[-1]["uid"] == nobody_uid and refused[-1]["level"] == "warning", refused
    # root still gets served, and the refusal is counted in the status
    assert rpc.call(daemon.socket, "ping")["daemon"] == "pydp-control"


def test_region_refuses_nobody(public_dir, nobody_py):
    path = f"/dev/shm/pydp-sec-{uuid.uuid4().hex[:8]}"
    region = Region.create(path, maglev_max=251, flow_capacity=1024)
    try:
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
        code = ("import sys\nfrom pydp.shm import Region, ShmError\n"
                "try:\n    Region.attach(sys.argv[1])\nexcept ShmError as e:\n    print(e); sys.exit(4)\n")
        r = as_nobody(nobody_py, "-c", code, path)
        assert r.returncode == 4, r
        assert "permission denied" in r.stdout and "root" in r.stdout, r.stdout
        Region.attach(path).close()                     # root attaches
    finally:
        region.close()
    assert not os.path.exists(path)


def _copy_region(src: Region, path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, bytes(ffi.buffer(src._shm.base, src._shm.size)))
    finally:
        os.close(fd)


def test_region_made_by_someone_else_is_refused():
    """A region planted by another user (or writable by others), or one whose offsets point elsewhere, is not
    attached: the control plane would follow its offsets as root."""
    path = f"/dev/shm/pydp-sec-{uuid.uuid4().hex[:8]}"
    region = Region.create(path, maglev_max=251, flow_capacity=1024)
    planted = path + ".planted"
    try:
        _copy_region(region, planted)
        Region.attach(planted).close()                  # an exact copy of root's own is fine
        nobody = pwd.getpwnam("nobody")
        os.chown(planted, nobody.pw_uid, nobody.pw_gid)
        with pytest.raises(ShmError, match=f"owned by uid {nobody.pw_uid}, not by root"):
            Region.attach(planted)
        os.chown(planted, 0, 0)
        os.chmod(planted, 0o666)
        with pytest.raises(ShmError, match="writable by group or others"):
            Region.attach(planted)
        os.chmod(planted, 0o600)
        off = ffi.offsetof("struct pydp_shm_header", "off_flows")
        fd = os.open(planted, os.O_RDWR)
        try:
            os.pwrite(fd, (1 << 40).to_bytes(8, "little"), off)
        finally:
            os.close(fd)
        with pytest.raises(ShmError, match="offsets do not match"):
            Region.attach(planted)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(planted)
        region.close()
