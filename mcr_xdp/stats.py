"""Counters in three pure steps: collect (read every backend's counter
source, sum CPUs and backends, timestamp at read), compute (rates between
two snapshots), render (mcr_xdp_cli.render).

A snapshot travels as JSON (`as_json`, schema in docs/stats-json.md) over
the control socket and back (`from_json`), so a client computes rates from
two replies exactly as the relay does from two reads.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import abi
from .backends import Losses
from .health import Counts as HealthCounts
from .health import MergeCounts

if TYPE_CHECKING:
    from .backends import CounterSource

JSON_SCHEMA_VERSION = 1
FORWARD_VERDICTS = (abi.Verdict.REDIRECT, abi.Verdict.REDIRECT_MULTI)


@dataclasses.dataclass(frozen=True)
class OutputStats:
    output: str  # as in the rule: IFACE or IFACE/GROUP:PORT
    iface: str
    packets: int  # copies handed to the interface
    bytes: int


@dataclasses.dataclass(frozen=True)
class RuleStats:
    rule_id: int
    rule: str  # INPUT/RULE
    iface: str  # input
    packets: int  # matched
    bytes: int
    forwarded: int
    dropped: int
    outputs: tuple[OutputStats, ...] = ()
    health: HealthCounts | None = None  # a rule with ;health=, in a backend that checks it
    policed: int | None = None  # a rule with ;police=: packets its policer dropped
    merge: MergeCounts | None = None  # a merge leg: its stream at the output (every leg's the same)


@dataclasses.dataclass(frozen=True)
class CpuStats:
    cpu: int
    packets: int  # every packet the datapath saw on this CPU
    forwarded: int


@dataclasses.dataclass(frozen=True)
class InterfaceStats:
    name: str
    rx_packets: int = 0
    rx_dropped: int = 0
    tx_packets: int = 0
    tx_dropped: int = 0
    lost_after_redirect: int = 0  # frames the kernel dropped after XDP redirected them here
    lost_in_ring: int = 0  # input frames a full userspace-mode ring had no room for (tp_drops)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    timestamp: float  # time.monotonic() of the reading process, at read
    verdicts: dict[str, tuple[int, int]]  # verdict name -> (packets, bytes)
    rules: tuple[RuleStats, ...]
    cpus: tuple[CpuStats, ...] = ()
    interfaces: dict[str, InterfaceStats] = dataclasses.field(default_factory=dict)
    steering_lost: int = 0  # frames a full CPU-steering (cpumap) queue dropped

    def verdict_packets(self, verdict: abi.Verdict) -> int:
        return self.verdicts.get(verdict.name.lower(), (0, 0))[0]

    @property
    def forwarded(self) -> int:
        """Input packets handed to one or several outputs."""
        return sum(self.verdict_packets(v) for v in FORWARD_VERDICTS)

    @property
    def dropped(self) -> int:
        return sum(p for name, (p, _) in self.verdicts.items() if name.startswith(("drop", "egress")))

    @property
    def passed(self) -> int:
        return sum(p for name, (p, _) in self.verdicts.items() if name.startswith("pass"))

    @property
    def lost_after_redirect(self) -> int:
        """Frames the kernel dropped after a redirect, all outputs."""
        return sum(i.lost_after_redirect for i in self.interfaces.values())

    @property
    def lost_in_ring(self) -> int:
        return sum(i.lost_in_ring for i in self.interfaces.values())

    @property
    def lost(self) -> int:
        """Every loss outside the datapath's own verdicts: after redirect,
        in steering queues, in userspace-mode rings."""
        return self.lost_after_redirect + self.steering_lost + self.lost_in_ring


def collect(sources: Sequence[CounterSource], rules: dict, losses: Losses | None = None,
            links: dict | None = None, clock=time.monotonic) -> Snapshot:
    """Read every counter once, summing the sources (the backends a relay
    runs share its rule indexes).

    rules: rule id -> (its index, where the sources count it; rules.Rule);
    losses: what the backends lost outside their verdicts; links: name ->
    (ifindex, kernel interface counters as a dict) from links.counters().
    """
    timestamp = clock()
    losses = losses or Losses()
    verdict_rows = [s.verdicts() for s in sources]
    verdicts = {abi.Verdict(i).name.lower(): (sum(r[i].packets for r in verdict_rows),
                                              sum(r[i].bytes for r in verdict_rows))
                for i in range(abi.VERDICT_MAX)}
    rows = []
    for rule_id, (index, rule) in sorted(rules.items()):
        read = [s.rule_and_outputs(index, len(rule.outputs)) for s in sources]
        parts, outs = [r for r, _ in read], [o for _, o in read]
        packets, nbytes, forwarded, dropped = (sum(getattr(p, f) for p in parts)
                                               for f in ("packets", "bytes", "forwarded", "dropped"))
        rows.append(RuleStats(
            rule_id, str(rule), rule.iface, packets, nbytes, forwarded, dropped,
            tuple(OutputStats(str(o), o.iface, sum(oc[i].packets for oc in outs), sum(oc[i].bytes for oc in outs))
                  for i, o in enumerate(rule.outputs)),
            _health(sources, index, rule.health_kind),
            _policed(sources, index) if rule.police is not None else None,
            merge_of(sources, index, rule),
        ))
    per_cpu = [totals for s in sources if (totals := s.cpu_totals())]
    cpus = tuple(CpuStats(cpu, sum(t[cpu][0] for t in per_cpu if cpu < len(t)),
                          sum(t[cpu][1] for t in per_cpu if cpu < len(t)))
                 for cpu in range(max((len(t) for t in per_cpu), default=0)))
    interfaces = {}
    for name, (ifindex, counters) in (links or {}).items():
        interfaces[name] = InterfaceStats(
            name,
            counters.get("rx_packets", 0), counters.get("rx_dropped", 0),
            counters.get("tx_packets", 0), counters.get("tx_dropped", 0),
            losses.after_redirect.get(ifindex, 0), losses.ring.get(name, 0),
        )
    return Snapshot(timestamp, verdicts, tuple(rows), cpus, interfaces, losses.steering)


def _health(sources: Sequence[CounterSource], index: int, kind: str | None) -> HealthCounts | None:
    """A rule's stream health summed over the sources that check it (those
    with a health method: the kernel datapath); None when none does."""
    if kind is None:
        return None
    found = [h for s in sources if hasattr(s, "health_counts") and (h := s.health_counts(index, kind)) is not None]
    if not found:
        return None
    total = found[0]
    for more in found[1:]:
        total = total + more
    return total


def merge_of(sources: Sequence[CounterSource], index: int, rule) -> MergeCounts | None:
    """A merge leg's stream, from the source that merges it (legs run in
    one backend); None for a rule that merges nothing."""
    if rule.merge is None:
        return None
    for source in sources:
        found = source.merge_counts(index, rule.merge, 1 + len(rule.merge_with)) \
            if hasattr(source, "merge_counts") else None
        if found is not None:
            return found
    return None


def merged_stream(rule_text: str) -> str:
    """The merged stream a leg's rule text (RuleStats.rule) belongs to, as
    rules.Rule.merge_name names it: its legs, sorted."""
    return "|".join(sorted(rule_text.split("=", 1)[0].split("|")))


def _policed(sources: Sequence[CounterSource], index: int) -> int | None:
    """Packets a rule's policer dropped, over the sources that police it."""
    found = [n for s in sources if hasattr(s, "policed") and (n := s.policed(index)) is not None]
    return sum(found) if found else None


