#!/usr/bin/env bash
# The README's main job: run a capture of mixed client traffic through the real fast path and report what it
# decided (per-edge shares, exception path, drops, DSR check). Run scripts/setup.sh first.
set -euo pipefail
exec "${PYTHON:-python3}" -P -m pydp.demo "$@"
