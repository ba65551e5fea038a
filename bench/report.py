"""Turns the runner's results into what people read: the markdown table,
the targets of issue 6 as ratios measured in the same run, the JSON file
and the plot. Pure functions of the results, except write_* and plot."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .plan import LAYOUTS, MARGIN, NOISE_LIMIT

LAYOUT_SHORT = {"default": "1 CPU", "threaded": "own CPU"}


def fmt_pps(pps: float | None) -> str:
    if pps is None:
        return "-"
    if pps >= 1e6:
        return f"{pps / 1e6:.2f} M"
    if pps >= 1e3:
        return f"{pps / 1e3:.1f} k"
    return f"{pps:.0f}"


def _rate(r: dict) -> str:
    if r["rate"] == "flat":
        return "flat out"
    if r["rate"].startswith("c"):
        return f"{float(r['rate'][1:]):.2f} x ceiling"
    return f"{fmt_pps(float(r['rate']))}pps"


def _cpu(r: dict) -> str:
    s = r["summary"]
    if s.get("relay_cpu") is not None:
        return f"{s['relay_cpu'] * 100:.0f}%"
    return "in sender's softirq" if r["layout"] == "default" and r["relay"] != "ceiling" else "-"


def _ns_per_packet(r: dict, ceiling: float | None) -> str:
    """CPU the relay spends per delivered packet. Where its work has a CPU
    or process of its own, that CPU time over the packets; where it shares
    the generator's CPU (kernel relays, one-CPU layout, flat out), the
    extra time per packet over the ceiling on that saturated CPU."""
    s = r["summary"]
    if r["relay"] == "ceiling" or not s["delivered_pps"]:
        return "-"
    if s.get("relay_cpu") is not None:
        return f"{s['relay_cpu'] * 1e9 / s['delivered_pps']:.0f}"
    if r["layout"] == "default" and r["rate"] == "flat" and ceiling:
        return f"{1e9 / s['delivered_pps'] - 1e9 / ceiling:.0f} (over ceiling)"
    return "-"


def _others(s: dict) -> str:
    """CPU other processes used during the noisiest run of a point."""
    return "-" if s.get("other_cpu") is None else f"{s['other_cpu']:.2f}"


def _ceiling(results: list[dict], layout: str, size: int) -> float | None:
    for r in results:
        if (r["relay"] == "ceiling" and r["status"] == "ok" and r["rate"] == "flat" and r["layout"] == layout
                and r["size"] == size and r["streams"] == 1):
            return r["summary"]["delivered_pps"]
    return None


def table(results: list[dict]) -> str:
    head = ("| block | relay | layout | payload | streams | outputs | offered | delivered (median) | spread "
            "| loss | relay CPU | relay ns/pkt | x ceiling | others | CPUs busy | where lost |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if r["status"] == "check":
            c = r["check"]
            verdict = "every packet once, intact" if c.get("ok") else f"FAILED: {c}"
            lines.append(f"| integrity | {r['label']} | - | 256 B | 1 | {r['outputs']} | {c['sent']} pkts "
                         f"| {c.get('unique', '-')} pkts | - | {verdict} | - | - | - | - | - | - |")
            continue
        base = f"| {r['block']} | {r['label']} |"
        if r["status"] == "paired":
            p = r["summary"]
            how = f"{p['n']} swapped groups" if r.get("method", "").startswith("swapped") else f"{p['n']} repetitions"
            low, high = _interval(p)
            lines.append(f"{base} {LAYOUT_SHORT[r['layout']]} | {r['size']} B | {r['streams']} | {r['outputs']} "
                         f"| {_rate(r)} | {p['ratio']:.3f} x (paired, {how}) | {low:.3f}-{high:.3f} "
                         f"({_width(p) * 100:.1f}%{', 95% CI' if 'ci_low' in p else ''}) "
                         f"| - | - | - | - | - | - | - |")
            continue
        if r["status"] != "ok":
            lay = LAYOUT_SHORT.get(r.get("layout", ""), "-")
            size = f"{r['size']} B" if "size" in r else "-"
            lines.append(f"{base} {lay} | {size} | {r['streams']} | {r['outputs']} | - | not available: "
                         f"{r['reason']} | - | - | - | - | - | - | - | - |")
            continue
        s = r["summary"]
        ceil = _ceiling(results, r["layout"], r["size"])
        ratio = f"{s['delivered_pps'] / ceil:.2f}" if ceil and r["relay"] != "ceiling" and r["outputs"] == 1 else "-"
        offered = f"{_rate(r)} ({fmt_pps(s['offered_pps'])}pps)"
        if r.get("exact"):
            offered = f"{r['exact']} pkts at {fmt_pps(float(r['rate']))}pps"
        delivered = f"{fmt_pps(s['delivered_pps'])}pps"
        if r["outputs"] > 1:
            delivered += f" x {r['outputs']}"
        loss = f"{s['loss'] * 100:.2f}%"
        if s["loss_max"] != s["loss"]:
            loss += f" (max {s['loss_max'] * 100:.2f}%)"
        if r.get("exact"):
            loss += " exact" if s["exact_ok"] else " NOT exact"
        lines.append(f"{base} {LAYOUT_SHORT[r['layout']]} | {r['size']} B | {r['streams']} | {r['outputs']} "
                     f"| {offered} | {delivered} | {fmt_pps(s['min_pps'])}-{fmt_pps(s['max_pps'])} "
                     f"({s['spread'] * 100:.1f}%) | {loss} | {_cpu(r)} | {_ns_per_packet(r, ceil)} | {ratio} "
                     f"| {_others(s)} | {_busy(s)} | {_where_lost(r)} |")
    return "\n".join(lines)


def _where_lost(r: dict) -> str:
    """Where the lossiest run of a point lost frames, by the kernel's
    counters on the chain's veths; what they do not account for was lost
    inside the relay (a ring, a queue, a CPU that fell behind). Under
    0.01% is what was in flight at a timed window's edges: none."""
    s = r["summary"]
    missing = s.get("missing")
    if "drops" not in s or missing is None:
        return "-"
    if s["loss_max"] < 1e-4:
        return "none"
    drops = {k: v for k, v in s["drops"].items() if v}
    parts = [f"{k} {v:,}" for k, v in drops.items()]
    rest = missing - sum(drops.values())
    if rest > 0:
        parts.append(f"in the relay {rest:,}")
    return ", ".join(parts) or "-"


