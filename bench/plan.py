"""What a benchmark run measures: blocks of (relays x layouts x payload
sizes x offered rates) at some number of streams and outputs.

Rates are written as strings so plans read like the table they produce:
"flat" (as fast as the generator goes), "200000" (fixed, packets per
second), "c0.85" (fixed, that fraction of the ceiling's flat-out rate
measured earlier in the same run, same layout and size).
"""

from __future__ import annotations

import dataclasses

LAYOUTS = {
    "default": "generator and all veth receive work (relay input, sink) on CPU 0; userspace relays pinned to CPU 1",
    "threaded": "relay on its own CPU: the relay input's NAPI is a kthread pinned to CPU 1 (with any userspace "
                "relay); the generator stays on CPU 0",
}
NOISE_LIMIT = 0.15  # CPUs other processes may use during a run before it is repeated
MARGIN = 0.05  # width of a paired median's 95% CI (over the median) beyond which no verdict is given
RELAYS = ("ceiling", "bare-redirect", "mcr-xdp-native", "mcr-xdp-native-steer", "mcr-xdp-generic", "mcr-xdp-tc",
          "mcr-xdp-userspace", "socat", "smcroute")
# The same native relay with a rule option that reads the payload, fed RTP.
OPTIONS = ("mcr-xdp-native", "mcr-xdp-native-health", "mcr-xdp-native-merge")
# References that only the paired blocks run.
REFERENCES = ("rewrite-redirect", "bare-redirect-traced")
ALL_RELAYS = (*RELAYS, *OPTIONS[1:], *REFERENCES)
# The predecessor's soak (9M packets at 150 kpps): every mode of mcr-xdp, and kernel routing.
SOAK = ("mcr-xdp-native", "mcr-xdp-generic", "mcr-xdp-tc", "mcr-xdp-userspace", "smcroute")


@dataclasses.dataclass(frozen=True)
class Block:
    name: str
    relays: tuple[str, ...]
    sizes: tuple[int, ...] = (64,)
    layouts: tuple[str, ...] = ("default",)
    rates: tuple[str, ...] = ("flat",)
    streams: int = 1
    outputs: int = 1
    exact: int = 0  # > 0: send exactly this many packets per run (count check) instead of timing
    socket_check: bool = False  # before measuring, a socket-level integrity run through the relay
    repeats: int | None = None  # None: the plan's
    # Each repetition runs every relay once, in turn (ABAB...): drift on the
    # machine hits all of them alike, and each relay's run is paired with
    # the first relay's of the same repetition (report: paired ratios).
    interleave: bool = False
    # With interleave: each relay runs once per stream count in every
    # repetition, paired with the first relay's first count (rows
    # "KEY@N"): what more rules cost, without the machine's drift.
    stream_counts: tuple[int, ...] = ()
    # Swapped (relays that are one native XDP program on the input): all
    # started once, the generator running throughout; their programs take
    # turns on the input by an atomic replace, in SLICE-long slices in
    # ABBA groups (repeats: groups a relay), each group one paired ratio
    # to the first relay; a second copy of the first is paired alike (the
    # control). Seconds apart instead of minutes: the machine's drift
    # cancels, and hundreds of pairs fit where ten did.
    swap: bool = False
    # With swap, one relay and stream counts instead (first the
    # reference): the relay runs with as many rules as the largest count,
    # and generators of each count take turns (a generator's start costs
    # ~24 ms, so its slices settle longer): what more streams and rules
    # cost, paired slice by slice.
    swap_streams: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    blocks: tuple[Block, ...]
    repeats: int = 3
    seconds: float = 2.0
    retries: int = 1  # extra attempts for a run during which other processes were busy

    @property
    def max_outputs(self) -> int:
        return max((b.outputs for b in self.blocks), default=1)


def rate_pps(rate: str, ceiling: float | None) -> float | None:
    """Offered packets per second of a rate spec; None for flat out."""
    if rate == "flat":
        return None
    if rate.startswith("c"):
        if not ceiling:
            raise ValueError(f"rate {rate} needs the ceiling measured first in this run")
        return float(rate[1:]) * ceiling
    return float(rate)


BOTH = ("default", "threaded")
# Paired against the first: the least a rewriting relay does (the floor),
# the first with a loss tracer (what mcr-xdp's costs), and mcr-xdp.
COMPARE = ("bare-redirect", "rewrite-redirect", "bare-redirect-traced", "mcr-xdp-native")

