#!/usr/bin/env bash
# Sets up this machine for pydp (idempotent, as root): OS packages, hugepages and the hugetlbfs mount, and pydp
# itself in a virtual environment at a fixed prefix (built with CMake through pip), its programs linked onto PATH
# with their man pages and bash completion.
#   scripts/setup.sh                              everything: /opt/pydp, made with Debian's /usr/bin/python3
#   PYTHON=~/.pyenv/shims/python3 scripts/setup.sh   the venv is made with another Python (>= 3.11)
#   PYDP_PREFIX=/tmp/p PYDP_LINKS= scripts/setup.sh  another prefix, nothing linked (tests, development)
#   PYTHON=/work/venvs/me/bin/python scripts/setup.sh  install into that existing venv (a developer's own)
#   PYDP_EXTRAS=lab scripts/setup.sh              extras installed with pydp (default lab,test; "" = none)
#   PYDP_HUGEPAGES=512 scripts/setup.sh           reserve another number of 2 MiB pages (default 1024)
# The variables are described in scripts/env.sh; docs/install.md is the reference.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=env.sh
. "$here/scripts/env.sh"
say() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (it installs packages and reserves hugepages)" >&2
    exit 1
fi

# --- OS packages ---------------------------------------------------------------------------------------------
pkgs=(libdpdk-dev dpdk-dev pkg-config cmake ninja-build gcc clang libclang-rt-14-dev libpcap-dev
      iproute2 iputils-ping ucarp bird2 nginx-light openssl tcpdump curl procps psmisc kmod ethtool
      systemd e2fsprogs util-linux dpdk-doc python3 python3-venv python3-dev prometheus bash-completion man-db
      chromium chromium-driver fonts-dejavu-core)     # the admin page's browser tests (tests/web, Selenium)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing OS packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps the Debian nginx and bird2 packages from starting servers of their own (pydp-control runs
    # its own BIRD, with its own socket and config under /run/pydp: docs/bgp.md)
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
else
    say "OS packages present"
fi

# Debian's bird2 enables a bird.service of its own (/etc/bird/bird.conf, listening on port 179): pydp-control runs
# BIRD itself for the [bgp] section, so the packaged service is disabled and stopped where systemd runs.
if [ -d /run/systemd/system ] && systemctl is-enabled bird.service >/dev/null 2>&1; then
    say "disabling Debian's bird.service (pydp-control runs its own BIRD: docs/bgp.md)"
    systemctl disable --now bird.service >/dev/null 2>&1 || say "warning: could not disable bird.service"
fi

# --- hugepages -----------------------------------------------------------------------------------------------
want="${PYDP_HUGEPAGES:-1024}"
have="$(cat /proc/sys/vm/nr_hugepages)"
if [ "$have" -lt "$want" ]; then
    say "reserving $want hugepages of 2 MiB (had $have)"
    echo "$want" > /proc/sys/vm/nr_hugepages
    got="$(cat /proc/sys/vm/nr_hugepages)"
    [ "$got" -ge "$want" ] || say "warning: only $got hugepages could be reserved"
fi
mkdir -p /dev/hugepages
if ! grep -qs ' /dev/hugepages hugetlbfs ' /proc/mounts; then
    say "mounting hugetlbfs on /dev/hugepages"
    mount -t hugetlbfs nodev /dev/hugepages
fi

# --- pydp in its virtual environment -----------------------------------------------------------------------------
programs=(pydp-dataplane pydp-control pydpctl pydp-carp pydp-bootstrap pydp-lab pydp-demo)
extras="${PYDP_EXTRAS-lab,test}"
if [ "$PYDP_DEV_VENV" = 1 ]; then
    say "installing into the virtual environment of PYTHON=$PYTHON: $PYDP_PREFIX"
else
    command -v "$PYDP_BASE_PYTHON" >/dev/null || { echo "setup.sh: PYTHON=$PYDP_BASE_PYTHON: no such interpreter" >&2; exit 1; }
    base_ver="$("$PYDP_BASE_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    "$PYDP_BASE_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "setup.sh: pydp needs Python >= 3.11; $PYDP_BASE_PYTHON is $base_ver (set PYTHON=)" >&2; exit 1; }
    have_ver="$("$PYDP_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
    if [ -d "$PYDP_PREFIX" ] && [ ! -f "$PYDP_PREFIX/pyvenv.cfg" ] && [ -n "$(ls -A "$PYDP_PREFIX")" ]; then
        # never --clear a directory that is not a virtual environment
        echo "setup.sh: PYDP_PREFIX=$PYDP_PREFIX exists and is not a virtual environment: choose another prefix" >&2
        exit 1
    fi
    if [ "$have_ver" != "$base_ver" ]; then
        # none yet, broken, or made by another Python version: (re)made, pydp is reinstalled below
        say "creating the virtual environment $PYDP_PREFIX with $PYDP_BASE_PYTHON (Python $base_ver)"
        mkdir -p "$(dirname "$PYDP_PREFIX")"
        "$PYDP_BASE_PYTHON" -m venv --clear "$PYDP_PREFIX" \
            || { echo "setup.sh: $PYDP_BASE_PYTHON -m venv failed (Debian: apt install python3-venv)" >&2; exit 1; }
    fi
fi
spec="$here"
[ -z "$extras" ] || spec="$here[$extras]"
say "installing pydp${extras:+ [$extras]} with $("$PYDP_PY" --version) into $PYDP_PREFIX"
"$PYDP_PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$spec"
"$PYDP_PY" -P -c 'import pydp, pydp._ffi' || { echo "setup.sh: the installed pydp does not import" >&2; exit 1; }

# man pages and bash completion, generated from the programs' own argparse definitions (control/docgen.py)
share="$PYDP_PREFIX/share"
"$PYDP_PY" -P -m control.docgen --man "$share/man/man1" --completion "$share/bash-completion/completions/pydp"
for p in "${programs[@]}"; do
    ln -sfn pydp "$share/bash-completion/completions/$p"
done

if [ -n "$PYDP_LINKS" ]; then
    say "linking the programs into $PYDP_LINKS/bin, man pages and completion under $PYDP_LINKS/share"
    mkdir -p "$PYDP_LINKS/bin" "$PYDP_LINKS/share/man/man1" "$PYDP_LINKS/share/bash-completion/completions"
    for p in "${programs[@]}"; do
        ln -sfn "$PYDP_PREFIX/bin/$p" "$PYDP_LINKS/bin/$p"
        ln -sfn "$share/man/man1/$p.1" "$PYDP_LINKS/share/man/man1/$p.1"
        ln -sfn "$share/bash-completion/completions/pydp" "$PYDP_LINKS/share/bash-completion/completions/$p"
    done
fi
say "done: pydp $("$PYDP_PY" -P -c 'import pydp; print(pydp.__version__)') in $PYDP_PREFIX (python: $PYDP_PY)"
