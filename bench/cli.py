"""python -m bench cli: how fast the `mcr-xdp` command answers, as an
operator runs it, and where `attach` spends its time before "relaying".

A relay runs on a namespace chain (native XDP, RULES rules); each command
is run ROUNDS times as a new process in the relay's namespace, and timed
from fork to exit (what a shell prompt waits for). Two Pythons when they
can: the venv's (`make setup`: PyPI's typer, rich, pyroute2) and Debian's
/usr/bin/python3 with Debian's python3-typer, -rich, -pyroute2 (what the
Debian package runs), on the same code. Targets (issue 16): a socket
command answers in under 150 ms; attach reaches "relaying" in 1.5 s.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mcr_xdp.lab.netns import Chain, unique_prefix
from mcr_xdp.lab.proc import Proc, venv_bin

from .sources import ROOT

TARGET_MS = 150.0
ATTACH_TARGET_S = 1.5
COMMANDS = [
    ("status", ["status"]),
    ("status --json", ["status", "--json"]),
    ("rule list", ["rule", "list"]),
    ("stats", ["stats"]),
    ("stats --json", ["stats", "--json"]),
    ("rule add + rule del", None),  # two calls, timed together
    ("--version", ["--version"]),
    ("status -h (typer)", ["status", "-h"]),
]


def _debian_python(shim: Path) -> list[str] | None:
    """/usr/bin/python3 running this checkout on Debian's packages only, if
    they are installed (python3-typer, -rich, -pyroute2, -bpfcc)."""
    (shim / "mcr_xdp_cli").symlink_to(ROOT / "cli")
    cmd = ["env", f"PYTHONPATH={ROOT}:{shim}", "/usr/bin/python3", "-s", "-m", "mcr_xdp_cli.app"]
    probe = subprocess.run(["/usr/bin/python3", "-s", "-c", "import typer, rich, pyroute2, bcc"], capture_output=True)
    return cmd if probe.returncode == 0 else None


def _time(ns: str, argv: list[str], rounds: int) -> list[float]:
    ms = []
    for _ in range(rounds):
        t = time.perf_counter()
        run = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)
        ms.append((time.perf_counter() - t) * 1000)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {run.returncode}: {run.stderr.strip()}")
    return ms


def _netns_exec_ms(ns: str, rounds: int) -> float:
    """What `ip netns exec NS true` costs: taken off every figure."""
    return statistics.median(_time(ns, ["true"], rounds))


def _spread(ms: list[float], base: float = 0.0) -> dict:
    ms = sorted(m - base for m in ms)
    return {"n": len(ms), "median": round(statistics.median(ms), 1), "min": round(ms[0], 1),
            "max": round(ms[-1], 1)}


def _attach_phases(ns: str, python: str) -> dict:
    """Seconds of the start-up's parts, each in a fresh process: the imports
    attach needs, the datapath's load (the prebuilt object: maps, verifier),
    the loss tracer's load and attach."""
    code = {
        "imports": "import mcr_xdp_cli.attach, mcr_xdp.daemon, mcr_xdp.relay, mcr_xdp.backends.bpf",
        "datapath load": "from mcr_xdp import loader; loader.Datapath().close()",
        "loss tracer load + attach": "from mcr_xdp.trace import LossTracer; LossTracer()",
    }
    phases = {}
    for name, stmt in code.items():
        run = subprocess.run(["ip", "netns", "exec", ns, python, "-c",
                              f"import time; t = time.perf_counter(); {stmt}; print(time.perf_counter() - t)"],
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": f"{ROOT}"})
        phases[name] = round(float(run.stdout.split()[-1]), 2) if run.returncode == 0 else None
    return phases


def measure(rounds: int = 20, rules: int = 10, starts: int = 10) -> dict:
    chain = Chain(unique_prefix("mcrb")).build()
    doc: dict = {"started": time.time(), "rounds": rounds, "rules": rules, "commands": {}, "attach_s": {}}
    try:
        ns = chain.relay_in.ns
        base = _netns_exec_ms(ns, rounds)
        doc["netns_exec_ms"] = round(base, 1)
        with tempfile.TemporaryDirectory(prefix="mcr-bench-cli-") as tmp:
            pythons = {"venv": [venv_bin("mcr-xdp")]}
            debian = _debian_python(Path(tmp))
            if debian:
                pythons["debian"] = debian
            cfg = Path(tmp) / "relay.toml"
            cfg.write_text("interval = 1\n[inputs.in0]\nrules = [\n" + "".join(
                f'    "239.1.{i >> 8}.{i & 0xFF}:5001=out0",\n' for i in range(rules)) + "]\n")
            times = []
            for _ in range(starts):
                t = time.perf_counter()
                proc = Proc(chain.popen(ns, venv_bin("mcr-xdp"), "attach", "--config", str(cfg), "--mode",
                                        "xdp-native"))
                proc.wait_for("relaying", timeout=120)
                times.append(time.perf_counter() - t)
                if len(times) < starts:
                    proc.stop()
            doc["attach_s"] = {"n": starts, "median": round(statistics.median(times), 2),
                               "min": round(min(times), 2), "max": round(max(times), 2)}
            try:
                for env, prefix in pythons.items():
                    doc["commands"][env] = {}
                    for name, argv in COMMANDS:
                        if argv is None:  # each add then its del; two execs: one base more
                            ms = [_time(ns, [*prefix, "rule", "add", "239.9.9.9:5001=out0"], 1)[0]
                                  + _time(ns, [*prefix, "rule", "del", "in0/239.9.9.9:5001=out0"], 1)[0] - base
                                  for _ in range(rounds)]
                        else:
                            ms = _time(ns, [*prefix, *argv], rounds)
                        doc["commands"][env][name] = _spread(ms, base)
            finally:
                proc.stop()
        doc["attach_phases_s"] = _attach_phases(ns, sys.executable)
    finally:
        chain.close()
    return doc


def render(doc: dict) -> str:
    envs = list(doc["commands"])
    lines = [f"CLI answer times, ms from fork to exit (median, min-max of {doc['rounds']}; `ip netns exec` "
             f"({doc['netns_exec_ms']} ms) taken off), a relay with {doc['rules']} rules; target {TARGET_MS:.0f} ms",
             "", "| command | " + " | ".join(envs) + " |", "| --- |" + " ---: |" * len(envs)]
    for name, _ in COMMANDS:
        cells = []
        for env in envs:
            s = doc["commands"][env][name]
            cells.append(f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f})")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    worst = max(doc["commands"][env][name]["median"] for env in envs for name, _ in COMMANDS
                if name != "status -h (typer)")
    lines += ["", f"socket commands: slowest median {worst:.0f} ms: "
                  f"{'meets' if worst < TARGET_MS else 'MISSES'} the {TARGET_MS:.0f} ms target"]
    a = doc["attach_s"]
    lines += ["", f"attach to \"relaying\" (native XDP, {doc['rules']} rules): {a['median']:.2f} s median "
                  f"({a['min']:.2f}-{a['max']:.2f}, {a['n']} starts): "
                  f"{'meets' if a['median'] <= ATTACH_TARGET_S else 'MISSES'} the {ATTACH_TARGET_S} s target"]
    lines.append("of which, each measured alone: " + ", ".join(
        f"{k} {v:.2f} s" if v is not None else f"{k} failed" for k, v in doc["attach_phases_s"].items()))
    return "\n".join(lines)
