"""The mode ladder, the attach options that pick modes, and the userspace
workers' shared counters. No privileges."""

from __future__ import annotations

import os

import pytest

from mcr_xdp import abi, stats
from mcr_xdp.errors import UsageError
from mcr_xdp.fallback import Fallback
from mcr_xdp.fallback import counters as cnt
from mcr_xdp.maps import parse_cpu_list
from mcr_xdp.modes import LADDER, Mode, XdpMode, failing_modes, ladder


@pytest.mark.parametrize("mode, xdp_mode, expected", [
    (None, None, LADDER),
    (Mode.AUTO, None, LADDER),
    (None, XdpMode.AUTO, LADDER),
    (Mode.TC, None, (Mode.TC,)),
    (Mode.USERSPACE, XdpMode.AUTO, (Mode.USERSPACE,)),
    (None, XdpMode.NATIVE, (Mode.XDP_NATIVE,)),  # --xdp-mode: the old spelling
    (None, XdpMode.GENERIC, (Mode.XDP_GENERIC,)),
    (Mode.XDP_GENERIC, XdpMode.GENERIC, (Mode.XDP_GENERIC,)),
    (Mode.AUTO, XdpMode.NATIVE, (Mode.XDP_NATIVE,)),
])
def test_ladder(mode, xdp_mode, expected):
    assert ladder(mode, xdp_mode) == expected


def test_ladder_order_is_fastest_first():
    assert [m.value for m in LADDER] == ["xdp-native", "xdp-generic", "tc", "userspace"]


def test_conflicting_mode_options():
    with pytest.raises(UsageError, match="disagree"):
        ladder(Mode.TC, XdpMode.NATIVE)


def test_failing_modes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MCR_XDP_FAIL_MODES", "xdp-native, tc,")
    assert failing_modes() == {"xdp-native", "tc"}
    monkeypatch.delenv("MCR_XDP_FAIL_MODES")
    assert failing_modes() == set()


@pytest.mark.parametrize("text, cpus", [("0,1", (0, 1)), ("1", (1,)), ("0-3", (0, 1, 2, 3)), ("3,0-1", (3, 0, 1))])
def test_cpu_list(text, cpus):
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["", "a", "0,,1", "1-", "-1", "0,0", "0-2,1"])
def test_bad_cpu_list(text):
    with pytest.raises(ValueError):
        parse_cpu_list(text)


def test_fallback_options_checked():
    with pytest.raises(UsageError, match="--fanout"):
        Fallback(2, "rr")
    with pytest.raises(UsageError, match="--workers"):
        Fallback(0)
    assert Fallback().nworkers == len(os.sched_getaffinity(0))


def test_counters_sum_workers_in_the_datapath_layout():
    fd = cnt.create(3)
    try:
        reader = cnt.Counters(fd, 3)
        blocks = [cnt.open_block(fd, w) for w in range(3)]
    finally:
        os.close(fd)
    try:
        for w, (_, c) in enumerate(blocks):
            c[cnt.VERDICTS + 2 * abi.Verdict.REDIRECT] += 10 * (w + 1)
            c[cnt.VERDICTS + 2 * abi.Verdict.REDIRECT + 1] += 1000 * (w + 1)
            c[cnt.VERDICTS + 2 * abi.Verdict.PASS_NO_RULE] += 1
            base = cnt.rule_base(abi.MAX_RULES - 1)
            c[base], c[base + 2] = 5, 4
            out = cnt.output_base(abi.MAX_RULES - 1, abi.MAX_OUTPUTS - 1)
            c[out], c[out + 1] = 7, 700
        v = reader.verdicts()
        assert (v[abi.Verdict.REDIRECT].packets, v[abi.Verdict.REDIRECT].bytes) == (60, 6000)
        assert v[abi.Verdict.PASS_NO_RULE].packets == 3
        rc = reader.rule_counters(abi.MAX_RULES - 1)
        assert (rc.packets, rc.forwarded, rc.dropped) == (15, 12, 0)
        oc = reader.output_counters(abi.MAX_RULES - 1, abi.MAX_OUTPUTS)
        assert (oc[-1].packets, oc[-1].bytes) == (21, 2100) and oc[0].packets == 0
        assert [reader.worker_totals(w) for w in range(3)] == [
            {"packets": 11, "forwarded": 10}, {"packets": 21, "forwarded": 20}, {"packets": 31, "forwarded": 30}]
        reader.reset_rule(abi.MAX_RULES - 1)
        assert reader.rule_counters(abi.MAX_RULES - 1).packets == 0
        assert reader.output_counters(abi.MAX_RULES - 1, abi.MAX_OUTPUTS)[-1].packets == 0
        combined = stats.collect([reader, reader], {}, clock=lambda: 0.0)
        assert combined.verdicts["redirect"][0] == 120 and combined.cpus == ()
    finally:
        for m, c in blocks:
            c.release()
            m.close()
        reader.close()


def test_a_worker_block_is_page_aligned():
    import mmap

    assert cnt.BLOCK % mmap.ALLOCATIONGRANULARITY == 0 and cnt.BLOCK >= cnt.WORDS * 8
