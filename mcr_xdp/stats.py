"""Counters in three pure steps: collect (read maps, sum CPUs, timestamp),
compute (rates between two snapshots), render (mcr_xdp_cli.render)."""

from __future__ import annotations

import dataclasses
import time

from . import abi


@dataclasses.dataclass(frozen=True)
class RuleStats:
    rule_id: int
    rule: str  # the rule as text
    packets: int
    bytes: int
    forwarded: int
    dropped: int
    outputs: tuple[tuple[str, int, int], ...] = ()  # (output as text, packets, bytes) per output


@dataclasses.dataclass(frozen=True)
class Snapshot:
    timestamp: float  # time.monotonic() at read
    verdicts: dict[str, tuple[int, int]]  # verdict name -> (packets, bytes)
    rules: tuple[RuleStats, ...]

    def verdict_packets(self, verdict: abi.Verdict) -> int:
        return self.verdicts.get(verdict.name.lower(), (0, 0))[0]

    @property
    def forwarded(self) -> int:
        """Input packets handed to one or several outputs."""
        return self.verdict_packets(abi.Verdict.REDIRECT) + self.verdict_packets(abi.Verdict.REDIRECT_MULTI)

    @property
    def dropped(self) -> int:
        return sum(p for name, (p, _) in self.verdicts.items() if name.startswith("drop"))

    @property
    def passed(self) -> int:
        return sum(p for name, (p, _) in self.verdicts.items() if name.startswith("pass"))


def collect(maps, rules: dict, clock=time.monotonic) -> Snapshot:
    """Read every counter once. rules maps rule id -> rules.Rule."""
    verdicts = {
        abi.Verdict(i).name.lower(): (c.packets, c.bytes) for i, c in enumerate(maps.verdicts())
    }
    rows = []
    for rule_id, rule in sorted(rules.items()):
        c = maps.rule_counters(rule_id)
        outs = maps.output_counters(rule_id, len(rule.outputs))
        rows.append(RuleStats(rule_id, str(rule), c.packets, c.bytes, c.forwarded, c.dropped,
                              tuple((str(o), oc.packets, oc.bytes) for o, oc in zip(rule.outputs, outs))))
    return Snapshot(clock(), verdicts, tuple(rows))


@dataclasses.dataclass(frozen=True)
class Rates:
    interval: float
    forwarded_pps: float
    dropped_pps: float
    passed_pps: float
    rule_pps: dict[int, float]
    rule_bps: dict[int, float]  # bits per second


def rate(prev: Snapshot, cur: Snapshot) -> Rates:
    dt = cur.timestamp - prev.timestamp
    if dt <= 0:
        return Rates(0.0, 0.0, 0.0, 0.0, {}, {})

    def per_s(a: int, b: int) -> float:
        return max(0, b - a) / dt

    before = {r.rule_id: r for r in prev.rules}
    pps, bps = {}, {}
    for r in cur.rules:
        old = before.get(r.rule_id)
        pps[r.rule_id] = per_s(old.packets if old else 0, r.packets)
        bps[r.rule_id] = 8 * per_s(old.bytes if old else 0, r.bytes)
    return Rates(
        dt,
        per_s(prev.forwarded, cur.forwarded),
        per_s(prev.dropped, cur.dropped),
        per_s(prev.passed, cur.passed),
        pps,
        bps,
    )


JSON_SCHEMA_VERSION = 1


def as_json(snap: Snapshot, status: dict | None = None) -> dict:
    """The snapshot as the documented JSON object (docs/stats-json.md);
    schema_version changes whenever a field changes meaning or goes away."""
    return {
        "schema_version": JSON_SCHEMA_VERSION,
        "timestamp": snap.timestamp,
        "totals": {"forwarded": snap.forwarded, "dropped": snap.dropped, "passed": snap.passed},
        "verdicts": {name: {"packets": p, "bytes": b} for name, (p, b) in snap.verdicts.items()},
        "rules": [
            {
                "id": r.rule_id,
                "rule": r.rule,
                "packets": r.packets,
                "bytes": r.bytes,
                "forwarded": r.forwarded,
                "dropped": r.dropped,
                "outputs": [{"output": o, "packets": p, "bytes": b} for o, p, b in r.outputs],
            }
            for r in snap.rules
        ],
        "status": status or {},
    }
