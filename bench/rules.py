"""python -m bench rules: how a relay copes with many rules, as users run it.

For each rule count, `mcr-xdp attach --config FILE` (native XDP, one input,
one output, one group per rule, joins on) is started on a namespace chain
and timed to its "relaying" line; then, with the largest count running,
rules are added and deleted one at a time over the control socket (the
client the CLI uses, in this process: the figure is the relay's handling
plus a local socket round trip, not a CLI start) and the relay's memory is
read: its resident set and the kernel memory of its BPF maps (the
`memlock` of each map in /proc/PID/fdinfo).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from mcr_xdp import control
from mcr_xdp.lab.netns import Chain, unique_prefix
from mcr_xdp.lab.proc import Proc, venv_bin


def group(i: int) -> str:
    """Rule i's group: 239.X.Y.Z, distinct for i < 2**24."""
    return f"239.{1 + (i >> 16)}.{(i >> 8) & 0xFF}.{i & 0xFF}"


def config(n: int, path: Path, socket: Path, join: str) -> None:
    rules = ",\n".join(f'    "{group(i)}:5001=out0"' for i in range(n))
    path.write_text(f'mode = "xdp-native"\ncontrol_socket = "{socket}"\n\n'
                    f'[inputs.in0]\njoin = "{join}"\nrules = [\n{rules},\n]\n')


def _memory(pid: int) -> dict:
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    memlock = 0
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue
        if "map_type:" in text:
            memlock += next((int(line.split()[1]) for line in text.splitlines() if line.startswith("memlock:")), 0)
    return {"rss_kib": rss, "bpf_maps_kib": memlock // 1024}


def _start(chain: Chain, n: int, workdir: Path, join: str, timeout: float) -> tuple[Proc, float, Path]:
    cfg, sock = workdir / f"relay-{n}.toml", workdir / f"relay-{n}.sock"
    config(n, cfg, sock, join)
    started = time.monotonic()
    proc = Proc(chain.popen(chain.relay_in.ns, venv_bin("mcr-xdp"), "attach", "--config", str(cfg)))
    proc.wait_for("relaying", timeout=timeout)
    return proc, time.monotonic() - started, sock


def _timed(op: str, args: dict, sock: Path) -> float:
    t = time.perf_counter()
    control.request(op, args, path=str(sock))
    return (time.perf_counter() - t) * 1000


def measure(counts: tuple[int, ...] = (1, 1000, 10_000), changes: int = 200, join: str = "rule") -> dict:
    chain = Chain(unique_prefix("mcrb")).build()
    out: dict = {"started": time.time(), "join": join, "start_s": {}, "counts": list(counts)}
    try:
        with tempfile.TemporaryDirectory(prefix="mcr-bench-rules-") as tmp:
            workdir = Path(tmp)
            for n in counts:
                proc, took, sock = _start(chain, n, workdir, join, timeout=120 + n / 100)
                out["start_s"][str(n)] = round(took, 3)
                if n != counts[-1]:
                    proc.stop()
                    continue
                try:
                    out["memory"] = _memory(proc.popen.pid)  # ip netns exec execs the relay: same pid
                    base = n + 1
                    adds, dels = [], []
                    for i in range(changes):
                        adds.append(_timed("rule.add", {"rules": [f"{group(base + i)}:5001=out0"]}, sock))
                    listed = control.request("rule.list", path=str(sock))
                    ids = [r["id"] for r in listed if r["rule"].endswith(":5001=out0")][-changes:]
                    for rule_id in ids:
                        dels.append(_timed("rule.del", {"id": rule_id}, sock))
                    out["rule_add_ms"] = _spread(adds)
                    out["rule_del_ms"] = _spread(dels)
                finally:
                    proc.stop()
    finally:
        chain.close()
    return out


def _spread(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"n": len(ms), "median": round(statistics.median(ms), 3), "p99": round(ms[int(0.99 * (len(ms) - 1))], 3),
            "max": round(ms[-1], 3)}


def render(doc: dict) -> str:
    lines = [f"Rule scale (native XDP, one group per rule, join = {doc['join']!r})", "",
             "| rules | start to \"relaying\" (s) |", "| ---: | ---: |"]
    lines += [f"| {int(n):,} | {s:.2f} |" for n, s in doc["start_s"].items()]
    n = doc["counts"][-1]
    if "rule_add_ms" in doc:
        add, dele = doc["rule_add_ms"], doc["rule_del_ms"]
        lines += ["", f"With {n:,} rules: `rule add` {add['median']:.2f} ms median, {add['p99']:.2f} ms p99 "
                      f"({add['n']} adds); `rule del` {dele['median']:.2f} ms median, {dele['p99']:.2f} ms p99 "
                      f"(control socket round trip included)."]
    if "memory" in doc:
        mem = doc["memory"]
        lines.append(f"Relay memory with {n:,} rules: {mem['rss_kib'] / 1024:.0f} MiB resident, "
                     f"{mem['bpf_maps_kib'] / 1024:.0f} MiB of BPF maps ({os.cpu_count()} CPUs).")
    return "\n".join(lines)
