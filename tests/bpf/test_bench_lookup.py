"""python -m bench lookup (bench/lookup.py, bench/bpf/bench_lookup.c): its
programs find the rule they time, the relay takes the path it is timed on,
and the report has every figure. Timing itself is the benchmark's business;
here the runs are short."""

from __future__ import annotations

import json

import pytest

from bench import lookup
from bench.nsutil import netns
from mcr_xdp.lab.netns import Topology, unique_prefix

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def doc():
    """A short measurement in a namespace with nothing but lo (as in a fresh
    VM), so no interface of this machine is taken for granted. measure()
    raises when a program returns another verdict than the one of the path
    it times (e.g. a key that misses its rule)."""
    topo = Topology(unique_prefix("mcrt"))
    try:
        with netns(topo.add_ns("lookup")):
            return lookup.measure(rules=20, repeat=lookup.SHORT * 4, rounds=2)
    finally:
        topo.close()


def test_every_figure_is_measured(doc):
    ns = doc["ns"]
    health = {f"mcr_relay_{kind}_frame{checked}" for kind in ("rtp", "mpegts") for checked in ("", "_health")}
    health |= {f"mcr_relay_rtp_frame_{option}" for option in ("merge", "police", "loop_guard")}
    assert set(ns) == {"empty_ns", "empty_short_ns", *lookup.PROGRAMS, "mcr_relay_forward", "mcr_relay_forward_hashed",
                       "mcr_relay_no_rule", "mcr_relay_range_forward", "mcr_relay_no_rule_ranges", *health}
    assert ns["empty_ns"] > 0
    assert all(isinstance(v, float) for v in ns.values())
    json.dumps(doc)  # what the benchmark writes


def test_report_names_each_measurement(doc):
    text = lookup.render(doc)
    for what in lookup.PROGRAMS.values():
        assert what in text
    assert "mcr_relay, a frame of a rule" in text
    assert "of a rule with ;health=mpegts" in text and "of a merge leg" in text


def test_frame_matches_rule_zero_only():
    frame = lookup.frame(ttl=255)
    assert len(frame) == 64
    assert frame[30:34] == bytes((239, 1, 1, 1)) and frame[22] == 255
    assert lookup.frame("239.250.250.250")[30:34] == bytes((239, 250, 250, 250))
