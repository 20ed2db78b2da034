"""Where the performance harness lives: perf/ is run from the source tree (it is not installed)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PERF = ROOT / "perf"
TREX = PERF / "trex"
PROFILES = sorted(p.stem for p in TREX.glob("*.py") if p.stem not in ("compile", "pydp_trex"))

for path in (PERF, TREX):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
