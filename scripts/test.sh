#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the whole test suite: the C unit tests (ctest, plain and under ASan/UBSan),
# the golden tests with the fast path under ASan/UBSan, every fuzz harness for a bounded time (scripts/fuzz.sh)
# and pytest
# (unit, golden packet tests through the real DPDK path, network-namespace tests).
# With CI=true (or PYDP_REQUIRE_DPDK=1) a DPDK, netns, root-only or browser test that would be skipped fails instead.
# pytest runs with the Python of the virtual environment setup.sh installed pydp into (PYDP_PREFIX, default
# /opt/pydp; PYTHON=/path/to/a/venv/bin/python uses that venv: scripts/env.sh), its programs first on PATH.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
# shellcheck source=env.sh
. "$here/scripts/env.sh"
"$here/scripts/setup.sh"
export PYTHON="$PYDP_PY"
export PATH="$PYDP_PREFIX/bin:$PATH"

if [ "${CI:-}" = "true" ]; then
    export PYDP_REQUIRE_DPDK=1
fi

echo "[test] C unit tests"
cmake -S "$here" -B "$here/build/ctest" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython3_EXECUTABLE="$PYTHON" >/dev/null
cmake --build "$here/build/ctest" >/dev/null
ctest --test-dir "$here/build/ctest" --output-on-failure

echo "[test] C unit tests under AddressSanitizer and UBSan"
cmake -S "$here" -B "$here/build/asan" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DPYDP_SANITIZE=ON -DPython3_EXECUTABLE="$PYTHON" >/dev/null
cmake --build "$here/build/asan" --target all >/dev/null
ASAN_OPTIONS=detect_leaks=1 ctest --test-dir "$here/build/asan" --output-on-failure

echo "[test] golden packet tests with the fast path under AddressSanitizer and UBSan"
# the pydp package with the sanitized cffi module of that build; pydp-dataplane loads it with the runtimes
# preloaded (tests/golden/harness.py, sanitized_env)
rm -rf "$here/build/asan-py" && mkdir -p "$here/build/asan-py/pydp"
cp "$here"/pydp/*.py "$here"/build/asan/_pydp*.so "$here/build/asan-py/pydp/"
PYDP_SANITIZED_PATH="$here/build/asan-py" "$PYTHON" -P -m pytest -p no:cacheprovider -q "$here/tests/golden"

echo "[test] fuzzing: parser, classify path, CARP codec, RPC decoder, config loader (30 s each)"
"$here/scripts/fuzz.sh" --seconds "${PYDP_FUZZ_SECONDS:-30}"

echo "[test] pytest"
# the installed package is what runs: python -P keeps the source tree off sys.path
exec "$PYTHON" -P -m pytest -p no:cacheprovider "$@"