@dataclasses.dataclass(frozen=True)
class Rates:
    interval: float
    forwarded_pps: float
    dropped_pps: float
    passed_pps: float
    lost_pps: float
    rule_pps: dict[int, float]
    rule_bps: dict[int, float]  # bits per second, as received
    output_pps: dict[tuple[int, int], float]  # (rule id, output index)
    verdict_pps: dict[str, float]
    cpu_pps: dict[int, float]
    interface_lost_pps: dict[str, float]


def rate(prev: Snapshot, cur: Snapshot) -> Rates:
    """Per-second rates between two snapshots of the same relay; counters
    that went backwards (a relay started again, whose ids may name other
    rules) count as zero."""
    dt = cur.timestamp - prev.timestamp
    if dt <= 0:
        return Rates(0.0, 0.0, 0.0, 0.0, 0.0, {}, {}, {}, {}, {}, {})

    def per_s(a: int, b: int) -> float:
        return max(0, b - a) / dt

    before = {r.rule_id: r for r in prev.rules}
    pps, bps, outs = {}, {}, {}
    for r in cur.rules:
        old = before.get(r.rule_id)
        if old is not None and old.rule != r.rule:
            old = None
        pps[r.rule_id] = per_s(old.packets if old else 0, r.packets)
        bps[r.rule_id] = 8 * per_s(old.bytes if old else 0, r.bytes)
        for i, o in enumerate(r.outputs):
            was = old.outputs[i].packets if old and i < len(old.outputs) else 0
            outs[(r.rule_id, i)] = per_s(was, o.packets)
    cpu_before = {c.cpu: c.packets for c in prev.cpus}
    lost_before = {n: i.lost_after_redirect for n, i in prev.interfaces.items()}
    return Rates(
        dt,
        per_s(prev.forwarded, cur.forwarded),
        per_s(prev.dropped, cur.dropped),
        per_s(prev.passed, cur.passed),
        per_s(prev.lost, cur.lost),
        pps,
        bps,
        outs,
        {name: per_s(prev.verdicts.get(name, (0, 0))[0], p) for name, (p, _) in cur.verdicts.items()},
        {c.cpu: per_s(cpu_before.get(c.cpu, 0), c.packets) for c in cur.cpus},
        {n: per_s(lost_before.get(n, 0), i.lost_after_redirect) for n, i in cur.interfaces.items()},
    )