def _busy(s: dict) -> str:
    """Each CPU's busy share (median over runs). CPU 0 carries the
    generator, which spins between its batches, so it reads ~100% at any
    rate; a point is CPU-bound where its relay's CPU (1 in the own-CPU
    layout and for userspace relays) is near 100%, or, on one CPU, flat out."""
    busy = s.get("cpu_busy") or {}
    return ", ".join(f"{cpu}: {min(frac, 1.0) * 100:.0f}%" for cpu, frac in sorted(busy.items())) or "-"


def summary_table(results: list[dict]) -> str:
    """Flat-out delivered rate of every relay, one column per layout and
    payload size: the headline."""
    cols = sorted({(r["size"], r["layout"]) for r in results if r["status"] == "ok" and r["block"] == "relays"},
                  key=lambda c: (c[0], c[1] != "default"))
    relays = list(dict.fromkeys(r["relay"] for r in results if r["block"] == "relays"))
    labels = {r["relay"]: r["label"] for r in results}
    head = "| relay (flat out, 1 stream) | " + " | ".join(f"{size} B, {LAYOUT_SHORT[lay]}" for size, lay in cols) + " |"
    lines = [head, "|---|" + "---|" * len(cols)]
    for key in relays:
        cells = []
        na = next((r for r in results if r["relay"] == key and r["block"] == "relays" and r["status"] == "n/a"), None)
        for size, lay in cols:
            r = _find(results, key, lay, size, block="relays")
            if r is None:
                cells.append("n/a" if na else "-")
                continue
            s = r["summary"]
            cells.append(f"{fmt_pps(s['delivered_pps'])}pps" + (f", {s['loss'] * 100:.0f}% loss" if s["loss"] >= 0.005
                                                                 else ""))
        lines.append(f"| {labels[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _find(results, relay, layout="default", size=64, rate="flat", streams=1, outputs=1, block=None):
    for r in results:
        if (r["relay"] == relay and r.get("layout") == layout and r.get("size") == size and r.get("rate") == rate
                and r["streams"] == streams and r["outputs"] == outputs and r["status"] == "ok"
                and (block is None or r["block"] == block)):
            return r
    return None


def _peak(results, relay, layout, size):
    """The point where a relay delivered most (its saturation throughput):
    flat out is not always it, since a flood of input can starve a
    userspace relay (receive livelock)."""
    rows = [r for r in results if r["relay"] == relay and r.get("layout") == layout and r.get("size") == size
            and r["streams"] == 1 and r["outputs"] == 1 and r["status"] == "ok" and not r.get("exact")]
    return max(rows, key=lambda r: r["summary"]["delivered_pps"], default=None)


PAIRED_GOAL = 0.97  # issue 13: the full relay against a bare redirect, run for run
RULES_GOAL = 0.95  # issue 6 and 13: 1000 rules within 5% of one


def paired_verdict(p: dict, goal: float) -> bool | None:
    """Whether paired ratios meet a goal: yes or no when the median's 95%
    confidence interval is on one side of it (runs from before there was
    one: every ratio), else by the median when that interval is narrower
    than MARGIN; None (no verdict) otherwise."""
    low, high = _interval(p)
    if low >= goal or high < goal:
        return low >= goal
    return p["ratio"] >= goal if _width(p) <= MARGIN else None


def _interval(p: dict) -> tuple[float, float]:
    return p.get("ci_low", p["min"]), p.get("ci_high", p["max"])


def _width(p: dict) -> float:
    """The interval's width over the median: what the verdict's margin is held to."""
    low, high = _interval(p)
    return (high - low) / p["ratio"] if p["ratio"] else float("inf")


def _paired_note(r: dict) -> str:
    p = r["summary"]
    if r.get("method") == "swapped":
        how = f"programs swapped on the input, {p['n']} ABBA groups of {r['slice']:g} s slices"
    elif r.get("method") == "swapped-streams":
        how = f"generators swapped, {p['n']} ABBA groups of {r['slice']:g} s slices"
    else:
        how = f"paired ABAB runs, {p['n']} repetitions"
    low, high = _interval(p)
    ci = f"95% CI of the median {low:.3f}-{high:.3f} ({_width(p) * 100:.1f}%), " if "ci_low" in p else ""
    return f"{how}: {ci}ratios {p['min']:.3f}-{p['max']:.3f}"


def targets(results: list[dict]) -> list[dict]:
    """Issue 6's targets as measured ratios. Each: name, measured, target,
    met (None when a side was not measured), note."""
    out = []

    def pps(r):
        return r["summary"]["delivered_pps"] if r else None

    def add(name, num, den, target, note="", extra_ok=True):
        ratio = num / den if num and den else None
        met = None if ratio is None else (ratio >= target and extra_ok)
        out.append({"target": name, "measured": ratio, "goal": target, "met": met, "note": note})

    sizes = sorted({r["size"] for r in results if r.get("status") == "ok"})
    for layout, goal, frac in (("default", 0.85, "c0.85"), ("threaded", 0.95, "c0.95")):
        for size in sizes:
            native = _find(results, "mcr-xdp-native", layout, size)
            ceil = _find(results, "ceiling", layout, size)
            if not (native or ceil):
                continue
            at = _find(results, "mcr-xdp-native", layout, size, rate=frac)
            note, ok = "", True
            if at:
                loss = at["summary"]["loss_max"]
                ok = loss == 0
                note = (f"{frac[1:]} x ceiling asked, {fmt_pps(at['summary']['offered_pps'])}pps offered: "
                        f"{loss * 100:.3f}% loss (max of runs)")
            add(f"native / ceiling, {LAYOUT_SHORT[layout]}, {size} B (0.0% loss)", pps(native), pps(ceil), goal,
                note, ok)
    for size in sizes:
        for layout in ("default", "threaded"):
            native = _peak(results, "mcr-xdp-native", layout, size)
            for other, goal in (("socat", 6.0), ("smcroute", 2.2)):
                o = _peak(results, other, layout, size)
                if native and o:
                    add(f"native / {other}, {LAYOUT_SHORT[layout]}, {size} B", pps(native), pps(o), goal,
                        f"peak delivered rates: {fmt_pps(pps(native))}pps at {_rate(native)} vs "
                        f"{fmt_pps(pps(o))}pps at {_rate(o)}")
    for size in sizes:
        for layout in ("default", "threaded"):
            native = _find(results, "mcr-xdp-native", layout, size)
            bare = _find(results, "bare-redirect", layout, size)
            if native and bare:
                add(f"native / bare XDP redirect, {LAYOUT_SHORT[layout]}, {size} B", pps(native), pps(bare), 1.0,
                    "the issue: the full datapath must be leaner than a naive redirect")
    def beside(prefix: str) -> dict:
        """(layout, size) -> the paired row of a reference-like relay."""
        return {(r["layout"], r["size"]): r for r in results
                if r["status"] == "paired" and r["relay"].startswith(prefix)}

    references = {"rewrite-redirect/": "the floor, a rewrite and redirect with no lookup",
                  "bare-redirect-traced/": "a loss tracer on the bare redirect",
                  "bare-redirect#2/": "the control, the bare redirect against itself"}
    beside_rows = {prefix: beside(prefix) for prefix in references}
    for r in results:
        if r["status"] == "paired" and not r["relay"].startswith(tuple(references)):
            p = r["summary"]
            note = _paired_note(r)
            # KEY@N/KEY@1: more rules against one (issue 13: within 5%).
            goal = RULES_GOAL if "@" in r["relay"] else PAIRED_GOAL
            met = paired_verdict(p, goal)
            what = "the interval" if "ci_low" in p else "the spread"
            if met is None:
                note += f"; {what} exceeds the {MARGIN * 100:g}% margin and straddles the goal: no verdict"
            elif _width(p) > MARGIN:
                note += f" ({what} is over the {MARGIN * 100:g}% margin, but on one side of the goal)"
            if r.get("derived"):
                note += "; derived: each group's ratio times the traced bare redirect's of the same group"
            if "@" not in r["relay"]:  # the references pair with bare
                key = (r["layout"], r["size"])
                for prefix, name in references.items():
                    if row := beside_rows[prefix].get(key):
                        low, high = _interval(row["summary"])
                        note += f"; {name}, paired alike: {row['summary']['ratio']:.3f} ({low:.3f}-{high:.3f})"
            out.append({"target": f"{r['label']}, {LAYOUT_SHORT[r['layout']]}, {r['size']} B", "measured": p["ratio"],
                        "goal": goal, "met": met, "note": note})
    for size in sizes:
        one = _find(results, "mcr-xdp-native", "default", size)
        many = _find(results, "mcr-xdp-native", "default", size, streams=1000)
        if one and many:
            add(f"1000 rules / 1 rule, 1 CPU, {size} B", pps(many), pps(one), RULES_GOAL)
    userspace = _peak(results, "mcr-xdp-userspace", "default", 64)
    if userspace:
        add("userspace, 2 workers, peak / 300 kpps, 1 CPU, 64 B", pps(userspace), 300_000, 1.0,
            f"peak delivered rate {fmt_pps(pps(userspace))}pps at {_rate(userspace)}, "
            f"{userspace['summary']['loss'] * 100:.2f}% loss")
    for r in results:
        if r["status"] == "ok" and r.get("exact") == 9_000_000 and r["rate"] == "150000" and r["outputs"] == 1:
            run = r["runs"][0]  # delivered is counted at the sink: more than sent would be duplicates
            add(f"{r['label']}: 9,000,000 at 150 kpps, loss <= 0.1%, no duplicate", run["delivered"],
                run["expected"], 0.999, f"{run['delivered']:,} of {run['expected']:,} delivered",
                run["delivered"] <= run["expected"])
    fan = _find(results, "mcr-xdp-native", "default", 64, outputs=8)
    smc = _find(results, "smcroute", "default", 64)
    fan_na = [r for r in results if r["relay"] == "mcr-xdp-native" and r["outputs"] == 8 and r["status"] == "n/a"]
    if fan and smc:
        add("fan-out 1->8 copies / smcroute 1 output, 64 B", pps(fan) * 8, pps(smc), 2.0)
    elif fan_na:
        out.append({"target": "fan-out 1->8 copies / smcroute 1 output, 64 B", "measured": None, "goal": 2.0,
                    "met": None, "note": f"not available: {fan_na[0]['reason']}"})
    return out


def targets_table(rows: list[dict]) -> str:
    lines = ["| target | measured | goal | met |", "|---|---|---|---|"]
    for t in rows:
        m = "-" if t["measured"] is None else f"{t['measured']:.2f}"
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        if t["met"] is False and t["measured"] is not None and t["measured"] < t["goal"]:
            met += f" ({(t['measured'] / t['goal'] - 1) * 100:+.0f}%)"
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"| {t['target']}{note} | {m} | >= {t['goal']:g} | {met} |")
    return "\n".join(lines)


