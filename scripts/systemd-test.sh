#!/usr/bin/env bash
# Boot a Debian 12 root file system under its own systemd with systemd-nspawn
# and run one command inside it: the service under a real systemd
# (tests/packaging/test_systemd_boot.py). Run as root.
#
#   systemd-test.sh --deb FILE [--rebuild] [--build-only] [--] CMD [ARG...]
#
# The root file system is built once with mmdebstrap from Debian packages:
# systemd and the Depends of the package FILE (not the package itself: the
# command installs it, with apt, and the dependencies it finds are Debian's),
# and cached as a directory under $SB_CACHE; it is rebuilt only when what goes
# into it changes (package list, apt sources, the customizations below). FILE
# is at /deb/ inside. Each boot
# runs on a throw-away overlay (--volatile=overlay: the cache is the read-only
# lower layer, the writes go to a tmpfs), so the cache stays clean and several
# boots may share it at once.
#
# CMD runs inside the container's namespaces (nsenter into its PID 1) as root
# with the host's privileges, like an administrator's shell: it drives the
# container's systemd with systemctl, journalctl, systemd-run. What systemd
# starts (the services) runs with the container's limits instead: the
# capability bounding set and seccomp filter nspawn gives it. The exit code is
# CMD's.
#
#   SB_CACHE=.cache/systemd  where the root file system is cached
#   SB_NSPAWN_ARGS="..."   more systemd-nspawn options, split on spaces (e.g.
#                          --bind-ro=/work/main:/src)
#   SB_BOOT_TIMEOUT=60     seconds to wait for the boot to finish
#   SB_CONSOLE_LOG=FILE    keep the container's console output there (else it
#                          is shown only when something fails)
set -euo pipefail

cd "$(dirname "$0")/.."
CACHE=${SB_CACHE:-$PWD/.cache/systemd}
BOOT_TIMEOUT=${SB_BOOT_TIMEOUT:-60}
SUITE=bookworm
VARIANT=minbase
# The system; the package's own Depends are added below.
PACKAGES=(systemd systemd-sysv dbus procps apt ethtool)

log() { printf 'systemd-boot: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

rebuild=0 build_only=0 deb=''
while [ $# -gt 0 ]; do
    case $1 in
        --deb) deb=${2:-}; shift 2 ;;
        --rebuild) rebuild=1; shift ;;
        --build-only) build_only=1; shift ;;
        --) shift; break ;;
        -*) die "unknown option $1" ;;
        *) break ;;
    esac
