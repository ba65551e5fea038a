"""The benchmark's swapped block (bench/runner.py, Runner.run_swapped): the
relays' input programs take turns on one input while the generator runs,
every arm is paired with the reference group by group, the daemon's own
program is back on the input afterwards, and nothing is left. The ratios'
values are the benchmark's business; here they only have to be counts."""

from __future__ import annotations

import os
from contextlib import ExitStack

import pytest

from bench import nsutil
from bench.plan import COMPARE, Block, Plan
from bench.runner import Runner
from mcr_xdp import libbpf
from mcr_xdp.lab.netns import existing_namespaces

pytestmark = [pytest.mark.root, pytest.mark.e2e]


def _attached(runner: Runner) -> int:
    topo = runner.topo
    with nsutil.netns(topo.relay_in.ns):
        return libbpf.xdp_query(nsutil.ifindex(topo.relay_in.ns, topo.IN)).drv_prog_id


def test_programs_take_turns_and_the_daemon_keeps_its_input():
    block = Block("compare", COMPARE, repeats=2, swap=True)
    runner = Runner(Plan("test", (block,)), socket_check=False)
    mcr = runner.relays["mcr-xdp-native"]
    on_input_at_stop = []
    stop = mcr.stop

    def recording_stop():
        on_input_at_stop.append(_attached(runner))
        stop()

    mcr.stop = recording_stop
    with ExitStack() as stack:
        runner._build(stack)
        runner.run_block(block)
        # Its own program went back on before it stopped; the daemon
        # detached it, and nothing else is attached.
        assert mcr.prog_id and on_input_at_stop[0] == mcr.prog_id
        assert _attached(runner) == 0
    rows = {r["relay"]: r for r in runner.results}
    assert set(rows) == {"bare-redirect#2/bare-redirect", "rewrite-redirect/bare-redirect",
                         "bare-redirect-traced/bare-redirect", "mcr-xdp-native/bare-redirect",
                         "mcr-xdp-native+tracer/bare-redirect"}
    for row in rows.values():
        assert row["status"] == "paired" and row["method"] == "swapped" and row["summary"]["n"] == 2
        assert all(0.3 < r < 3 for r in row["ratios"]), row
    assert all(pps > 100_000 for pps in rows["mcr-xdp-native/bare-redirect"]["delivered_pps"].values())
    # Its daemon ran without its loss tracer, which every turn would have
    # paid: the traced reference measures a tracer, the derived row adds it.
    assert mcr.untraced
    assert "--no-loss-tracer" in rows["mcr-xdp-native/bare-redirect"]["label"]
    assert "with its loss tracer" in rows["mcr-xdp-native+tracer/bare-redirect"]["label"]
    traced = runner.relays["bare-redirect-traced"]
    assert traced.link is None and traced.tracer is None  # detached after its turns, closed at the end
    mine = f"mcrb-{os.getpid()}-"
    assert not [ns for ns in existing_namespaces() if ns.startswith(mine)]


def test_a_relay_that_cannot_swap_is_reported_not_run():
    block = Block("compare", ("bare-redirect", "smcroute"), repeats=1, swap=True)
    runner = Runner(Plan("test", (block,)), socket_check=False)
    with ExitStack() as stack:
        runner._build(stack)
        runner.run_block(block)
    (row,) = [r for r in runner.results if r["relay"] == "smcroute"]
    assert row["status"] == "n/a" and "cannot take turns by program swap" in row["reason"]
    # The control still pairs with the reference.
    assert [r["relay"] for r in runner.results if r["status"] == "paired"] == ["bare-redirect#2/bare-redirect"]


def test_the_traced_reference_measured_on_its_own_keeps_its_tracer_on():
    """Outside a swapped block (--relays bare-redirect-traced in any block)
    its tracer is on for the whole run, as its label says."""
    runner = Runner(Plan("test", ()), socket_check=False)
    traced = runner.relays["bare-redirect-traced"]
    with ExitStack() as stack:
        runner._build(stack)
        traced.start(runner.topo, 1, 1)
        try:
            assert traced.link is not None and _attached(runner) > 0
        finally:
            traced.stop()
        assert traced.link is None and _attached(runner) == 0


def test_stream_counts_take_turns_through_one_relay():
    """Block.swap_streams: one relay with the largest count's rules, its
    generators of each count in turn; every group paired with the first
    count, and no generator left running."""
    block = Block("rules-swapped", ("mcr-xdp-native",), repeats=2, swap=True, swap_streams=(1, 4))
    runner = Runner(Plan("test", (block,)), socket_check=False)
    with ExitStack() as stack:
        runner._build(stack)
        runner.run_block(block)
        assert not any(gen._thread for gen in runner.gens.values())
    (row,) = runner.results
    assert row["relay"] == "mcr-xdp-native@4/mcr-xdp-native@1" and row["method"] == "swapped-streams"
    assert row["summary"]["n"] == 2 and all(0.3 < r < 3 for r in row["ratios"]), row
    assert "4 streams (4 rules)" in row["label"]
