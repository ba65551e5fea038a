# shellcheck shell=bash
# Helpers shared by the project's shell scripts (sourced, not run; the
# callers set the same options).
set -euo pipefail

# install_missing PKG...: apt-get install the Debian packages not installed
# yet; nothing (and no apt-get update) when all are there. Callers define
# log() for the message.
install_missing() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}