done
if [ -z "$deb" ] || { [ "$build_only" = 0 ] && [ $# -eq 0 ]; }; then
    die "usage: $0 --deb FILE [--rebuild] [--build-only] [--] CMD [ARG...]"
fi
[ -f "$deb" ] || die "no package at $deb"
deb=$(realpath "$deb")
[ "$(id -u)" -eq 0 ] || die "needs root"
# The first alternative of each dependency, without versions (python3:any is
# python3); the versions are apt's to check when the command installs it.
depends=$(dpkg-deb --field "$deb" Depends)
mapfile -t -O ${#PACKAGES[@]} PACKAGES < <(
    tr ',' '\n' <<<"$depends" | sed -E 's/\|.*//; s/\(.*\)//; s/:any//; s/[[:space:]]//g' | grep -v '^$'
)

missing=()
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    # Without recommends: systemd-container would pull in libnss-mymachines,
    # which edits the host's /etc/nsswitch.conf.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# -- the root file system -------------------------------------------------------
# The host's Debian sources (same mirror, same snapshot if it pins one).
sources=/etc/apt/sources.list.d/debian.sources
[ -f "$sources" ] || sources=http://deb.debian.org/debian

# The customize hook, run by mmdebstrap with the new root as $1.
# - bcc compiles against /lib/modules/$(uname -r)/build; the container runs the
#   host's kernel, for which Debian has no headers: point build (and source)
#   at the newest 6.1 headers in the tree, for whatever kernel boots it
#   (tmpfiles' %v is the running kernel's release).
# - systemd mounts the bpffs at /sys/fs/bpf on a host but not in a container,
#   and refuses a .mount unit for it ("API file system"): a oneshot service
#   mounts it, on the mount point nspawn's --tmpfs=/sys/fs/bpf makes (the
#   container's /sys is a read-only tmpfs without /sys/fs/bpf).
read -r -d '' CUSTOMIZE <<'HOOK' || true
set -eu
root=$1
build=$(cd "$root/usr/src" && ls -d linux-headers-*-amd64 | sort -V | tail -n 1)
common=${build%-amd64}-common
cat >"$root/etc/tmpfiles.d/kernel-headers.conf" <<EOF
# bcc compiles against /lib/modules/\$(uname -r)/build (the host's kernel)
d /lib/modules/%v 0755 - - -
L+ /lib/modules/%v/build - - - - /usr/src/$build
L+ /lib/modules/%v/source - - - - /usr/src/$common
EOF
cat >"$root/etc/systemd/system/bpffs.service" <<EOF
[Unit]
Description=BPF file system on /sys/fs/bpf (a host's systemd mounts it, a container's does not)
DefaultDependencies=no
Before=sysinit.target
ConditionPathIsDirectory=/sys/fs/bpf

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'findmnt -n -t bpf /sys/fs/bpf >/dev/null || mount -t bpf -o mode=0700 bpf /sys/fs/bpf'

[Install]
WantedBy=sysinit.target
EOF
systemctl --root="$root" enable bpffs.service
echo debian12 >"$root/etc/hostname"
HOOK

key=$(
    {
        printf '%s\n' "$SUITE" "$VARIANT" "${PACKAGES[@]}" "$CUSTOMIZE"
        if [ -f "$sources" ]; then cat "$sources"; else echo "$sources"; fi
    } | sha256sum | cut -c1-16
)
rootfs=$CACHE/rootfs-$key
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
if [ "$rebuild" = 1 ] || [ ! -e "$rootfs/.complete" ]; then
    flock 9
    if [ "$rebuild" = 1 ] || [ ! -e "$rootfs/.complete" ]; then
        log "building $SUITE ($VARIANT + ${#PACKAGES[@]} packages) into $rootfs"
        t=$(now)
        rm -rf "$rootfs.tmp"
        packages=$(IFS=,; echo "${PACKAGES[*]}")
        mmdebstrap --quiet --variant="$VARIANT" --include="$packages" \
            --customize-hook="$CUSTOMIZE" \
            "$SUITE" "$rootfs.tmp" "$sources" >&2 \
            || { rm -rf "$rootfs.tmp"; die "mmdebstrap failed"; }
        touch "$rootfs.tmp/.complete"
        # Others may be booting an older tree: it is removed only when no boot
        # holds the lock (each boot takes it shared).
        rm -rf "$rootfs"
        mv "$rootfs.tmp" "$rootfs"
        for old in "$CACHE"/rootfs-*; do
            [ "$old" = "$rootfs" ] || rm -rf "$old"
        done
        log "built in $(since "$t") s, $(du -sh "$rootfs" | cut -f1)"
    fi
fi
[ "$build_only" = 1 ] && exit 0
# A shared lock while booting: a concurrent --rebuild waits for us.
flock -s 9

# -- boot -----------------------------------------------------------------------
name=sb-$$
work=$(mktemp -d /tmp/systemd-boot.XXXXXX)
console=${SB_CONSOLE_LOG:-$work/console.log}
nspawn_pid='' leader='' cmd_pid='' cgroups=()

# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    if [ -n "$cmd_pid" ]; then
        # Stop the command: signal nsenter's child, the command in the
        # container, and let nsenter reap it. Killing nsenter instead would
        # hand the command to a subreaper on the host (not the container's
        # PID 1), and the container's shutdown would wait 10 s for it.
        pkill -TERM -P "$cmd_pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$cmd_pid" 2>/dev/null || break
            sleep 0.1
        done
        pkill -KILL -P "$cmd_pid" 2>/dev/null || true
        wait "$cmd_pid" 2>/dev/null || true
    fi
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        # Orderly: the container's systemd powers off and nspawn exits. Then
        # the hard way: killing the container's PID 1 ends its PID namespace
        # (every process in it) and with it the network namespace and veths.
        if [ -n "$leader" ]; then
            timeout 5 nsenter -t "$leader" -a systemctl poweroff --no-block >/dev/null 2>&1 || true
        else
            kill -TERM "$nspawn_pid" 2>/dev/null || true
        fi
        for ((i = 0; i < 150; i++)); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$nspawn_pid" 2>/dev/null; then
            log "container did not power off within 15 s: killing it"
            if [ -n "$leader" ]; then kill -KILL "$leader" 2>/dev/null || true; fi
            sleep 1
            kill -KILL "$nspawn_pid" 2>/dev/null || true
        fi
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    if [ "$rc" -ne 0 ] && [ -z "${SB_CONSOLE_LOG:-}" ] && [ -s "$console" ]; then
        log "console output of the container:"
        tail -n 40 "$console" >&2
    fi
    # nspawn leaves its payload/ and supervisor/ cgroups behind: remove them,
    # deepest first, with ours.
    for cg in "${cgroups[@]}"; do
        if [ -d "$cg" ]; then find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
        if [ -d "$cg" ]; then log "cgroup $cg is still in use: left behind"; fi
    done
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

caps=CAP_BPF,CAP_PERFMON
nspawn=(systemd-nspawn --boot --directory="$rootfs" --machine="$name"
        --volatile=overlay
        # its own network namespace: only lo, the test makes its veths
        --private-network
        # bpf(): CAP_BPF and CAP_PERFMON (CAP_NET_ADMIN and CAP_SYS_ADMIN
        # nspawn gives anyway), and bpf in nspawn's seccomp allow list (without
        # it: EPERM whatever the capabilities); perf_event_open for tracepoint
        # programs (the relay's loss tracer)
        --capability="$caps" --system-call-filter="bpf perf_event_open"
        # the mount point of the bpffs that bpffs.service mounts
        --tmpfs=/sys/fs/bpf
        --bind-ro="$(dirname "$deb")":/deb
        --console=passive)
if [ -d /run/systemd/system ]; then
    # A systemd host: nspawn registers with machined and gets its own scope
    # (machinectl list, systemd-run -M work there).
    :
else
    # No systemd on the host (a container, a CI sandbox): no system bus to
    # register with or to ask for a scope. nspawn then splits the cgroup it
    # runs in into payload/ and supervisor/ and leaves both behind: run it in
    # a cgroup of its own, removed afterwards.
    nspawn+=(--register=no --keep-unit)
    while IFS=: read -r _ ctrl path; do
        mp=''
        if [ -z "$ctrl" ]; then
            mp=$(findmnt -n -o TARGET -t cgroup2 | head -n 1)
        elif [ "$ctrl" = name=systemd ]; then
            mp=$(findmnt -n -o TARGET,OPTIONS -t cgroup | awk '$2 ~ /name=systemd/ {print $1; exit}')
        fi
        [ -n "$mp" ] || continue
        cg=${mp}${path%/}/$name
        mkdir "$cg"
        cgroups+=("$cg")
    done </proc/self/cgroup
fi
# Debian 12 boots with the unified cgroup hierarchy: give the container that
# even on a hybrid (v1) host. Left to itself nspawn copies the host's layout.
export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=${SYSTEMD_NSPAWN_UNIFIED_HIERARCHY:-1}
# shellcheck disable=SC2206 # SB_NSPAWN_ARGS is a word list
nspawn+=(${SB_NSPAWN_ARGS:-})

t_boot=$(now)
(
    for cg in "${cgroups[@]}"; do echo "$BASHPID" >"$cg/cgroup.procs"; done
    exec env TERM=dumb "${nspawn[@]}"
) </dev/null >"$console" 2>&1 &
nspawn_pid=$!

# The container's PID 1 is nspawn's child once it runs systemd.
deadline=$((SECONDS + BOOT_TIMEOUT))
while :; do
    kill -0 "$nspawn_pid" 2>/dev/null || die "systemd-nspawn exited during boot"
    for pid in $(pgrep -P "$nspawn_pid" || true); do
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd ] && leader=$pid
    done
    [ -n "$leader" ] && break
    [ "$SECONDS" -lt "$deadline" ] || die "no systemd in the container after $BOOT_TIMEOUT s"
    sleep 0.1
done
# --default-signal: the command runs as a background job here, which would
# leave SIGINT and SIGQUIT ignored in it and everything it starts.
inside_argv=(nsenter -t "$leader" -a -- env -i "--default-signal=INT,QUIT"
             PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
             HOME=/root LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER=)
inside() { "${inside_argv[@]}" "$@"; }
# Until its D-Bus socket is up systemctl cannot even ask: retry until then.
state=''
while [ "$SECONDS" -lt "$deadline" ]; do
    state=$(inside timeout $((deadline - SECONDS)) systemctl is-system-running --wait 2>/dev/null) || true
    case $state in running|degraded) break ;; esac
    sleep 0.2
done
case $state in
    running) ;;
    degraded) log "booted degraded:"; inside systemctl --failed --no-pager >&2 || true ;;
    *) die "boot did not finish within $BOOT_TIMEOUT s (state: ${state:-unknown})" ;;
esac
log "booted $name ($state) in $(since "$t_boot") s; running: $*"

t_cmd=$(now)
# In the background: bash runs a trap only once the foreground command is
# done, but interrupts a wait. (<&0: not /dev/null, the default of a
# background command.)
"${inside_argv[@]}" "$@" <&0 &
cmd_pid=$!
rc=0
wait "$cmd_pid" || rc=$?
cmd_pid=''
log "command exited $rc after $(since "$t_cmd") s"

t_off=$(now)
inside timeout 5 systemctl poweroff --no-block >/dev/null 2>&1 || true
wait "$nspawn_pid" || log "systemd-nspawn exited $?"
nspawn_pid=''
log "powered off in $(since "$t_off") s; $(since "$t_boot") s in all"
exit "$rc"