def rates_json(rates: Rates) -> dict:
    """stats JSON's "rates": per second over the last `seconds`."""
    outputs: dict[int, list[float]] = {}
    for (rule, _), pps in sorted(rates.output_pps.items()):
        outputs.setdefault(rule, []).append(pps)
    return {
        "seconds": round(rates.interval, 3),
        "forwarded_pps": rates.forwarded_pps, "dropped_pps": rates.dropped_pps, "passed_pps": rates.passed_pps,
        "lost_pps": rates.lost_pps,
        "rules": [{"id": i, "pps": pps, "bps": rates.rule_bps.get(i, 0.0),
                   "outputs": outputs.get(i, [])}
                  for i, pps in rates.rule_pps.items()],
        "verdicts": dict(rates.verdict_pps),
        "cpus": [{"cpu": cpu, "pps": pps} for cpu, pps in sorted(rates.cpu_pps.items())],
        "lost_after_redirect": dict(rates.interface_lost_pps),
    }


def rates_from_json(data: dict | None) -> Rates | None:
    """The Rates of rates_json's output (None stays None)."""
    if not data:
        return None
    return Rates(
        data["seconds"], data["forwarded_pps"], data["dropped_pps"], data["passed_pps"], data["lost_pps"],
        {r["id"]: r["pps"] for r in data["rules"]}, {r["id"]: r["bps"] for r in data["rules"]},
        {(r["id"], i): pps for r in data["rules"] for i, pps in enumerate(r["outputs"])},
        dict(data["verdicts"]), {c["cpu"]: c["pps"] for c in data["cpus"]}, dict(data["lost_after_redirect"]),
    )


def as_json(snap: Snapshot, status: dict | None = None, rates: Rates | None = None) -> dict:
    """The snapshot as the documented JSON object (docs/stats-json.md);
    schema_version changes whenever a field changes meaning or goes away.
    rates: since the relay's previous sample (None: no sample yet, or the
    pinned maps of a killed relay)."""
    return {
        "schema_version": JSON_SCHEMA_VERSION,
        "timestamp": snap.timestamp,
        "totals": {"forwarded": snap.forwarded, "dropped": snap.dropped, "passed": snap.passed,
                   "lost": snap.lost, "lost_after_redirect": snap.lost_after_redirect,
                   "lost_in_steering": snap.steering_lost, "lost_in_ring": snap.lost_in_ring},
        "verdicts": {name: {"packets": p, "bytes": b} for name, (p, b) in snap.verdicts.items()},
        "rules": [
            {
                "id": r.rule_id,
                "rule": r.rule,
                "input": r.iface,
                "packets": r.packets,
                "bytes": r.bytes,
                "forwarded": r.forwarded,
                "dropped": r.dropped,
                "outputs": [
                    {"output": o.output, "interface": o.iface, "packets": o.packets, "bytes": o.bytes}
                    for o in r.outputs
                ],
                "health": r.health.as_json() if r.health is not None else None,
                "policed": r.policed,
                "merge": r.merge.as_json() if r.merge is not None else None,
            }
            for r in snap.rules
        ],
        "cpus": [{"cpu": c.cpu, "packets": c.packets, "forwarded": c.forwarded} for c in snap.cpus],
        "interfaces": {n: dataclasses.asdict(i) for n, i in snap.interfaces.items()},
        "status": status or {},
        "rates": rates_json(rates) if rates is not None else None,
    }


def from_json(data: dict) -> tuple[Snapshot, dict]:
    """(snapshot, status) from as_json's output."""
    if data.get("schema_version") != JSON_SCHEMA_VERSION:
        raise ValueError(f"stats schema {data.get('schema_version')!r}, expected {JSON_SCHEMA_VERSION}")
    rules = tuple(
        RuleStats(
            r["id"], r["rule"], r["input"], r["packets"], r["bytes"], r["forwarded"], r["dropped"],
            tuple(OutputStats(o["output"], o["interface"], o["packets"], o["bytes"]) for o in r["outputs"]),
            HealthCounts.from_json(r["health"]) if r.get("health") else None,
            r.get("policed"),
            MergeCounts.from_json(r["merge"]) if r.get("merge") else None,
        )
        for r in data["rules"]
    )
    snap = Snapshot(
        data["timestamp"],
        {name: (v["packets"], v["bytes"]) for name, v in data["verdicts"].items()},
        rules,
        tuple(CpuStats(c["cpu"], c["packets"], c["forwarded"]) for c in data["cpus"]),
        {n: InterfaceStats(**i) for n, i in data["interfaces"].items()},
        data["totals"].get("lost_in_steering", 0),
    )
    return snap, data.get("status", {})