def machine() -> dict:
    def cmd(*args):
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    try:
        import bcc

        bcc_version = bcc.__version__
    except ImportError:
        bcc_version = ""
    root = Path(__file__).resolve().parent.parent
    rev = cmd("git", "-C", str(root), "rev-parse", "--short", "HEAD")
    dirty = bool(cmd("git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"))
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(mem_kb / 1e6, 1),
        "virtualization": cmd("systemd-detect-virt") or "unknown",
        "os": cmd("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"),
        "bcc": bcc_version,
        "socat": cmd("sh", "-c", "socat -V 2>/dev/null | sed -n 's/^socat version \\([^ ]*\\).*/\\1/p'"),
        "smcroute": cmd("sh", "-c", "smcrouted -v 2>&1 | head -n1"),
        "git": rev + ("-dirty" if dirty else ""),
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
    }


def document(meta: dict, results: list[dict]) -> dict:
    return {"meta": meta, "targets": targets(results), "results": results}


def write_json(doc: dict, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(doc["meta"]["started"]))
    path = directory / f"{doc['meta']['plan']}-{stamp}.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, "-m", "bench", *sys.argv[1:]])


def markdown(doc: dict) -> str:
    m = doc["meta"]
    mach = m["machine"]
    lines = [
        f"Plan `{m['plan']}`, {m['repeats']} runs of {m['seconds']:g} s per point, medians with min-max spread "
        f"(a run during which other processes used over {NOISE_LIMIT:g} CPU is repeated up to "
        f"{m.get('retries', 0)} time(s), the quietest kept; *others* = CPUs other processes used in the noisiest "
        f"run of a point); "
        f"started {time.strftime('%Y-%m-%d %H:%M', time.localtime(m['started']))}, took {m['duration']:.0f} s.",
        f"Machine: {mach['cpus']} vCPU {mach['cpu_model']}, {mach['memory_gb']} GB, {mach['os']}, "
        f"kernel {mach['kernel']}, bcc {mach['bcc']}, socat {mach['socat']}, {mach['smcroute']}, "
        f"git {mach['git']}, load average at start {' '.join(mach['loadavg_at_start'])}.",
        "Layouts: " + "; ".join(f"**{LAYOUT_SHORT[k]}** = {v}" for k, v in LAYOUTS.items()) + "; "
        + ("the sinks' receive work runs in the softirq the relay raises, on the relay's CPU."
           if m.get("sink_cpu", -1) < 0 else f"the sinks' NAPI is a kthread pinned to CPU {m['sink_cpu']}."),
        "",
        summary_table(doc["results"]),
        "",
        targets_table(doc["targets"]),
        "",
        "Every point:",
        "",
        table(doc["results"]),
    ]
    return "\n".join(lines)


