#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the whole test suite: the C unit tests (ctest, plain and under ASan/UBSan),
# the golden tests with the fast path under ASan/UBSan, every fuzz harness for a bounded time (scripts/fuzz.sh)
# and pytest
# (unit, golden packet tests through the real DPDK path, network-namespace tests).
# With CI=true (or PYDP_REQUIRE_DPDK=1) a DPDK, netns, root-only or browser test that would be skipped fails instead.
#
# scripts/test.sh --quick [PYTEST ARGS]: the developer's edit-test loop. Runs tests/unit (everything that needs
# neither root nor DPDK nor namespaces) from the SOURCE TREE: no setup.sh (no apt, no hugepages, no pip install);
# the cffi module is built once with CMake into build/quick (rebuilt by ninja when native/ changes) and the tree
# goes on PYTHONPATH with it. Under a minute on the development machine.
#
# pytest runs with the Python of the virtual environment setup.sh installed pydp into (PYDP_PREFIX, default
# /opt/pydp; PYTHON=/path/to/a/venv/bin/python uses that venv: scripts/env.sh), its programs first on PATH.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
# shellcheck source=env.sh
. "$here/scripts/env.sh"

if [ "${1:-}" = "--quick" ]; then
    shift
    py="$PYDP_PY"                              # the installed venv has the test dependencies ...
    [ -x "$py" ] || py="${PYTHON:-python3}"    # ... else the Python given, or the first on PATH
    build="$here/build/quick"
    cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPYDP_BUILD_TESTS=OFF \
        -DPython3_EXECUTABLE="$(command -v "$py")" >/dev/null
    cmake --build "$build" --target _pydp >/dev/null
    # build/quick/py/pydp: the tree's pydp/*.py (symlinks, so edits count at once) and the module just built;
    # control/ comes from the tree itself (second on the path)
    rm -rf "$build/py" && mkdir -p "$build/py/pydp"
    ln -s "$here"/pydp/*.py "$build/py/pydp/"
    cp "$build"/_pydp*.so "$build/py/pydp/"
    export PYTHONPATH="$build/py:$here${PYTHONPATH:+:$PYTHONPATH}" PYDP_SOURCE_TREE=1
    # one pytest worker per CPU when pytest-xdist is there (setup.sh installs it; the unit tier is parallel-safe)
    jobs=()
    if "$py" -c 'import xdist' 2>/dev/null; then jobs=(-n "${PYDP_QUICK_JOBS:-auto}"); fi
    exec "$py" -P -m pytest -p no:cacheprovider -q "${jobs[@]}" "$here/tests/unit" "$@"
fi

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
PYDP_SANITIZED_PATH="$here/build/asan-py" "$PYTHON" -P -m pytest -p no:cacheprovider -q "$here/tests/golden/test_golden.py"

# 7 harnesses x 20 s: the same ~2.5 min the 5 harnesses x 30 s took before flowsync and http came
echo "[test] fuzzing: parser, classify path, CARP codec, RPC decoder, config loader, flow sync, HTTP API (${PYDP_FUZZ_SECONDS:-20} s each)"
"$here/scripts/fuzz.sh" --seconds "${PYDP_FUZZ_SECONDS:-20}"

echo "[test] pytest"
# the installed package is what runs: python -P keeps the source tree off sys.path
exec "$PYTHON" -P -m pytest -p no:cacheprovider "$@"
