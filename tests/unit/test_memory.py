"""pydp-control's memory (control.memory): the malloc settings that stop the RSS from growing in steps at takeovers
and resyncs (issue 17's chaos run), and the SIGUSR2 report an operator reads (docs/operations.md)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest

from control import memory, rpc
from netlab import eventually

glibc = pytest.mark.skipif(memory._glibc() is None, reason="needs glibc (mallopt, malloc_trim, mallinfo2)")


def _run(code: str, env_extra: dict | None = None) -> dict:
    """code run in a fresh interpreter (malloc's settings are per process and sticky): its last stdout line, JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra or {})
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60,
                       env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


# a freed 8 MiB block raises glibc's dynamic mmap threshold to 8 MiB: a 1 MiB block after it then comes from the
# heap (mallinfo2's hblks counts the mmapped ones); with tune() the threshold is fixed and it is still mapped
MMAP_PROBE = """
    import ctypes, json, sys
    from control import memory
    tuned = memory.tune() if sys.argv[-1:] != ["untuned"] and TUNE else {}
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    class MI2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]
    libc.mallinfo2.restype = MI2
    libc.free(libc.malloc(8 << 20))
    before = libc.mallinfo2().hblks
    p = libc.malloc(1 << 20)
    after = libc.mallinfo2().hblks
    libc.free(p)
    print(json.dumps({"tuned": tuned, "mapped": after - before}))
"""


@glibc
def test_big_temporaries_stay_mapped_after_tune():
    plain = _run(MMAP_PROBE.replace("TUNE", "False"))
    tuned = _run(MMAP_PROBE.replace("TUNE", "True"))
    assert plain["mapped"] == 0, "glibc's dynamic threshold should have kept the block on the heap (the bug)"
    assert tuned["tuned"] == {"arena_max": memory.ARENA_MAX, "mmap_threshold": memory.MMAP_THRESHOLD}
    assert tuned["mapped"] == 1, "after tune() a 1 MiB block must be mmapped (unmapped whole when freed)"


# threads alive at once each get an arena (up to 8 per CPU): malloc_info lists them as <heap nr=...>
ARENA_PROBE = """
    import ctypes, json, re, tempfile, threading
    from control import memory
    tuned = memory.tune() if TUNE else {}
    libc = ctypes.CDLL("libc.so.6")
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
    libc.fclose.argtypes = (ctypes.c_void_p,)
    libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
    gate, hold = threading.Barrier(7), threading.Event()
    def work():
        keep = [bytearray(64 << 10) for _ in range(8)]     # malloc from this thread's arena
        gate.wait()
        hold.wait(30)
    ts = [threading.Thread(target=work) for _ in range(6)]
    for t in ts:
        t.start()
    gate.wait()
    with tempfile.NamedTemporaryFile("r") as f:
        fp = libc.fopen(f.name.encode(), b"w")
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        heaps = len(re.findall(r"<heap nr=", f.read()))
    hold.set()
    for t in ts:
        t.join()
    print(json.dumps({"tuned": tuned, "arenas": heaps}))
"""


@glibc
def test_threads_share_a_bounded_number_of_arenas_after_tune():
    if (os.cpu_count() or 1) * 8 < 3:
        pytest.skip("too few CPUs to tell")
    plain = _run(ARENA_PROBE.replace("TUNE", "False"))
    tuned = _run(ARENA_PROBE.replace("TUNE", "True"))
    assert plain["arenas"] > memory.ARENA_MAX, plain
    assert tuned["arenas"] <= memory.ARENA_MAX, tuned


@glibc
def test_the_environment_wins_over_tune():
    got = _run("""
        import json
        from control import memory
        print(json.dumps(memory.tune()))
    """, {"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "65536"})
    assert got == {}


def test_report_and_tracing():
    got = _run("""
        import json
        from control import memory
        frames = memory.start_tracing({"PYDP_TRACEMALLOC": "4"})
        first = memory.report()
        held = [bytes(1000) + bytes([i % 256]) for i in range(3000)]      # ~3 MiB held on this line
        second = memory.report()
        print(json.dumps({"frames": frames, "first": first, "second": second, "trimmed": memory.trim()}))
    """)
    assert got["frames"] == 4
    s = got["second"]
    for k in ("rss_kib", "anon_kib", "file_kib", "shmem_kib", "peak_kib", "traced_kib"):
        assert isinstance(s[k], int) and s[k] >= 0, k
    assert s["rss_kib"] > 0 and "MainThread" in s["threads"]
    top = s["growth"][0]
    assert top["where"] == "<string>:6" and top["diff_kib"] > 2500 and top["diff_blocks"] >= 3000, s["growth"]
    assert memory.start_tracing({"PYDP_TRACEMALLOC": "no"}) in (0, memory.start_tracing({}))


def test_sigusr2_logs_a_memory_report(tmp_path):
    """The operator's way in: PYDP_TRACEMALLOC=N pydp-control, kill -USR2 PID, the event "memory" in its log."""
    sock = str(tmp_path / "ctl.sock")
    log = tmp_path / "daemon.log"
    env = {**os.environ, "PYDP_TRACEMALLOC": "3"}
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-P", "-m", "control.daemon", "--db", str(tmp_path / "pydp.db"),
                                 "--socket", sock, "--shm", f"/dev/shm/pydp-none-{uuid.uuid4().hex[:8]}",
                                 "--metrics", "", "--http", "", "--log-format", "json"],
                                stdout=f, stderr=subprocess.STDOUT, env=env)

    def reports() -> list[dict]:
        out = []
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == "memory":
                out.append(rec)
        return out

    try:
        def up() -> bool:
            assert proc.poll() is None, "pydp-control exited:\n" + log.read_text()
            try:
                rpc.call(sock, "ping", timeout=1)
                return True
            except ConnectionError:
                return False

        eventually(up, 20, lambda: "pydp-control to answer:\n" + log.read_text())
        for n in (1, 2):
            proc.send_signal(signal.SIGUSR2)
            eventually(lambda: len(reports()) >= n, 10, lambda: "a memory event:\n" + log.read_text())
        first, second = reports()[:2]
        assert first["rss_kib"] > 0 and first["traced_kib"] > 0 and first["growth"], first
        assert any(t.startswith("pydp-") for t in second["threads"]), second["threads"]
        assert all({"where", "kib", "diff_kib", "blocks", "diff_blocks"} <= set(g) for g in second["growth"])
        assert proc.poll() is None, "SIGUSR2 must not stop the daemon"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