class NoPlot(Exception):
    """Why a run has no plot (the message says)."""


def plot(doc: dict, path: Path) -> Path:
    """Delivered against offered rate, one panel per layout and payload
    size, one line per relay (log-log; the diagonal is zero loss). NoPlot
    without matplotlib or without a point to draw."""
    rows = [r for r in doc["results"] if r["status"] == "ok" and r["streams"] == 1 and r["outputs"] == 1
            and not r.get("exact") and "@" not in r["relay"]]
    panels = sorted({(r["layout"], r["size"]) for r in rows}, key=lambda p: (p[1], p[0] != "default"))
    if not panels:
        raise NoPlot("no point of one stream and one output at an offered rate (paired blocks have none)")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NoPlot("matplotlib is missing (pip install -e '.[bench]')") from None
    cols = min(2, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 4.8 * nrows), squeeze=False)
    relays = list(dict.fromkeys(r["label"] for r in rows))
    markers = "osD^v<>p*"
    for ax, (layout, size) in zip(axes.flat, panels, strict=False):
        lo, hi = float("inf"), 0.0
        for i, label in enumerate(relays):
            pts = sorted((r["summary"]["offered_pps"], r["summary"]["delivered_pps"], r["summary"]["min_pps"],
                          r["summary"]["max_pps"]) for r in rows
                         if r["label"] == label and r["layout"] == layout and r["size"] == size)
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
            ax.errorbar(xs, ys, yerr=err, marker=markers[i % len(markers)], capsize=3, label=label)
            lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
        if hi:
            ax.plot([lo, hi], [lo, hi], color="grey", linestyle=":", linewidth=1, label="delivered = offered")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered (packets/s)")
        ax.set_ylabel("delivered (packets/s)")
        ax.set_title(f"{size} B payload, {LAYOUT_SHORT[layout]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    m = doc["meta"]
    fig.suptitle(f"mcr-xdp benchmark ({m['plan']}): {m['machine']['cpus']} vCPU, kernel {m['machine']['kernel']}, "
                 f"medians of {m['repeats']} runs", fontsize="medium")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
