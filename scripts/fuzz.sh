#!/usr/bin/env bash
# Builds and runs the fuzz harnesses, each for a bounded time, on a working copy of its seed corpus.
#   scripts/fuzz.sh                         every harness, 30 s each (scripts/test.sh runs 20 s each)
#   scripts/fuzz.sh --seconds 3600          the long run: an hour each
#   scripts/fuzz.sh --seconds 120 classify rpc
#   scripts/fuzz.sh --runs 100000000 --seconds 7200 parse   stop at 1e8 executions (or 2 h, what comes first)
#   scripts/fuzz.sh --raw parse             the C harnesses without the structure-aware packet mutator
#   scripts/fuzz.sh --minimize parse        merge build/fuzz/parse/corpus into the seeds (libFuzzer -merge=1:
#                                           the seeds stay; the fewest inputs that add coverage join them)
# Harnesses:
#   parse     native/tests/fuzz_parse.c     the packet parser (libFuzzer, ASan, UBSan; fuzz_mutator.h mutates
#                                           Ethernet/VLAN/IPv4/IPv6/extension headers/L4 fields, not only bytes)
#   classify  native/tests/fuzz_classify.c  parse, cluster IP, flow table, Maglev, DSR rewrite (same)
#   carp      tests/fuzz/fuzz_carp.py       the CARP receive path (atheris)
#   rpc       tests/fuzz/fuzz_rpc.py        the RPC frame decoder and request validation (atheris)
#   config    tests/fuzz/fuzz_config.py     the TOML config loader (atheris)
#   flowsync  tests/fuzz/fuzz_flowsync.py   the flow-sync receiver: hello, framing, MAC, seq, payload, commands
#   http      tests/fuzz/fuzz_http.py       the HTTP API's inputs through the real aiohttp app, in-process
# Seeds: native/tests/corpus/<name> and tests/fuzz/corpus/<name>; what a run finds is kept in
# build/fuzz/<name>/corpus (new inputs) and build/fuzz/<name>/crash-* (an input that failed). Exit 1 on a crash;
# turn it into a regression test and add the input to the seed corpus. docs/operations.md (Fuzzing) has the
# figures of the last long campaign and how to run one.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds=30
runs=""
raw=0
minimize=0
all=(parse classify carp rpc config flowsync http)
names=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --seconds=*) seconds="${1#*=}"; shift ;;
        --runs) runs="$2"; shift 2 ;;
        --runs=*) runs="${1#*=}"; shift ;;
        --raw) raw=1; shift ;;
        --minimize) minimize=1; shift ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        parse|classify|carp|rpc|config|flowsync|http) names+=("$1"); shift ;;
        *) echo "fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "${#names[@]}" -gt 0 ] || names=("${all[@]}")
case "$seconds" in ''|*[!0-9]*) echo "fuzz.sh: --seconds needs a whole number" >&2; exit 2 ;; esac
case "$runs" in *[!0-9]*) echo "fuzz.sh: --runs needs a whole number" >&2; exit 2 ;; esac
# shellcheck source=env.sh
. "$here/scripts/env.sh"
py="$PYDP_PY"     # the Python pydp is installed in (scripts/env.sh); atheris comes with its test extra
out="$here/build/fuzz"
cflags=(-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -msse4.2
        -I"$here/native/include")
[ "$raw" = 0 ] || cflags+=(-DPYDP_FUZZ_RAW)      # no LLVMFuzzerCustomMutator: libFuzzer's byte mutations only

build_c() {    # name, sources...
    local name="$1"; shift
    clang "${cflags[@]}" "$@" -o "$out/$name/fuzz_$name"
}

failed=()
for name in "${names[@]}"; do
    mkdir -p "$out/$name/corpus"
    case "$name" in
        parse)
            build_c parse "$here/native/src/parse.c" "$here/native/tests/fuzz_parse.c"
            cmd=("$out/$name/fuzz_parse"); seeds="$here/native/tests/corpus/parse" ;;
        classify)
            build_c classify "$here"/native/src/{parse,hash,maglev,flow,dsr,shm,verdict}.c "$here/native/tests/fuzz_classify.c"
            cmd=("$out/$name/fuzz_classify"); seeds="$here/native/tests/corpus/classify" ;;
        *)
            if ! "$py" -c "import atheris" 2>/dev/null; then
                echo "[fuzz] $name FAILED: atheris is missing for $py (pip install '.[test]')"
                failed+=("$name"); continue
            fi
            # -P: the installed package is what runs (the source tree lacks the compiled module)
            cmd=("$py" -P "$here/tests/fuzz/fuzz_$name.py")
            [ "$minimize" = 0 ] || cmd=("$here/tests/fuzz/fuzz_$name.py")      # what -merge=1 runs again
            seeds="$here/tests/fuzz/corpus/$name" ;;
    esac
    if [ "$minimize" = 1 ]; then
        # libFuzzer -merge=1 into the seed directory: the seeds stay, the inputs of the run that add coverage join
        # them (the smallest such set). The merge re-runs the harness by its path: the Python ones are executable
        # (#!/usr/bin/env -S python3 -P), found with the venv's python first on PATH.
        before="$(ls "$seeds" | wc -l)"
        if PATH="$PYDP_PREFIX/bin:$PATH" "${cmd[@]}" -merge=1 -rss_limit_mb=2048 -timeout=10 "$seeds" \
                "$out/$name/corpus" > "$out/$name/merge.log" 2>&1; then
            echo "[fuzz] $name: $(( $(ls "$seeds" | wc -l) - before )) inputs added to the seeds," \
                "now $(ls "$seeds" | wc -l) files, $(du -sh "$seeds" | cut -f1)"
        else
            tail -20 "$out/$name/merge.log"; failed+=("$name")
        fi
        continue
    fi
    echo "[fuzz] $name: ${seconds} s${runs:+ or $runs runs}"
    # new inputs go to the first directory only: the seeds in the repository stay as they are
    if ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}" \
            "${cmd[@]}" -max_total_time="$seconds" ${runs:+-runs="$runs"} -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 \
            -artifact_prefix="$out/$name/" "$out/$name/corpus" "$seeds" > "$out/$name/log" 2>&1; then
        # the last status line has the coverage: cov (edges) and ft (features) at the end
        { grep -E "^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE)" "$out/$name/log" | tail -1 \
              | grep -oE "cov: [0-9]+ ft: [0-9]+"; grep -E "^Done|stat::new_units_added" "$out/$name/log"; } \
            | tr '\n' ' ' || true
        echo
    else
        tail -40 "$out/$name/log"
        echo "[fuzz] $name FAILED: the input is $(ls -t "$out/$name"/crash-* "$out/$name"/timeout-* \
            "$out/$name"/oom-* 2>/dev/null | head -1)"
        failed+=("$name")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "[fuzz] crashes in: ${failed[*]} (logs in $out/<name>/log)"
    exit 1
fi
