#!/usr/bin/env bash
# Build the Debian package (make deb): build/mcr-xdp_VERSION_ARCH.deb, with
# Debian's own tooling (debhelper, dh-python/pybuild) from the files git
# tracks, as they are in the work tree. Installs the build dependencies
# when missing (that part needs root).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${DEB_OUT:-$ROOT/build}
BUILD_DEPS=(dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
            python3-build python3-installer bash-completion git clang libbpf-dev)

log() { printf 'deb: %s\n' "$*" >&2; }
# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh

missing=()
for pkg in "${BUILD_DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || { log "missing build dependencies ${missing[*]}: run 'sudo make deb'"; exit 1; }
    install_missing "${missing[@]}"
fi

version=$(dpkg-parsechangelog -S Version)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=$work/mcr-xdp-$version
mkdir -p "$src"
# The tracked files only: no venv, caches or results in the package.
git ls-files -z | (cd "$ROOT" && xargs -0 cp --parents -t "$src" --)
log "building mcr-xdp $version in $src"
# Debian's python3 and tools, whatever python3 comes first on PATH here.
(cd "$src" && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || {
    tail -n 40 "$work/build.log" >&2
    log "dpkg-buildpackage failed (the lines above are the end of its log)"
    exit 1
}
mkdir -p "$OUT"
# The architecture's: the package holds the userspace workers' compiled
# inner loop (mcr_xdp/fallback/fastpath.c). Its -dbgsym companion stays behind.
deb=mcr-xdp_${version}_$(dpkg-architecture -qDEB_HOST_ARCH).deb
mv "$work/$deb" "$OUT/$deb"
log "built $OUT/$deb"
echo "$OUT/$deb"
