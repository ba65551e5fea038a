"""python -m bench profile: where the time of one relay goes.

Runs the generator flat out through one relay (default: mcr-xdp native,
64 B, the one-CPU layout) and reads, over the same window:
  - the kernel's per-program run time (kernel.bpf_stats_enabled), so the
    generator, the relay's programs and the sink each get ns per run;
  - a cpu-clock perf profile of the generator's CPU (where the rest goes:
    veth, page pool, redirect machinery), when perf is installed.
This VM exposes no hardware PMU, so `bpftool prog profile` (cycles,
instructions) cannot run here; run time and cpu-clock samples can.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from .plan import Plan
from .relays import NotAvailable
from .runner import GEN_CPU, WARMUP, Runner

STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


def _prog_stats() -> dict[int, dict]:
    out = subprocess.run(["bpftool", "--json", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {p["id"]: p for p in json.loads(out)}


def _perf_top(data: Path, limit: int = 25) -> list[tuple[float, str]]:
    text = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "sym",
                           "--percent-limit", "0.5"], capture_output=True, text=True).stdout
    rows = []
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0].endswith("%"):
            rows.append((float(parts[0][:-1]), parts[2].strip()))
    return rows[:limit]


def profile(relay_key: str = "mcr-xdp-native", layout: str = "default", size: int = 64, seconds: float = 3.0,
            streams: int = 1) -> dict:
    if not shutil.which("bpftool"):
        raise NotAvailable("bpftool is not installed (apt-get install bpftool)")
    runner = Runner(Plan("profile", ()))
    relay = runner.relays[relay_key]
    reason = relay.unavailable()
    if reason:
        raise NotAvailable(reason)
    result: dict = {"relay": relay_key, "label": relay.label, "layout": layout, "size": size, "streams": streams}
    with ExitStack() as stack:
        runner._build(stack)
        relay.start(runner.topo, streams)
        stack.callback(relay.stop)
        runner.set_layout(layout)
        stack.callback(runner.set_layout, "default")
        gen = runner.gen(size, streams)
        counter = relay.own_counter() or (lambda: runner.sink.count()[0])
        tmp = Path(tempfile.mkdtemp(prefix="mcr-bench-perf-"))
        stack.callback(shutil.rmtree, tmp, True)
        old = STATS_SYSCTL.read_text().strip()
        stack.callback(STATS_SYSCTL.write_text, old)
        gen.start(None)
        try:
            time.sleep(WARMUP)
            # Window 1, as measured: rate and a cpu-clock profile, no run-time stats.
            STATS_SYSCTL.write_text("0")
            a = (time.monotonic(), gen.sent(), counter())
            perf = None
            if shutil.which("perf"):
                perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "1999", "-C", str(GEN_CPU),
                                         "-o", str(tmp / "perf.data"), "--", "sleep", str(seconds)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(seconds)
            b = (time.monotonic(), gen.sent(), counter())
            if perf is not None:
                perf.wait(30)
            # Window 2: per-program run time. The stats read the clock twice per
            # program run, which on this VM (pvclock) slows everything down.
            STATS_SYSCTL.write_text("1")
            c_stats, c = _prog_stats(), (time.monotonic(), gen.sent(), counter())
            time.sleep(seconds)
            d_stats, d = _prog_stats(), (time.monotonic(), gen.sent(), counter())
        finally:
            gen.stop()
            STATS_SYSCTL.write_text(old)
        took, sent, delivered = b[0] - a[0], b[1] - a[1], b[2] - a[2]
        s_took, s_delivered = d[0] - c[0], d[2] - c[2]
        ours = {os.getpid(), *(p.popen.pid for p in relay.procs)}
        progs = []
        for pid, after in d_stats.items():
            before = c_stats.get(pid, {})
            runs = after.get("run_cnt", 0) - before.get("run_cnt", 0)
            if runs <= 0:
                continue
            ns = after.get("run_time_ns", 0) - before.get("run_time_ns", 0)
            owners = {o.get("pid") for o in after.get("pids", [])}
            if owners and not owners & ours:
                continue  # another process's program (tracepoints fire for everyone's traffic)
            progs.append({"id": pid, "name": after.get("name", "?"), "type": after.get("type", "?"), "runs": runs,
                          "runs_per_s": runs / s_took, "ns_per_run": ns / runs,
                          "ns_per_delivered": ns / s_delivered if s_delivered else None})
        progs.sort(key=lambda p: -(p["ns_per_delivered"] or 0))
        result.update({
            "seconds": took, "sent_pps": sent / took, "delivered_pps": delivered / took,
            "ns_per_delivered": took * 1e9 / delivered if delivered else None,
            "stats_delivered_pps": s_delivered / s_took, "programs": progs,
            "perf_top": _perf_top(tmp / "perf.data") if perf is not None else [],
        })
    return result


def render(p: dict) -> str:
    lines = [f"profile: {p['label']}, {p['layout']} layout, {p['size']} B, {p['streams']} stream(s), "
             f"{p['seconds']:.1f} s window",
             f"sent {p['sent_pps'] / 1e6:.3f} Mpps, delivered {p['delivered_pps'] / 1e6:.3f} Mpps: "
             f"{p['ns_per_delivered']:.0f} ns of the generator's CPU per delivered packet" if p["ns_per_delivered"]
             else "nothing delivered",
             "", f"BPF run time (kernel.bpf_stats_enabled, a second window: the stats' clock reads slow "
             f"the chain to {p['stats_delivered_pps'] / 1e6:.3f} Mpps and inflate each figure a little):", "",
             "| BPF program | type | runs/s | ns per run | ns per delivered packet |", "|---|---|---|---|---|"]
    for g in p["programs"]:
        per = "-" if g["ns_per_delivered"] is None else f"{g['ns_per_delivered']:.0f}"
        lines.append(f"| {g['name']} (id {g['id']}) | {g['type']} | {g['runs_per_s'] / 1e6:.2f} M "
                     f"| {g['ns_per_run']:.0f} | {per} |")
    if p["perf_top"]:
        lines += ["", f"cpu-clock samples on CPU {GEN_CPU} (perf, self time, symbols over 0.5%):", "",
                  "| share | symbol |", "|---|---|"]
        lines += [f"| {share:.1f}% | `{sym}` |" for share, sym in p["perf_top"]]
    return "\n".join(lines)
