#!/usr/bin/env bash
# The README's main job: build the virtual lab (two appliances, service edges with nginx, clients, all in network
# namespaces on this machine), run the story — spread, Direct Server Return, an edge failure, a drain, a takeover —
# print the report and remove the lab. Run scripts/setup.sh first; root. Arguments go to `pydp-lab demo`
# (--json FILE, --edges N, --clients N, --out DIR). The pcap run through the fast path is `pydp-demo`.
set -euo pipefail
exec "${PYTHON:-python3}" -P -m control.lab.cli demo "$@"
