"""python -m bench: measure every relay on a namespace chain, in one run.

    sudo .venv/bin/python -m bench                 # the full plan (make bench)
    sudo .venv/bin/python -m bench --plan quick    # under 3 minutes (make bench-quick)
    sudo .venv/bin/python -m bench --relays ceiling,mcr-xdp-native --sizes 64
    sudo .venv/bin/python -m bench profile --relays mcr-xdp-native   # where the time goes
    sudo .venv/bin/python -m bench lookup          # ns of the lookup and counters (BPF_PROG_TEST_RUN)
    sudo .venv/bin/python -m bench lines           # mcr_relay's samples per source line (perf)
    sudo .venv/bin/python -m bench ab --base REV   # this checkout's mcr_relay against REV's, ns paired run by run
    sudo .venv/bin/python -m bench packet-tx       # send() against a TX ring, for the userspace fallback
    .venv/bin/python -m bench checks               # what ;health= and ;merge= cost a userspace worker
    sudo .venv/bin/python -m bench rules           # start with 1 / 1,000 / 10,000 rules, rule add, memory
    sudo .venv/bin/python -m bench cli             # how fast mcr-xdp status|rule|stats answer; attach's start
    sudo .venv/bin/python -m bench cleanup         # remove what a killed run left
    .venv/bin/python -m bench report --from bench/results/full-TIME.json   # table and plot again

Prints the markdown table and the targets, writes bench/results/PLAN-TIME.json
and the plot (docs/benchmarks.png for the full plan, docs/benchmarks-PLAN.png
otherwise). docs/benchmarks.md explains the method.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

from mcr_xdp.abi import MAX_RULES
from mcr_xdp.errors import McrError
from mcr_xdp.features import require_root, require_toolchain

from . import report
from .plan import ALL_RELAYS, PLANS
from .relays import NotAvailable
from .runner import Runner, cleanup_stale, log
from .sources import ROOT


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def wait_quiet(limit: float, threshold: float = 0.3) -> None:
    """Others share this machine: give their jobs a chance to finish."""
    deadline = time.monotonic() + limit
    while (load := float(open("/proc/loadavg").read().split()[0])) >= threshold:
        if time.monotonic() > deadline:
            log(f"warning: load average still {load:.2f} after {limit:g} s; measuring anyway (expect noise)")
            return
        log(f"load average {load:.2f}: waiting for the machine to go quiet")
        time.sleep(10)


def _plot(doc: dict, path) -> None:
    try:
        log(f"wrote {report.plot(doc, Path(path))}")
    except report.NoPlot as exc:
        log(f"no plot: {exc}")


def _publish(results: Path, name: str, doc: dict, render) -> None:
    """Print a measurement and write it as results/NAME-TIME.json."""
    print(render(doc))
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(doc, indent=1))
    log(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", nargs="?", default="run",
                   choices=("run", "profile", "lookup", "lines", "ab", "packet-tx", "checks", "rules", "cli",
                            "report", "cleanup"))
    p.add_argument("--base", help="ab: the git revision whose datapath this checkout's is compared with")
    p.add_argument("--from", dest="source", type=Path, help="report: the JSON of an earlier run")
    p.add_argument("--plan", default="full", choices=sorted(PLANS))
    p.add_argument("--relays", help=f"comma-separated subset of: {','.join(ALL_RELAYS)}")
    p.add_argument("--sizes", help="comma-separated payload sizes to keep (e.g. 64)")
    p.add_argument("--blocks", help="comma-separated block names of the plan to keep (relays, peak, loss, rules, "
                                    "fan-out, exact)")
    p.add_argument("--repeats", type=int, help="runs per point (default: the plan's)")
    p.add_argument("--seconds", type=float, help="seconds per run (default: the plan's)")
    p.add_argument("--retries", type=int, help="extra attempts for a run while other processes were busy "
                                              "(default: the plan's, 1 full, 0 quick)")
    p.add_argument("--batch", type=int, default=64, help="live-frames batch size, 1..256 (default 64)")
    p.add_argument("--sink-cpu", type=int, default=-1,
                   help="threaded layout: pin the sinks' NAPI to this CPU as a thread; -1 (default) leaves it in the "
                        "softirq the relay raises, on the relay's CPU")
    p.add_argument("--no-check", action="store_true", help="skip the socket-level integrity runs")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="directory for the JSON")
    p.add_argument("--plot", type=Path, help="PNG path (default: docs/benchmarks[-PLAN].png); 'none' to skip")
    p.add_argument("--layout", default="default", choices=("default", "threaded"), help="profile: the layout")
    p.add_argument("--streams", type=int, default=1, help="profile: number of streams (rules)")
    p.add_argument("--rules", type=int, help="lookup, lines, ab: rules in the maps (default 1000; ab 10)")
    p.add_argument("--counts", default="1,1000,10000",
                   help="rules: rule counts to start with, comma-separated (the last one also times rule add)")
    p.add_argument("--join", default="rule", choices=("rule", "none"), help="rules: the input's join setting")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="first wait up to SECONDS for the 1-minute load average to drop below 0.3")
    a = p.parse_args(argv)
    if a.rules is None:
        a.rules = 10 if a.action == "ab" else 1000
    if not 1 <= a.rules <= MAX_RULES:
        p.error(f"--rules must be 1..{MAX_RULES} (the datapath's MCR_MAX_RULES)")
    if a.action == "ab" and a.repeats is not None and a.repeats < 2:
        p.error("ab: --repeats must be 2 or more (rounds to pair; quartiles need two)")

    if a.action == "report":
        if not a.source:
            p.error("report needs --from FILE.json")
        doc = json.loads(a.source.read_text())
        doc["targets"] = report.targets(doc["results"])
        print(report.markdown(doc))
        if a.plot is not None and str(a.plot).lower() != "none":
            _plot(doc, a.plot)
        return 0
    if a.action == "checks":  # pure Python: no root, no kernel
        from . import checks

        _publish(a.results, "checks", checks.measure(rounds=a.repeats or 5), checks.render)
        return 0
    try:
        require_root("the benchmark")
        stale = cleanup_stale()
        if stale:
            log(f"removed namespaces left by an earlier run: {', '.join(stale)}")
        if a.action == "cleanup":
            return 0
        require_toolchain()
        if a.wait_quiet:
            wait_quiet(a.wait_quiet)
        if a.action == "packet-tx":
            from . import packet_tx

            _publish(a.results, "packet-tx", packet_tx.measure(rounds=a.repeats or 3), packet_tx.render)
            return 0
        if a.action == "lookup":
            from . import lookup

            _publish(a.results, "lookup", lookup.measure(rules=a.rules, rounds=a.repeats or 5), lookup.render)
            return 0
        if a.action == "lines":
            from . import lines

            _publish(a.results, "lines", lines.measure(rules=a.rules, seconds=a.seconds or 8.0), lines.render)
            return 0
        if a.action == "ab":
            from . import ab

            if not a.base:
                p.error("ab needs --base REV (a git revision: HEAD~1, main, a commit)")
            _publish(a.results, "ab", ab.measure(a.base, rules=a.rules, rounds=a.repeats or 200), ab.render)
            return 0
        if a.action == "cli":
            from . import cli

            _publish(a.results, "cli", cli.measure(rounds=a.repeats or 20), cli.render)
            return 0
        if a.action == "rules":
            from . import rules

            counts = tuple(int(c) for c in a.counts.split(","))
            if not all(1 <= c <= MAX_RULES for c in counts):
                p.error(f"--counts must be 1..{MAX_RULES} each")
            _publish(a.results, "rules", rules.measure(counts, join=a.join), rules.render)
            return 0
        if a.action == "profile":
            from . import profile

            for key in (a.relays.split(",") if a.relays else ["mcr-xdp-native"]):
                prof = profile.profile(key, a.layout, int(a.sizes or 64), a.seconds or 3.0, a.streams)
                _publish(a.results, f"profile-{key}-{a.layout}", prof, profile.render)
                print()
            return 0
        if (os.cpu_count() or 1) < 2:
            log("warning: one CPU only; the threaded layout will share it with the generator")
        plan = PLANS[a.plan]
        if a.blocks:
            keep = set(a.blocks.split(","))
            plan = dataclasses.replace(plan, blocks=tuple(b for b in plan.blocks if b.name in keep))
            if not plan.blocks:
                p.error(f"plan {plan.name} has no block named {a.blocks}")
        if a.repeats or a.seconds or a.retries is not None:
            plan = dataclasses.replace(plan, repeats=a.repeats or plan.repeats, seconds=a.seconds or plan.seconds,
                                       retries=plan.retries if a.retries is None else a.retries)
        relays = a.relays.split(",") if a.relays else None
        unknown = set(relays or ()) - set(ALL_RELAYS)
        if unknown:
            p.error(f"unknown relay(s): {', '.join(sorted(unknown))}")
        sizes = [int(s) for s in a.sizes.split(",")] if a.sizes else None
        # SIGINT too: a shell may start us with it ignored (background jobs).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _interrupt)
        started = time.time()
        meta = {"plan": plan.name, "repeats": plan.repeats, "seconds": plan.seconds, "retries": plan.retries,
                "started": started,
                "command": report.command_line(), "batch": a.batch, "sink_cpu": a.sink_cpu,
                "machine": report.machine()}
        runner = Runner(plan, relays, sizes, batch=a.batch, sink_cpu=a.sink_cpu, socket_check=not a.no_check)
        results = runner.run()
        meta["duration"] = time.time() - started
        meta["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
        doc = report.document(meta, results)
        path = report.write_json(doc, a.results)
        print()
        print(report.markdown(doc))
        print()
        log(f"wrote {path}")
        if a.plot is None or str(a.plot).lower() != "none":
            default = ROOT / "docs" / ("benchmarks.png" if plan.name == "full" else f"benchmarks-{plan.name}.png")
            _plot(doc, a.plot or default)
        return 0
    except McrError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except NotAvailable as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("bench: interrupted; everything it created is removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
