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


def start_relay(topo: Chain, *args: str, ready: str = "relaying") -> Proc:
    """`mcr-xdp attach ARGS` inside the relay namespace, once it relays."""
    proc = Proc(topo.popen(topo.relay_in.ns, mcr(), "attach", *args))
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


def relay_cli(topo: Chain, *args: str):
    """`mcr-xdp ARGS` inside the relay namespace (control socket commands)."""
    return topo.exec(topo.relay_in.ns, mcr(), *args, check=False)
