"""python -m bench checks: what a rule's stream checks cost a userspace
worker per packet. The worker's own per-packet path (Table.handle of
mcr_xdp/fallback/forward.py: parse, lookup, rewrite; no socket) runs over
RTP frames of a plain rule, of a rule with ;health=rtp and of a merge leg
(its own health and the stream's window), the state in the shared memory
file and under the record locks a running relay uses
(mcr_xdp/fallback/streams.py). Every frame has a new sequence number, so a
merge leg forwards each: the first copy's path."""

from __future__ import annotations

import statistics
import time

from mcr_xdp import encode
from mcr_xdp.fallback import streams
from mcr_xdp.fallback.forward import REDIRECT, Table, entry_message
from mcr_xdp.lab.traffic import payload, rtp_header
from mcr_xdp.rules import parse_rule

from .lookup import frame

CASES = {
    "plain": ("239.1.1.1:5001=out/239.2.2.2:5002", {}),
    "health": ("239.1.1.1:5001=out/239.2.2.2:5002;health=rtp", {"health": {"kind": "rtp", "slot": 0}}),
    "merge": ("239.1.1.1:5001=out/239.2.2.2:5002;merge=rtp", {"health": {"kind": "rtp", "slot": 1}, "merge": 0}),
}
LABELS = {"plain": "a 64-byte RTP frame of a rule", "health": "... of a rule with ;health=rtp",
          "merge": "... of a merge leg (;merge=rtp), first copy"}


def measure(rounds: int = 5, frames: int = 20_000) -> dict:
    states = streams.States(streams.create())
    out = {}
    try:
        for name, (text, extra) in CASES.items():
            rule = parse_rule(text, "in")
            table = Table(states)
            msg = entry_message(0, 4, rule, [encode.output_value(rule, rule.outputs[0], 5, 0, bytes(6))])
            table.put({**msg, **extra})
            runs = []
            for r in range(rounds):
                batch = [frame(payload=rtp_header(r * frames + i) + payload(i, 22)) for i in range(frames)]
                start = time.perf_counter_ns()
                for f in batch:
                    verdict = table.handle(f, 4)[0]
                runs.append((time.perf_counter_ns() - start) / frames)
                if verdict != REDIRECT:
                    raise RuntimeError(f"{name}: verdict {verdict}, expected a redirect: it measured the wrong path")
            out[name] = {"median_ns": statistics.median(runs), "min_ns": min(runs), "max_ns": max(runs)}
            table = None
    finally:
        states.close()
    return {"rounds": rounds, "frames": frames, "started": time.time(), "ns": out}


def render(doc: dict) -> str:
    lines = [f"ns per packet in a userspace worker's Table.handle, median of {doc['rounds']} x {doc['frames']:,} "
             "frames (min-max)", "", "| what | ns |", "| --- | ---: |"]
    for name, r in doc["ns"].items():
        lines.append(f"| {LABELS[name]} | {r['median_ns']:.0f} ({r['min_ns']:.0f}-{r['max_ns']:.0f}) |")
    return "\n".join(lines)
