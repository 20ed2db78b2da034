#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the whole test suite: the C unit tests (ctest) and pytest
# (unit, golden packet tests through the real DPDK path, network-namespace tests).
# With CI=true (or PYDP_REQUIRE_DPDK=1) a DPDK or netns test that would be skipped fails instead.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
"$here/scripts/setup.sh"

if [ "${CI:-}" = "true" ]; then
    export PYDP_REQUIRE_DPDK=1
fi

echo "[test] C unit tests"
cmake -S "$here" -B "$here/build/ctest" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$here/build/ctest" >/dev/null
ctest --test-dir "$here/build/ctest" --output-on-failure

echo "[test] C unit tests under AddressSanitizer and UBSan"
cmake -S "$here" -B "$here/build/asan" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DPYDP_SANITIZE=ON >/dev/null
cmake --build "$here/build/asan" --target all >/dev/null
ASAN_OPTIONS=detect_leaks=1 ctest --test-dir "$here/build/asan" --output-on-failure

echo "[test] fuzzing the packet parser (libFuzzer, ASan, UBSan; 20 s)"
# a copy of the seed corpus: libFuzzer adds what it finds to the directory it is given
rm -rf "$here/build/fuzz" && mkdir -p "$here/build/fuzz/corpus"
cp "$here"/native/tests/corpus/parse/* "$here/build/fuzz/corpus/"
clang -g -O1 -fsanitize=fuzzer,address,undefined -I"$here/native/include" \
    "$here/native/src/parse.c" "$here/native/tests/fuzz_parse.c" -o "$here/build/fuzz/fuzz_parse"
if ! "$here/build/fuzz/fuzz_parse" -max_total_time=20 -rss_limit_mb=1024 -artifact_prefix="$here/build/fuzz/" \
        "$here/build/fuzz/corpus" > "$here/build/fuzz/log" 2>&1; then
    tail -40 "$here/build/fuzz/log"
    echo "[test] the parser fuzzer found a crash: the input is in build/fuzz/ (add it to native/tests/corpus/parse)"
    exit 1
fi
grep -E "^Done" "$here/build/fuzz/log"

echo "[test] pytest"
# the installed package is what runs: python -P keeps the source tree off sys.path
exec "${PYTHON:-python3}" -P -m pytest -p no:cacheprovider "$@"
