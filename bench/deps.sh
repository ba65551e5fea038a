#!/usr/bin/env bash
# What the benchmarks need beyond `make setup`: the relays they compare
# (socat, smcroute), the profilers (bpftool, perf) and matplotlib for the
# plot. Idempotent; run as root (make bench / make bench-quick).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${1:-.venv}
REQUIRED=(socat smcroute)
OPTIONAL=(bpftool linux-perf)

log() { printf 'bench-deps: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "bench-deps: needs root (apt-get, namespaces, XDP): run 'sudo make bench'" >&2
    exit 1
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

missing=()
for pkg in "${REQUIRED[@]}" "${OPTIONAL[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get -o DPkg::Lock::Timeout=300 update -q
    # The profilers are a nicety: a mirror without them must not stop the benchmark.
    for pkg in "${missing[@]}"; do
        if ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
                --no-install-recommends "$pkg"; then
            case " ${REQUIRED[*]} " in
                *" $pkg "*) echo "bench-deps: could not install $pkg" >&2; exit 1 ;;
                *) log "could not install $pkg (optional: python -m bench profile needs it)" ;;
            esac
        fi
    done
fi
# A system smcrouted (the package's service) is left alone: the benchmark
# runs its own, under its own name and socket, inside its namespace.

if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    log "installing matplotlib into $VENV"
    "$VENV/bin/python" -m pip install -q -e '.[bench]'
fi
log "ready"
