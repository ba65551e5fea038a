"""Two builds of the datapath, the same frame, run for run: what a change
to bpf/ costs or saves in ns, below the machine's drift.

    sudo .venv/bin/python -m bench ab --base REV [--rules N] [--repeats ROUNDS]

REV's bpf/ (git archive) is built beside this checkout's, both objects
are loaded into one process with the same exact rules (rule 0 with
;ttl=64, so the frame forwards forever), and each round times
RUNS BPF_PROG_TEST_RUN runs of the frame of rule 0 through each
`mcr_relay`, the order alternating round by round (ABAB, BABA). The
paired difference of each round (this checkout less REV) cancels what
drifts between rounds; its median and quartiles are the answer. Both builds
are filled by this checkout's control plane: REV's rule, key and config
layouts must be this checkout's (a counter layout may differ: nothing
here reads counters). The same revision against itself shows the noise.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from mcr_xdp import libbpf, loader, objfile
from mcr_xdp.errors import AttachError

from .lookup import GROUP, LO, _exact_rules, _install, _time, frame
from .sources import ROOT

RUNS = 1_000_000  # test-run repetitions a timing: long calls, few dispatcher updates (each waits for RCU)


def base_image(rev: str) -> bytes:
    """The datapath object of git revision rev, built from its sources."""
    tmp = Path(tempfile.mkdtemp(prefix="mcr-bench-ab-"))
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "bpf", "pyproject.toml"],
                                 capture_output=True)
        if archive.returncode:
            raise AttachError(f"git archive {rev}: {archive.stderr.decode(errors='replace').strip()}")
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
        shutil.rmtree(tmp / "bpf" / "build", ignore_errors=True)
        image = objfile.image("datapath", tmp / "bpf")
        if image is None:
            raise AttachError(f"no datapath object was built from {rev}'s bpf/")
        return image
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def measure(base: str, rules: int = 10, rounds: int = 200) -> dict:
    started = time.time()
    head = objfile.image("datapath")
    if head is None:
        raise AttachError("no datapath object for this checkout (clang missing?): make setup")
    images = {"base": base_image(base), "head": head}
    texts = _exact_rules(rules)
    texts[0] += ";ttl=64"  # every run rewrites the TTL to 64: the frame forwards forever
    data = frame(GROUP, ttl=64)
    loaded: dict[str, loader.Datapath] = {}
    ns: dict[str, list[float]] = {"base": [], "head": []}
    try:
        for name, image in images.items():
            loaded[name] = loader.Datapath(image=image)
            _install(loaded[name], texts)
        for r in range(rounds):
            for name in ("base", "head") if r % 2 == 0 else ("head", "base"):
                ns[name].append(_time(loaded[name].prog_fd, data, LO, RUNS, 1, libbpf.XDP_REDIRECT))
    finally:
        for dp in loaded.values():
            dp.close()
    diffs = [h - b for h, b in zip(ns["head"], ns["base"])]
    return {"base": base, "rules": rules, "rounds": rounds, "runs": RUNS, "started": started,
            "base_ns": _quartiles(ns["base"]), "head_ns": _quartiles(ns["head"]), "diff_ns": _quartiles(diffs)}


def render(doc: dict) -> str:
    def q(t):
        return f"{t[1]:.1f} ns (quartiles {t[0]:.1f}-{t[2]:.1f})"

    return "\n".join([
        f"mcr_relay, a forwarded frame of one of {doc['rules']} rules, {doc['rounds']} alternating rounds of "
        f"{doc['runs']:,} runs (ns include the test run's own cost):",
        f"  {doc['base']}: {q(doc['base_ns'])}",
        f"  this checkout: {q(doc['head_ns'])}",
        f"  this checkout less {doc['base']}, paired by round: {q(doc['diff_ns'])}",
    ])
