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
# make for the VMs (vagrant/), which run this script before make exists;
# the next four for tests/packaging: it lints the shell scripts, runs
# `vagrant validate` offline with the libvirt provider and verifies the unit;
# ffmpeg for the tests' real MPEG-TS streams (tests/e2e/test_health.py).
PACKAGES=(python3-bpfcc python3-venv python3-pip "$HEADERS" iproute2 ethtool kmod tmux
          make shellcheck vagrant vagrant-libvirt systemd ffmpeg)

log() { printf 'setup: %s\n' "$*"; }
# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: needs root (apt-get, /lib/modules, bpffs): run 'sudo make setup'" >&2
    exit 1
fi

install_missing "${PACKAGES[@]}"

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
if ! "$VENV/bin/python" -c 'import mcr_xdp_cli, typer, rich, pyroute2, pytest, scapy' 2>/dev/null \
   || [ pyproject.toml -nt "$VENV/.installed" ]; then
    log "installing mcr-xdp into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    touch "$VENV/.installed"
fi
"$VENV/bin/python" -c 'import bcc' || { echo "setup: bcc is not importable from $VENV" >&2; exit 1; }
log "ready: $VENV/bin/mcr-xdp"
