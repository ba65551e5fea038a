#!/usr/bin/env bash
# Run the bpf and e2e suites on Debian 12's 6.1 kernel in a throw-away VM
# (make vm-test). The guest is virtme-ng: QEMU boots the stock Debian image
# with this machine's root shared read-only and the project read-write, so
# the guest uses the same venv, bcc and headers as the host. Exits with
# pytest's code. Run as root.
#
#   VM_KVM=1          use KVM (default off: software emulation, which works
#                     wherever QEMU does; a paravirtual /dev/kvm may not boot
#                     a stock kernel)
#   VM_MEM=2G VM_CPUS=2
#   VM_TESTS="tests/bpf tests/e2e"   what pytest runs in the guest
#   PYTEST_ARGS=...   passed to pytest after VM_TESTS (split on spaces)
#   VM_K=EXPR         pytest -k EXPR, kept whole (spaces and all)
#   VM_CACHE=.cache/vm  where the kernel image is downloaded and unpacked
#   MCR_TEST_TIMEOUT_SCALE=10  how much slower the guest is taken to be: the
#                     e2e waits grow and the streams' rates shrink by it
#
# The kernel's ABI and version are those of the installed
# linux-headers-6.1.0-*-amd64 package, so the headers bcc compiles against
# match the running guest kernel exactly.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}

# -- inside the guest ---------------------------------------------------------
if [ "${1:-}" = --in-guest ]; then
    shift
    # Everything below runs as root in the guest, whose /run, /tmp, /etc and
    # /var are throw-away overlays: nothing reaches the host but the project
    # directory (pytest's cache, test artefacts).
    echo "vm-test: guest kernel $(uname -r), $(nproc) CPU(s), $(awk '/MemTotal/ {print int($2/1024) " MiB"}' /proc/meminfo)"
    mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
    modprobe veth
    [ -n "${VM_CI:-}" ] && export CI=$VM_CI
    # The CLI package is the directory cli/, imported as mcr_xdp_cli: name it
    # so on PYTHONPATH too, or the guest would run the checkout the venv's
    # editable install points at (see guest_env below).
    mkdir -p /tmp/vm-test-path
    ln -sfn "$ROOT/cli" /tmp/vm-test-path/mcr_xdp_cli
    export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}/tmp/vm-test-path
    # Software emulation is ~20x slower: the e2e waits scale with this.
    export MCR_TEST_TIMEOUT_SCALE=${MCR_TEST_TIMEOUT_SCALE:-10}
    # shellcheck disable=SC2086 # VM_TESTS and PYTEST_ARGS are word lists
    exec "$VENV/bin/python" -m pytest ${VM_TESTS} ${PYTEST_ARGS:-} ${VM_K:+-k "$VM_K"}
fi

# -- on the host --------------------------------------------------------------
HOST_PACKAGES=(qemu-system-x86 busybox-static kmod udev file)
CACHE=${VM_CACHE:-$ROOT/.cache/vm}
VM_TESTS=${VM_TESTS:-tests/bpf tests/e2e}

log() { printf 'vm-test: %s\n' "$*" >&2; }
# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh
die() { log "$*"; exit 2; }

[ "$(id -u)" -eq 0 ] || die "needs root (apt-get, BPF in the guest): run 'sudo make vm-test'"
[ -x "$VENV/bin/python" ] || die "no venv at $VENV: run 'sudo make setup' first"
VENV=$(cd "$VENV" && pwd)

# QEMU and what virtme-ng's guest init needs (without udev the guest's exit
# code is always 255). Installed here, not by setup.sh, so that a plain setup
# stays lean.
install_missing "${HOST_PACKAGES[@]}"
if [ ! -x "$VENV/bin/vng" ]; then
    # The project's `vm` extra (pyproject.toml), by name: `pip install -e
    # .[vm]` would point the venv's editable install at this checkout, and
    # a VENV shared with another checkout (a worktree's runs) would then run
    # this one's code there.
    log "installing virtme-ng into $VENV (the project's 'vm' extra)"
    "$VENV/bin/python" -m pip install -q 'virtme-ng>=1.42'
fi

