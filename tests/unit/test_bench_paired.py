"""The benchmark's paired comparison (issue 13): relays run in turn within
each repetition, each run paired with the reference's; a verdict only when
the paired ratios agree within the margin."""

from __future__ import annotations

from bench import report
from bench.plan import FULL, MARGIN, QUICK
from bench.runner import paired_summary


def _paired(ratios: list[float], relay: str = "mcr-xdp-native") -> dict:
    return {"block": "compare", "relay": f"{relay}/bare-redirect", "label": f"{relay} / bare redirect",
            "streams": 1, "outputs": 1, "exact": 0, "layout": "default", "size": 64, "rate": "flat",
            "status": "paired", "ratios": ratios, "summary": paired_summary(ratios)}


def _target(results: list[dict]) -> dict:
    (t,) = [t for t in report.targets(results) if "bare redirect" in t["target"] and "paired" in t["note"]]
    return t


def test_ratios_that_agree_give_a_verdict():
    t = _target([_paired([0.98, 0.985, 0.99, 0.975, 0.982, 0.979])])
    assert t["met"] is True and round(t["measured"], 3) == 0.981 and t["goal"] == 0.97
    t = _target([_paired([0.90, 0.91, 0.905, 0.899])])
    assert t["met"] is False


def test_ratios_that_spread_more_than_the_margin_across_the_goal_give_none():
    t = _target([_paired([0.90, 1.02, 0.97, 0.99])])
    assert t["met"] is None and f"exceeds the {MARGIN * 100:g}% margin" in t["note"] and "no verdict" in t["note"]
    assert "**no**" not in report.targets_table([t]) and "| n/a |" in report.targets_table([t])


def test_ratios_all_on_one_side_of_the_goal_decide_however_wide():
    """The run above: 0.664-0.756, 13% spread, every one under 0.97."""
    t = _target([_paired([0.664, 0.70, 0.68, 0.756, 0.69, 0.67])])
    assert t["met"] is False and "every ratio is on one side of the goal" in t["note"]
    assert _target([_paired([0.98, 1.10, 1.0])])["met"] is True


def test_the_table_shows_the_paired_ratios():
    text = report.table([_paired([0.98, 0.99, 1.0])])
    assert "0.990 x (paired, 3 repetitions)" in text and "0.980-1.000 (2.0%)" in text


def test_both_plans_compare_the_datapath_with_a_bare_redirect_in_turn():
    for plan in (QUICK, FULL):
        (block,) = [b for b in plan.blocks if b.name == "compare"]
        assert block.relays[0] == "bare-redirect" and "mcr-xdp-native" in block.relays
        assert "rewrite-redirect" in block.relays  # the floor under any rewriting relay
        assert (block.repeats or plan.repeats) >= 6


def test_the_floor_is_reported_beside_mcr_xdp_not_judged():
    """The rewrite-and-redirect reference is paired with the bare redirect
    too; its ratio goes into mcr-xdp's note and gets no verdict itself."""
    results = [_paired([0.95, 0.96, 0.955], relay="rewrite-redirect"), _paired([0.90, 0.91, 0.92])]
    (t,) = [t for t in report.targets(results) if "paired" in t["note"]]
    assert t["target"].startswith("mcr-xdp-native") and t["met"] is False
    assert "the floor, a rewrite and redirect with no lookup, paired alike: 0.955 (0.950-0.960)" in t["note"]


def test_the_full_plan_pairs_1000_rules_with_one():
    (block,) = [b for b in FULL.blocks if b.name == "rules-paired"]
    assert block.interleave and block.stream_counts == (1, 1000) and block.relays == ("mcr-xdp-native",)


def test_paired_stream_counts_are_judged_against_the_rules_goal():
    """Rows KEY@N/KEY@1 (bench.runner, Block.stream_counts) get the 5% goal
    of 1000 rules against one, not the bare-redirect one."""
    row = {**_paired([0.96, 0.955, 0.97]), "relay": "mcr-xdp-native@1000/mcr-xdp-native@1",
           "label": "mcr-xdp native XDP, 1000 rules / mcr-xdp native XDP, 1 rule", "streams": 1000}
    floor = _paired([0.95, 0.96, 0.955], relay="rewrite-redirect")  # same layout and size: not this row's
    (t,) = [t for t in report.targets([floor, row]) if "1000 rules" in t["target"]]
    assert t["goal"] == report.RULES_GOAL == 0.95 and t["met"] is True
    assert "floor" not in t["note"]  # the floor pairs with the bare redirect, not with one rule
    assert t["target"].startswith("mcr-xdp native XDP, 1000 rules / mcr-xdp native XDP, 1 rule, 1 CPU")