QUICK = Plan(
    "quick",
    (
        Block("relays", RELAYS, sizes=(64,), layouts=("default",), rates=("flat",)),
        Block("relays", ("ceiling", "bare-redirect", "mcr-xdp-native", "socat", "smcroute"), sizes=(64,),
              layouts=("threaded",), rates=("flat",)),
        # Userspace relays and kernel routing peak below flat out (a flood starves them).
        Block("peak", ("socat",), sizes=(64,), rates=("50000",)),
        Block("peak", ("smcroute",), sizes=(64,), rates=("300000",)),
        Block("loss", ("mcr-xdp-native",), sizes=(64,), layouts=("default",), rates=("c0.85",)),
        Block("loss", ("mcr-xdp-native",), sizes=(64,), layouts=("threaded",), rates=("c0.95",)),
        Block("rules", ("mcr-xdp-native",), sizes=(64,), streams=1000),
        Block("fan-out", ("mcr-xdp-native",), sizes=(64,), outputs=8),
        Block("options", OPTIONS, sizes=(64,)),
        Block("compare", COMPARE, sizes=(64,), repeats=10, swap=True),
    ),
    repeats=3,
    seconds=0.6,
    retries=0,  # stays under 3 minutes (144 s on 2026-12-04); noise is reported, not retried
)

FULL = Plan(
    "full",
    (
        Block("relays", RELAYS, sizes=(64, 1316), layouts=BOTH,
              rates=("flat", "50000", "300000", "1000000"), socket_check=True),
        Block("loss", ("mcr-xdp-native",), sizes=(64, 1316), layouts=("default",), rates=("c0.85",)),
        Block("loss", ("mcr-xdp-native",), sizes=(64, 1316), layouts=("threaded",), rates=("c0.95",)),
        *(Block("rules", ("mcr-xdp-native", "mcr-xdp-generic", "smcroute"), sizes=(64, 1316), streams=n)
          for n in (10, 100, 1000)),
        *(Block("fan-out", ("mcr-xdp-native", "smcroute"), sizes=(64,), outputs=n) for n in (2, 4, 8)),
        # The predecessor's count checks: every packet sent arrives once.
        # "2 workers": the userspace mode runs one worker per CPU, two here.
        Block("exact", ("mcr-xdp-native", "mcr-xdp-userspace", "socat", "smcroute"), rates=("10000",),
              exact=10_000, repeats=1),
        Block("exact", ("mcr-xdp-native", "mcr-xdp-userspace", "socat", "smcroute"), rates=("5000",),
              exact=50_000, repeats=1),
        Block("exact", ("mcr-xdp-native", "smcroute"), rates=("20000",), streams=2, exact=100_000, repeats=1),
        Block("exact", ("mcr-xdp-native", "smcroute"), rates=("20000",), streams=5, exact=100_000, repeats=1),
        Block("options", OPTIONS, sizes=(64, 1316), layouts=BOTH),
        # The predecessor's soak in every mode (issue 13): 9,000,000 at 150 kpps, a minute each.
        Block("exact", SOAK, rates=("150000",), exact=9_000_000, repeats=1),
        # The datapath against a bare redirect, paired slice by slice (issue 13: >= 0.97).
        Block("compare", COMPARE, sizes=(64,), layouts=BOTH, repeats=40, swap=True),
        # 1000 rules against one, paired run by run (issue 13: within 5%).
        Block("rules-paired", ("mcr-xdp-native",), sizes=(64, 1316), repeats=10, interleave=True,
              stream_counts=(1, 1000)),
        # ... and 1000 streams against one through the same 1000 rules, slice by slice.
        Block("rules-swapped", ("mcr-xdp-native",), sizes=(64, 1316), repeats=40, swap=True,
              swap_streams=(1, 1000)),
    ),
    repeats=3,
    seconds=0.8,
)

# The predecessor's soak: 9M packets at 150 kpps (a minute per run), with
# one output and duplicated to two.
LONG = Plan(
    "long",
    (
        Block("exact", SOAK, rates=("150000",), exact=9_000_000),
        Block("exact", SOAK, rates=("150000",), exact=9_000_000, outputs=2),
    ),
    repeats=1,
)

PLANS = {p.name: p for p in (QUICK, FULL, LONG)}
