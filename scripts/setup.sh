#!/usr/bin/env bash
# Prepare this machine for mcr-xdp: Debian packages, kernel headers for bcc,
# bpffs, and the project's venv. Idempotent; run as root (make setup).
# vagrant/ provisions its VMs with this same script.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# Debian's linux-headers-amd64 follows its newest kernel; Ubuntu has no
# package of that name, and each of its kernels has its own headers package.
HEADERS=linux-headers-amd64
if grep -qx 'ID=ubuntu' /etc/os-release 2>/dev/null; then
    HEADERS=linux-headers-$(uname -r)
fi
# What a relay needs (make demo). A relay host installs the Debian package
# instead (make deb; docs/install.md), which depends on the same. Debian's
# pyroute2, rich and typer too, so that the venv (which sees the system's
# packages) runs on the very versions the package does, on every machine:
# pip installs from PyPI only what Debian does not have.
# clang and libbpf-dev build the datapath object a relay loads in a second
# instead of compiling it with bcc at each start (mcr_xdp/objfile.py), and
# the userspace workers' inner loop (mcr_xdp/fallback/native.py).
PACKAGES=(python3-bpfcc python3-venv python3-pip "$HEADERS" iproute2 ethtool kmod libbpf1
          python3-pyroute2 python3-rich python3-typer clang libbpf-dev)
# --dev: what the tests and builds need on top (make test): make for the VMs
# (vagrant/), which run this script before make exists; shellcheck, vagrant
# (`vagrant validate`, libvirt provider) and systemd (`systemd-analyze
# verify`) for tests/packaging; the Debian package's build tools and lintian
# (tests/packaging/test_deb.py); mmdebstrap and systemd-container to boot it
# under systemd (scripts/systemd-test.sh); ffmpeg for real MPEG-TS streams
# (tests/e2e/test_health.py); tmux for the live views' tests.
DEV_PACKAGES=(make shellcheck vagrant vagrant-libvirt systemd ffmpeg tmux man-db lintian
              dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
              python3-build python3-installer bash-completion git mmdebstrap systemd-container)
DEV=0
[ "${1:-}" = --dev ] && DEV=1

log() { printf 'setup: %s\n' "$*"; }
# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: needs root (apt-get, /lib/modules, bpffs): run 'sudo make setup'" >&2
    exit 1
fi

if [ "$DEV" = 1 ]; then
    install_missing "${PACKAGES[@]}" "${DEV_PACKAGES[@]}"
else
    install_missing "${PACKAGES[@]}"
fi

# bcc compiles against /lib/modules/$(uname -r)/build. Kernels that ship no
# headers of their own get Debian's newest linux-headers-*-amd64: the XDP
# UAPI the datapath uses is stable across versions.
release=$(uname -r)
moddir=/lib/modules/$release
# shellcheck disable=SC2012 # ls | sort -V on Debian's own directory names
if [ ! -e "$moddir/build/include" ]; then
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$hdr" ]; then
        echo "setup: no kernel headers under /usr/src after installing linux-headers-amd64" >&2
        exit 1
    fi
    log "linking $moddir/build -> $hdr"
    mkdir -p "$moddir"
    ln -sfn "$hdr" "$moddir/build"
    if [ ! -e "$moddir/source" ] && [ -n "$common" ]; then
        ln -sfn "$common" "$moddir/source"
    fi
fi

if ! mountpoint -q /sys/fs/bpf; then
    log "mounting bpffs on /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
fi
modprobe veth 2>/dev/null || true

if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV (with system site packages, for Debian's bcc)"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
# .installed: the relay's own dependencies; .installed-dev: the tests' too.
if [ "$DEV" = 1 ]; then
    spec='.[test]' marker=$VENV/.installed-dev imports=(mcr_xdp_cli typer rich pyroute2 pytest scapy)
else
    spec=. marker=$VENV/.installed imports=(mcr_xdp_cli typer rich pyroute2)
fi
if ! "$VENV/bin/python" -c "import $(IFS=,; echo "${imports[*]}")" 2>/dev/null || [ pyproject.toml -nt "$marker" ]; then
    log "installing $spec into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e "$spec"
    touch "$marker"
    if [ "$DEV" = 1 ]; then touch "$VENV/.installed"; fi  # the relay's part is in there too
fi
"$VENV/bin/python" -c 'import bcc' || { echo "setup: bcc is not importable from $VENV" >&2; exit 1; }
log "datapath object: $("$VENV/bin/python" -m mcr_xdp.objfile)"
log "userspace inner loop: $("$VENV/bin/python" -m mcr_xdp.fallback.native)"
log "ready: $VENV/bin/mcr-xdp"