# The newest installed 6.1 headers name the kernel to boot.
read -r hdr_pkg version < <(
    dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\n' 'linux-headers-6.1.0-*-amd64' 2>/dev/null \
        | awk '$1 == "ii" {print $2, $3}' | sort -V -k1,1 | tail -n 1
) || true
[ -n "${hdr_pkg:-}" ] || die "no linux-headers-6.1.0-*-amd64 installed: run 'sudo make setup' on Debian 12"
kver=${hdr_pkg#linux-headers-}
headers=/usr/src/linux-headers-$kver
[ -d "$headers/include" ] || die "$hdr_pkg is installed but $headers/include is missing"

tree=$CACHE/linux-image-$kver-$version
if [ ! -e "$tree/.unpacked" ]; then
    img_pkg=linux-image-$kver
    mkdir -p "$CACHE/debs"
    deb=$(ls "$CACHE/debs/${img_pkg}_${version}_amd64.deb" 2>/dev/null || true)
    if [ -z "$deb" ]; then
        log "downloading $img_pkg=$version (pinned to $hdr_pkg)"
        # The sandbox user _apt cannot write into root's work tree.
        dl() { (cd "$CACHE/debs" && apt-get download -q -o APT::Sandbox::User=root "$img_pkg=$version"); }
        dl || { apt-get update -q && dl; } \
            || die "cannot download $img_pkg=$version; if Debian has moved on, upgrade the headers: apt-get install linux-headers-amd64"
        deb=$CACHE/debs/${img_pkg}_${version}_amd64.deb
    fi
    log "unpacking $(basename "$deb")"
    rm -rf "$tree" "$tree.tmp"
    dpkg-deb -x "$deb" "$tree.tmp"
    # bcc compiles against /lib/modules/$(uname -r)/build in the guest, and
    # the guest's /lib/modules/<ver> is this tree's: point it at the host's
    # headers of the same version (the guest sees the host root read-only).
    ln -sfn "$headers" "$tree.tmp/lib/modules/$kver/build"
    common=/usr/src/linux-headers-${kver%-amd64}-common
    [ -d "$common" ] && ln -sfn "$common" "$tree.tmp/lib/modules/$kver/source"
    touch "$tree.tmp/.unpacked"
    mv "$tree.tmp" "$tree"
fi

kvm=(--disable-kvm) accel="software emulation"
if [ "${VM_KVM:-0}" = 1 ]; then kvm=() accel=KVM; fi
# PYTHONPATH: the guest runs this tree's code (a git worktree too), not
# whatever checkout the venv's editable install points at.
guest_env=(PYTHONPATH="$ROOT" VENV="$VENV" VM_TESTS="$VM_TESTS" PYTEST_ARGS="${PYTEST_ARGS:-}" VM_K="${VM_K:-}"
           VM_CI="${CI:-}")
[ -n "${MCR_TEST_TIMEOUT_SCALE:-}" ] && guest_env+=(MCR_TEST_TIMEOUT_SCALE="$MCR_TEST_TIMEOUT_SCALE")
log "booting $kver ($version) under $accel, ${VM_MEM:-2G}, ${VM_CPUS:-2} CPUs; running pytest $VM_TESTS ${PYTEST_ARGS:-}"
start=$SECONDS
rc=0
# vng finds its helpers (virtme-run) on PATH. The guest command is one
# string for the guest's shell: quote each word for it. QEMU reopens
# /proc/self/fd/1 and /2 for the guest's console, which truncates them when
# they are files (`make vm-test >log 2>&1` would lose what came before): so
# its output goes through a pipe.
PATH="$VENV/bin:$PATH" vng "${kvm[@]}" --force-9p \
    -m "${VM_MEM:-2G}" -p "${VM_CPUS:-2}" \
    --rwdir "$ROOT" --cwd "$ROOT" \
    --run "$tree/boot/vmlinuz-$kver" \
    -- "$(printf '%q ' env "${guest_env[@]}" bash "$ROOT/scripts/vm-test.sh" --in-guest)" \
    </dev/null 2>&1 | cat || rc=${PIPESTATUS[0]}
log "pytest in the $kver guest exited $rc after $((SECONDS - start)) s (boot included)"
exit "$rc"
