#!/usr/bin/env bash
# The README's main job: build the virtual lab (two appliances, service edges with nginx, clients, all in network
# namespaces on this machine), run the story — spread, Direct Server Return, an edge failure, a drain, a takeover —
# print the report and remove the lab. Run scripts/setup.sh first; root. Arguments go to `pydp-lab demo`
# (--json FILE, --edges N, --clients N, --out DIR). The pcap run through the fast path is `pydp-demo`.
# The Python is the one of pydp's virtual environment (PYDP_PREFIX, default /opt/pydp: scripts/env.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=env.sh
. "$here/scripts/env.sh"
[ -x "$PYDP_PY" ] || { echo "demo.sh: no pydp in $PYDP_PREFIX: run scripts/setup.sh first" >&2; exit 1; }
export PATH="$PYDP_PREFIX/bin:$PATH"
exec "$PYDP_PY" -P -m control.lab.cli demo "$@"
