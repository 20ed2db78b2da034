#!/usr/bin/env bash
# Sets up this machine for pydp (idempotent, as root): OS packages, hugepages and the hugetlbfs mount,
# the Python packages, and pydp itself (built with CMake through pip).
#   scripts/setup.sh            everything
#   PYDP_HUGEPAGES=512 scripts/setup.sh   reserve another number of 2 MiB pages (default 1024)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (it installs packages and reserves hugepages)" >&2
    exit 1
fi

# --- OS packages ---------------------------------------------------------------------------------------------
pkgs=(libdpdk-dev dpdk-dev pkg-config cmake ninja-build gcc clang libclang-rt-14-dev libpcap-dev
      iproute2 iputils-ping ucarp nginx-light openssl tcpdump curl procps psmisc kmod ethtool
      systemd e2fsprogs util-linux dpdk-doc
      chromium chromium-driver fonts-dejavu-core)     # the admin page's browser tests (tests/web, Selenium)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing OS packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps the Debian nginx package from starting a server of its own
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
else
    say "OS packages present"
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

# --- Python packages and pydp ----------------------------------------------------------------------------------
py="${PYTHON:-python3}"
say "installing pydp and its Python dependencies with $("$py" --version)"
"$py" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$here[test]"
"$py" -P -c 'import pydp, pydp._ffi; print("[setup] done: pydp", pydp.__version__)'
