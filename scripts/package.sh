#!/usr/bin/env bash
# Builds the Debian package of the appliance: pydp in its virtual environment at /opt/pydp (made with Debian's
# /usr/bin/python3, no extras), the programs linked into /usr/bin, man pages, bash completion, the systemd units,
# the Prometheus rules and Grafana dashboard, /etc/default/pydp-control and the example config.
#   scripts/package.sh                 writes build/deb/pydp_<version>_<arch>.deb
#   scripts/package.sh --out DIR       writes it into DIR
# Install it with `apt install ./pydp_<version>_<arch>.deb` (docs/install.md). Needs dpkg-deb, the build tools of
# scripts/setup.sh (cmake, ninja, gcc, libdpdk-dev, python3-venv, python3-dev) and PyPI for the dependencies.
# The venv is built in a staging directory and its paths rewritten to /opt/pydp: nothing is written to /opt/pydp here.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$here/build/deb"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --out=*) out="${1#*=}"; shift ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "package.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
say() { printf '[package] %s\n' "$*"; }

prefix=/opt/pydp
py=/usr/bin/python3
for tool in dpkg-deb dpkg-architecture "$py"; do
    command -v "$tool" >/dev/null || { echo "package.sh: $tool is missing (apt install dpkg-dev python3-venv)" >&2; exit 1; }
done
version="$("$py" -c 'import re,sys; print(re.search(r"__version__ = \"([^\"]+)\"", open(sys.argv[1]).read())[1])' "$here/pydp/__init__.py")"
arch="$(dpkg --print-architecture)"
pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

work="$(mktemp -d "${TMPDIR:-/tmp}/pydp-package.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/root"
stage="$root$prefix"

say "building pydp $version in a venv (Python $pyver) staged for $prefix"
"$py" -m venv "$stage"
"$stage/bin/python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$here" \
    2> >(grep -v "^WARNING: Location" >&2)
"$stage/bin/python" -P -m control.docgen --man "$work/man" --completion "$work/pydp.bash"

# the venv as it will live at /opt/pydp: every absolute path of the staging directory rewritten
grep -rlIF "$stage" "$stage" | while read -r f; do
    sed -i "s|$stage|$prefix|g" "$f"
done
# byte code is compiled on the target (postinst), so tracebacks name /opt/pydp and removal leaves nothing behind
find "$stage" -name __pycache__ -type d -prune -exec rm -rf {} +
rm -f "$stage"/bin/Activate.ps1

programs=(pydp-dataplane pydp-control pydpctl pydp-carp pydp-bootstrap pydp-lab pydp-demo)
mkdir -p "$root/usr/bin" "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
         "$root/lib/systemd/system" "$root/etc/default" "$root/usr/share/doc/pydp/examples"
for p in "${programs[@]}"; do
    ln -s "$prefix/bin/$p" "$root/usr/bin/$p"
    gzip -9n < "$work/man/$p.1" > "$root/usr/share/man/man1/$p.1.gz"
    ln -s pydp "$root/usr/share/bash-completion/completions/$p"
done
install -m 0644 "$work/pydp.bash" "$root/usr/share/bash-completion/completions/pydp"
install -m 0644 "$here"/deploy/systemd/*.service "$root/lib/systemd/system/"
ln -s "$prefix/share/pydp" "$root/usr/share/pydp"        # prometheus/, grafana/, systemd/, examples/
install -m 0644 "$here/examples/appliance.toml" "$root/usr/share/doc/pydp/examples/appliance.toml"
install -m 0644 "$here/README.md" "$root/usr/share/doc/pydp/README.md"
cat > "$root/etc/default/pydp-control" <<'EOF'
# Settings of pydp-control.service (docs/install.md).
# Where Prometheus scrapes the metrics (HOST:PORT, [IPV6]:PORT; "" turns them off). Default: every address.
#PYDP_METRICS=[::]:9469
# More options for pydp-control (pydp-control --help), e.g. --carp-src 198.51.100.2
#PYDP_CONTROL_OPTS=
EOF

# Depends: the Debian packages that own the shared libraries the venv's compiled modules load (DPDK, libpcap, ...)
deps="$(find "$stage" -name '*.so*' -type f -exec ldd {} + 2>/dev/null | awk '/=> \//{print $3}' | sort -u \
        | while read -r lib; do dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib" 2>/dev/null || true; done \
        | cut -d: -f1 | sort -u | grep -v '^libc6$' | paste -sd, | sed 's/,/, /g')"
next_minor="$("$py" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')"
size="$(du -sk "$root" | cut -f1)"

mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<EOF
Package: pydp
Version: $version
Architecture: $arch
Maintainer: pydp developers <pydp@example.org>
Installed-Size: $size
Depends: python3 (>= $pyver), python3 (<< $next_minor), dpdk, libc6${deps:+, $deps}
Recommends: iproute2, pciutils, kmod, procps, udev
Suggests: prometheus
Section: net
Priority: optional
Homepage: https://example.org/pydp
Description: L4 load balancer on DPDK: Maglev hashing, Direct Server Return, CARP failover
 pydp spreads new flows over 2-16 service edges with Maglev hashing and forwards
 them by Direct Server Return from a DPDK fast path; pydp-control runs CARP
 failover, health checks, flow sync and Prometheus metrics, pydpctl manages
 clusters. pydp-bootstrap prepares the machine and enables the systemd units.
 The Python side lives in a virtual environment under /opt/pydp.
EOF
echo /etc/default/pydp-control > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    /opt/pydp/bin/python -m compileall -q /opt/pydp/lib >/dev/null 2>&1 || true
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        # an upgrade restarts what runs; a first install starts nothing (pydp-bootstrap configures and enables)
        if [ -n "$2" ]; then
            systemctl try-restart pydp-dataplane.service pydp-control.service || true
        fi
    fi
fi
exit 0
EOF
cat > "$root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop pydp-control.service pydp-dataplane.service || true
fi
# the byte code postinst compiled is not the package's: it goes before dpkg removes the directories
find /opt/pydp -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
exit 0
EOF
cat > "$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
    # the store of record and the appliance config (written by pydp-bootstrap) go only on purge
    rm -rf /var/lib/pydp /etc/pydp
fi
if [ "$1" = remove ] || [ "$1" = purge ]; then
    if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
fi
exit 0
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/pydp_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
say "built $deb ($(du -h "$deb" | cut -f1)); Depends: $(sed -n 's/^Depends: //p' "$root/DEBIAN/control")"
