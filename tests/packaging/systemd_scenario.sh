#!/usr/bin/env bash
# Runs inside a Debian 12 container booted under its own systemd
# (scripts/systemd-test.sh), as an operator would: the package FILE and an
# upgrade of it are in /deb. Prints "ok: STEP" per step passed and stops at
# the first failure with "FAIL: why" (tests/packaging/test_systemd_boot.py
# reads both).
set -euo pipefail
# Job control: a background job of a script ignores SIGINT otherwise, and
# the sender must stop on it (and print what it sent).
set -m

unit=mcr-xdp@relay
deb=$1 upgrade=$2 upgrade_version=$3
ok() { printf 'ok: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; journalctl -u "$unit" --no-pager -n 30 -o cat || true; exit 1; }
# The relay answers on its control socket: up, and done with its start.
answers() {
    local i
    for ((i = 0; i < 300; i++)); do
        mcr-xdp status --json >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}
main_pid() { systemctl show -P MainPID "$unit"; }
# replaced OLD: the pid of the process systemd started in OLD's place (30 s).
replaced() {
    local new
    for _ in $(seq 300); do
        new=$(main_pid)
        if [ "$new" != 0 ] && [ "$new" != "$1" ]; then echo "$new"; return 0; fi
        sleep 0.1
    done
    return 1
}

# -- install ---------------------------------------------------------------------
apt-get install -y -q "/deb/$deb" >/tmp/apt.log 2>&1 || { cat /tmp/apt.log; fail "apt-get install ./$deb"; }
[ "$(command -v mcr-xdp)" = /usr/bin/mcr-xdp ] || fail "mcr-xdp is not /usr/bin/mcr-xdp"
version=$(mcr-xdp --version)
{ [ -f /etc/mcr-xdp/relay.toml.example ] && [ -f /lib/systemd/system/mcr-xdp@.service ]; } || fail "files missing"
man -w mcr-xdp >/dev/null 2>&1 || [ -f /usr/share/man/man8/mcr-xdp.8.gz ] || fail "no man page"
# The userspace workers' compiled inner loop, as the package ships it (no compiler here).
python3 -c 'from mcr_xdp.fallback import native; assert native.load() is not None' 2>/dev/null \
    || fail "the package's userspace inner loop does not load"
ok "apt-get install ./$deb: $version"

# -- the network: sender and receiver each in a namespace of their own -----------
ip netns add src
ip netns add sink
ip link add in0 type veth peer name in0p netns src
ip link add out0 type veth peer name out0p netns sink
ip link set in0 up
ip link set out0 up
ip addr add 10.9.0.1/24 dev in0
ip addr add 10.9.1.1/24 dev out0
ip netns exec src ip link set in0p up
ip netns exec sink ip link set out0p up
ip netns exec src ip addr add 10.9.0.2/24 dev in0p
ip netns exec sink ip addr add 10.9.1.2/24 dev out0p
ip netns exec src ip route add 224.0.0.0/4 dev in0p
# A local sender on a veth with TX checksum offload sends partial checksums.
ip netns exec src ethtool -K in0p tx off >/dev/null

# stream GROUP PORT: start a receiver of GROUP:PORT and a sender of
# 239.1.1.1:5001 at 1000 packets/s; stream_end stops the sender and checks
# that every packet it sent arrived once, in order.
stream() {
    ip netns exec sink python3 -m mcr_xdp.lab.traffic recv --group "$1" --port "$2" --iface out0p \
        --count 1000000 --idle-timeout 2 --first-timeout 30 --timeout 900 >/tmp/recv.json 2>/tmp/recv.err &
    recv_pid=$!
    for _ in $(seq 100); do grep -q ready /tmp/recv.json 2>/dev/null && break; sleep 0.1; done
    ip netns exec src mcr-xdp gen --group 239.1.1.1 --port 5001 --iface in0p --rate 1000 --count "${3:-1000000}" \
        --ttl 8 --json >/tmp/gen.json 2>/dev/null &
    gen_pid=$!
}
stream_end() {
    kill -INT "$gen_pid" 2>/dev/null || true
    wait "$gen_pid" || true
    wait "$recv_pid" || fail "receiver: $(cat /tmp/recv.err)"
    python3 - "$1" <<'PY' || fail "stream ($1)"
import json, sys
sent = json.loads(open("/tmp/gen.json").read().splitlines()[-1])["sent"]
got = json.loads(open("/tmp/recv.json").read().splitlines()[-1])
print(f"  {sys.argv[1]}: sent {sent}, received {got['received']}, unique {got['unique']}, "
      f"duplicates {got['duplicates']}, out of order {got['out_of_order']}")
sys.exit(not (sent > 0 and got["unique"] == got["received"] == sent and got["out_of_order"] == 0))
PY
}

# -- enable --now ----------------------------------------------------------------
mkdir -p /etc/mcr-xdp
cat >/etc/mcr-xdp/relay.toml <<'TOML'
interval = 1
[inputs.in0]
rules = ["239.1.1.1:5001=out0/239.2.2.2:5002"]
TOML
mcr-xdp config check /etc/mcr-xdp/relay.toml >/dev/null || fail "config check"
systemctl enable --now "$unit" 2>/dev/null
answers || fail "the relay never answered on its control socket"
[ "$(systemctl is-enabled "$unit")" = enabled ] || fail "not enabled"
ip -d link show in0 | grep -q 'prog/xdp' || fail "no XDP program on in0"
stream 239.2.2.2 5002 500
sleep 0.6; while kill -0 "$gen_pid" 2>/dev/null; do sleep 0.1; done
stream_end "relayed"
ok "systemctl enable --now $unit: relayed"

# -- reload ----------------------------------------------------------------------
sed -i 's|239.2.2.2:5002|239.3.3.3:5003|' /etc/mcr-xdp/relay.toml
systemctl reload "$unit"
for _ in $(seq 100); do mcr-xdp rule list --json | grep -q 239.3.3.3 && break; sleep 0.1; done
mcr-xdp rule list --json | grep -q 239.3.3.3 || fail "the reload did not apply the changed file"
stream 239.3.3.3 5003 500
while kill -0 "$gen_pid" 2>/dev/null; do sleep 0.1; done
stream_end "after the reload"
ok "systemctl reload: the changed file applies"

# -- kill -9 of the main process, while a stream flows ---------------------------
stream 239.3.3.3 5003
sleep 1
old=$(main_pid)
kill -9 "$old"
new=$(replaced "$old") || fail "systemd did not start the relay again after kill -9"
answers || fail "the restarted relay never answered"
sleep 1
stream_end "across kill -9 and the restart"
[ "$(systemctl show -P NRestarts "$unit")" -ge 1 ] || fail "NRestarts"
journalctl -u "$unit" --no-pager -o cat | grep -qi "took over\|taken over\|takes over" || fail "no take-over line"
ok "kill -9 (pid $old): restarted as pid $new, took the programs over, nothing lost"

# -- upgrade, while a stream flows ------------------------------------------------
stream 239.3.3.3 5003
sleep 1
old=$(main_pid)
apt-get install -y -q "/deb/$upgrade" >/tmp/apt.log 2>&1 || { cat /tmp/apt.log; fail "apt-get install ./$upgrade"; }
new=$(replaced "$old") || fail "the upgrade did not restart the relay"
answers || fail "the upgraded relay never answered"
sleep 1
stream_end "across the upgrade"
[ "$(dpkg-query -W -f '${Version}' mcr-xdp)" = "$upgrade_version" ] || fail "$upgrade_version is not installed"
ok "upgrade to $upgrade: handed over (pid $old -> $new), nothing lost"

# -- the journal: levels ----------------------------------------------------------
journalctl -u "$unit" -o json --no-pager | python3 -c '
import json, sys
by = {}
for line in sys.stdin:
    e = json.loads(line)
    if e.get("_COMM") not in ("mcr-xdp", "python3") or not isinstance(e.get("MESSAGE"), str):
        continue
    m, p = e["MESSAGE"], int(e["PRIORITY"])
    assert not m.startswith("<"), f"a prefix journald did not take: {m!r}"
    kind = "error" if "error:" in m else "notice" if "notice:" in m else "counter" if m.startswith("forwarded ") else None
    if kind:
        by.setdefault(kind, set()).add(p)
print("  priorities:", {k: sorted(v) for k, v in by.items()})
assert by.get("counter") == {6}, by
assert by.get("notice") == {5}, by
assert all(v == {3} for k, v in by.items() if k == "error"), by
' || fail "journal priorities"
journalctl -u "$unit" -p notice --no-pager -o cat | grep -q "notice:" || fail "journalctl -p notice shows no notice"
ok "journalctl -u $unit: counter lines at info, notices at notice"

# -- stop ------------------------------------------------------------------------
systemctl stop "$unit"
[ "$(systemctl is-active "$unit" || true)" = inactive ] || fail "still active after stop"
! ip -d link show in0 | grep -q 'prog/xdp' || fail "XDP program left on in0"
! pgrep -f "mcr-xdp attach" >/dev/null || fail "a relay process is left"
[ -z "$(find /sys/fs/bpf -mindepth 1 -name 'mcr*' -print -quit)" ] || fail "pins left: $(find /sys/fs/bpf -name 'mcr*')"
[ -z "$(find /run/mcr-xdp -type s 2>/dev/null)" ] || fail "a socket is left in /run/mcr-xdp"
ok "systemctl stop: no process, program, pin or socket left"

# -- remove while running, purge -------------------------------------------------
systemctl start "$unit"
answers || fail "the relay did not start again"
apt-get remove -y -q mcr-xdp >/tmp/apt.log 2>&1 || { cat /tmp/apt.log; fail "apt-get remove"; }
! pgrep -f "mcr-xdp attach" >/dev/null || fail "apt-get remove left the relay running"
! ip -d link show in0 | grep -q 'prog/xdp' || fail "apt-get remove left the XDP program on in0"
{ [ ! -e /usr/bin/mcr-xdp ] && [ ! -e /usr/lib/python3/dist-packages/mcr_xdp ]; } || fail "files left after remove"
[ -f /etc/mcr-xdp/relay.toml ] || fail "remove took the configuration"
apt-get purge -y -q mcr-xdp >/tmp/apt.log 2>&1 || { cat /tmp/apt.log; fail "apt-get purge"; }
[ ! -e /etc/mcr-xdp ] || fail "/etc/mcr-xdp left after purge"
left=$(find / -xdev \( -path /proc -o -path /sys -o -path /deb -o -path /var/log/journal -o -path /var/lib/dpkg \
    -o -path /var/cache \) -prune -o \( -name '*mcr*xdp*' -o -name 'mcr_xdp*' \) -print)
[ -z "$left" ] || fail "left after purge: $left"
[ ! -e /run/mcr-xdp ] || fail "/run/mcr-xdp left after purge"
ok "apt-get remove stopped the relay; purge left nothing"

ip netns del src
ip netns del sink
