"""pydp-control's own memory: glibc malloc settings, trimming, and a report an operator can ask for.

The daemon is a Python process with a handful of threads (the loop, the store worker, readers, the default
executor, the metrics server) and numpy temporaries of several MiB (flow-table scans for flow sync's refreshes and
resyncs). Left alone, glibc gives every thread its own malloc arena (up to 8 per CPU) and raises its mmap threshold
to the size of the largest block freed (up to 32 MiB), after which those temporaries are carved from the arenas'
heaps and their freed pages stay resident: the RSS grows in steps at each takeover and resync (issue 17's chaos run
measured 7.8 and 13.6 MiB over 50 rounds) although nothing is held. tune() fixes both at start (few arenas, a fixed
mmap threshold so big temporaries are mapped and unmapped whole) and trim() hands the free pages back after a big
job; the environment (MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_) still wins when set.

report() is what SIGUSR2 logs (event "memory"): VmRSS and its parts, the threads, and with PYDP_TRACEMALLOC=N
(set before the daemon starts; N frames per trace) the Python allocations that grew most since the last report.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import tracemalloc

ARENA_MAX = 2                    # malloc arenas (glibc's default: 8 x CPUs)
MMAP_THRESHOLD = 128 * 1024      # bytes; glibc's initial value, fixed (no dynamic raise)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8       # <malloc.h>
TOP = 15                         # allocation sites in a report

_libc = None
_lock = threading.Lock()
_last: dict[str, tuple[int, int]] | None = None     # the previous report's {line: (bytes, blocks)}


def _glibc():
    """The C library when it is glibc (mallopt, malloc_trim), else None (musl has neither)."""
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            lib.gnu_get_libc_version.restype = ctypes.c_char_p
            lib.gnu_get_libc_version()
            lib.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
            lib.malloc_trim.argtypes = (ctypes.c_size_t,)
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def tune(environ=os.environ) -> dict[str, int]:
    """Sets the arena limit and a fixed mmap threshold, each unless its MALLOC_* variable is set (glibc read that
    at start). Call it before any thread starts (an arena, once made, stays). Returns what it set."""
    lib = _glibc()
    done: dict[str, int] = {}
    if lib is None:
        return done
    if "MALLOC_ARENA_MAX" not in environ and lib.mallopt(M_ARENA_MAX, ARENA_MAX) == 1:
        done["arena_max"] = ARENA_MAX
    if "MALLOC_MMAP_THRESHOLD_" not in environ and lib.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1:
        done["mmap_threshold"] = MMAP_THRESHOLD
    return done


def trim() -> bool:
    """Gives the free pages of every malloc arena back to the kernel (malloc_trim(0)). True when some were."""
    lib = _glibc()
    return bool(lib.malloc_trim(0)) if lib is not None else False


def status(pid: int | str = "self") -> dict[str, int]:
    """The memory lines of /proc/PID/status in KiB (VmRSS, RssAnon, RssFile, RssShmem, VmHWM, ...) and Threads."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key.startswith(("Vm", "Rss")) or key == "Threads":
                out[key] = int(val.split()[0])
    return out


def start_tracing(environ=os.environ) -> int:
    """Starts tracemalloc when PYDP_TRACEMALLOC is a positive number of frames; returns it (0: not traced)."""
    try:
        frames = int(environ.get("PYDP_TRACEMALLOC", "0") or 0)
    except ValueError:
        frames = 0
    if frames > 0 and not tracemalloc.is_tracing():
        tracemalloc.start(frames)
    return frames if tracemalloc.is_tracing() else 0


def report(top: int = TOP) -> dict:
    """RSS and its parts, the threads by name, Python's allocated blocks, and when traced the allocation sites
    that grew most since the previous report (the first report compares with an empty snapshot)."""
    global _last
    st = status()
    out: dict = {"rss_kib": st.get("VmRSS", 0), "anon_kib": st.get("RssAnon", 0),
                 "file_kib": st.get("RssFile", 0), "shmem_kib": st.get("RssShmem", 0),
                 "peak_kib": st.get("VmHWM", 0), "threads": sorted(t.name for t in threading.enumerate())}
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot().filter_traces((
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")))
        # only the totals by source line are kept for the next report, not the snapshot (all the traces: many MiB)
        now = {f"{s.traceback[0].filename}:{s.traceback[0].lineno}": (s.size, s.count)
               for s in snap.statistics("lineno")}
        del snap
        with _lock:
            prev, _last = _last, now
        cur, peak = tracemalloc.get_traced_memory()
        out["traced_kib"], out["traced_peak_kib"] = cur // 1024, peak // 1024
        prev = prev or {}
        rows = []
        for where in now.keys() | prev.keys():
            size, count = now.get(where, (0, 0))
            psize, pcount = prev.get(where, (0, 0))
            rows.append((abs(size - psize), size, count, size - psize, count - pcount, where))
        rows.sort(reverse=True)
        out["growth"] = [{"where": where, "kib": round(size / 1024, 1), "diff_kib": round(dsize / 1024, 1),
                          "blocks": count, "diff_blocks": dcount}
                         for _, size, count, dsize, dcount, where in rows[:top]]
        trim()                   # the snapshot's pages (it was big) back to the kernel
    return out
