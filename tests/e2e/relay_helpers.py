"""Helpers for end-to-end tests: run the real CLI and traffic tools inside a
namespace chain (see conftest.chain), each process registered for cleanup."""

from __future__ import annotations

import json
import os

from mcr_xdp.netns import Chain, Proc, venv_bin

# Slow hosts (a kernel under software emulation: make vm-test) scale every
# wait: a bcc compile there takes ~30 s instead of ~1 s.
SCALE = float(os.environ.get("MCR_TEST_TIMEOUT_SCALE", "1"))


def mcr() -> str:
    return venv_bin("mcr-xdp")


def start_relay(topo: Chain, *args: str, ready: str = "relaying", env: dict | None = None) -> Proc:
    """`mcr-xdp attach ARGS` inside the relay namespace, once it relays."""
    proc = Proc(topo.popen(topo.relay_in.ns, mcr(), "attach", *args, env=env))
    topo.procs.append(proc)
    proc.wait_for(ready, timeout=60 * SCALE)
    return proc


def start_receiver(topo: Chain, group: str, port: int, count: int, sink: int = 0, idle: float = 3.0,
                   streams: int = 1) -> Proc:
    proc = Proc(topo.python(topo.sink[sink].ns, "-m", "mcr_xdp.traffic", "recv", "--group", group, "--port",
                            str(port), "--iface", topo.sink[sink].name, "--count", str(count),
                            "--idle-timeout", str(idle), "--streams", str(streams)))
    topo.procs.append(proc)
    proc.wait_for("ready")
    return proc


def start_sender(topo: Chain, group: str, port: int, count: int, rate: float, size: int = 64, ttl: int = 16,
                 streams: int = 1, source: str | None = None, first_seq: int = 0) -> Proc:
    args = ["--first-seq", str(first_seq), "--group", group, "--port", str(port), "--iface", topo.src.name, "--count", str(count),
            "--rate", str(rate), "--size", str(size), "--ttl", str(ttl), "--streams", str(streams)]
    if source:
        args += ["--source", source]
    proc = Proc(topo.python(topo.src.ns, "-m", "mcr_xdp.traffic", "send", *args))
    topo.procs.append(proc)
    return proc


def send(topo: Chain, group: str, port: int, count: int, rate: float, size: int = 64, ttl: int = 16,
         streams: int = 1, source: str | None = None, first_seq: int = 0) -> dict:
    proc = start_sender(topo, group, port, count, rate, size, ttl, streams, source, first_seq)
    return json.loads(proc.wait_for('"sent"', timeout=(count / rate + 60) * SCALE))


def result(receiver: Proc) -> dict:
    return json.loads(receiver.wait_for('"received"', timeout=120 * SCALE))


def relay_streams(topo: Chain, streams: int, per_stream: int, *relay_args: str) -> dict[str, dict]:
    """streams concurrent streams at 2k pps each through a relay started
    with relay_args (one rule per stream, 239.10.0.x -> 239.20.0.x); the
    receiver's result per "group:port"."""
    import ipaddress

    in_first, out_first = ipaddress.ip_address("239.10.0.1"), ipaddress.ip_address("239.20.0.1")
    rules = []
    for i in range(streams):
        rules += ["--rule", f"{in_first + i}:5001={topo.OUT}/{out_first + i}:5002"]
    start_relay(topo, topo.IN, *rules, *relay_args)
    assert {str(in_first + i) for i in range(streams)} <= topo.igmp_groups(topo.relay_in.ns, topo.IN)
    receiver = start_receiver(topo, str(out_first), 5002, per_stream, streams=streams)
    send(topo, str(in_first), 5001, per_stream, rate=2000, streams=streams)
    got = result(receiver)
    if streams == 1:
        got = {f"{out_first}:5002": got}
    assert sorted(got) == sorted(f"{out_first + i}:5002" for i in range(streams))
    return got


def relay_cli(topo: Chain, *args: str):
    """`mcr-xdp ARGS` inside the relay namespace (control socket commands)."""
    return topo.exec(topo.relay_in.ns, mcr(), *args, check=False)
