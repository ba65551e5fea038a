"""The benchmark's paired comparison (issue 13): relays run in turn within
each repetition (or their programs swapped on the input, slice by slice),
each run paired with the reference's; a verdict only when the median's 95%
confidence interval is within the margin or on one side of the goal."""

from __future__ import annotations

import pytest

from bench import report
from bench.plan import FULL, MARGIN, QUICK, Block
from bench.runner import Runner, median_ci, paired_summary


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
    assert t["met"] is False and "over the 5% margin, but on one side of the goal" in t["note"]
    assert _target([_paired([0.98, 1.10, 1.0])])["met"] is True


def test_the_table_shows_the_paired_ratios():
    text = report.table([_paired([0.98, 0.99, 1.0])])
    assert "0.990 x (paired, 3 repetitions)" in text and "0.980-1.000 (2.0%, 95% CI)" in text


def test_both_plans_compare_the_datapath_with_a_bare_redirect_in_turn():
    for plan in (QUICK, FULL):
        (block,) = [b for b in plan.blocks if b.name == "compare"]
        assert block.relays[0] == "bare-redirect" and "mcr-xdp-native" in block.relays
        assert "rewrite-redirect" in block.relays  # the floor under any rewriting relay
        assert "bare-redirect-traced" in block.relays  # what mcr-xdp's loss tracer costs
        assert block.swap and (block.repeats or plan.repeats) >= 10
    (block,) = [b for b in FULL.blocks if b.name == "compare"]
    assert block.repeats >= 40  # a 95% interval narrower than the margin at this machine's noise


def test_the_median_interval_is_the_binomial_order_statistics():
    """Known values: n = 10 -> 2nd and 9th; 20 -> 6th, 15th; 100 -> 40th, 61st
    (tables of the sign test); too few for 95% -> the extremes."""
    for n, (lo, hi) in {10: (2, 9), 20: (6, 15), 40: (14, 27), 100: (40, 61), 5: (1, 5), 1: (1, 1)}.items():
        assert median_ci([float(i) for i in range(n, 0, -1)]) == (lo, hi)


def test_many_pairs_give_a_verdict_however_wide_single_ratios_spread():
    """Ratios that spread 20% with a few far off, but 41 of them: the
    median's interval is narrow, and on one side of the goal decides."""
    ratios = [0.88, 0.90, 1.08, 1.10] + [0.99 + 0.001 * (i % 11 - 5) for i in range(37)]
    t = _target([_paired(ratios)])
    s = paired_summary(ratios)
    assert s["spread"] > 0.15 and s["ci_high"] - s["ci_low"] < 0.05
    assert t["met"] is True and "95% CI of the median" in t["note"]
    assert _target([_paired([r - 0.05 for r in ratios])])["met"] is False


def test_runs_from_before_the_interval_are_judged_by_every_ratio():
    """JSON of older runs has no ci_low/ci_high: min and max stand in."""
    row = _paired([0.98, 0.985, 0.99, 0.975, 0.982, 0.979])
    for k in ("ci_low", "ci_high"):
        del row["summary"][k]
    t = _target([row])
    assert t["met"] is True and "95% CI" not in t["note"]
    row = _paired([0.90, 1.02, 0.97, 0.99])
    for k in ("ci_low", "ci_high"):
        del row["summary"][k]
    assert _target([row])["met"] is None


def test_swapped_rows_name_their_method_and_references():
    swapped = {"method": "swapped", "slice": 0.2}
    rows = [{**_paired([1.0, 1.01, 0.99], relay="bare-redirect#2"), **swapped},
            {**_paired([0.97, 0.98, 0.975], relay="bare-redirect-traced"), **swapped},
            {**_paired([0.95, 0.96, 0.955]), **swapped}]
    (t,) = [t for t in report.targets(rows) if "paired" in t["note"] or "swapped" in t["note"]]
    assert t["target"].startswith("mcr-xdp-native") and "3 ABBA groups of 0.2 s slices" in t["note"]
    assert "the control, the bare redirect against itself, paired alike: 1.000 (0.990-1.010)" in t["note"]
    assert "a loss tracer on the bare redirect, paired alike: 0.975" in t["note"]
    assert "(paired, 3 swapped groups)" in report.table(rows)


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
    (block,) = [b for b in FULL.blocks if b.name == "rules-swapped"]
    assert block.swap and block.swap_streams == (1, 1000) and block.repeats >= 40


def test_swapped_stream_counts_are_judged_against_the_rules_goal():
    row = {**_paired([0.96, 0.955, 0.97]), "relay": "mcr-xdp-native@1000/mcr-xdp-native@1",
           "label": "mcr-xdp native XDP, 1000 streams (1000 rules) / mcr-xdp native XDP, 1 stream (1000 rules)",
           "streams": 1000, "method": "swapped-streams", "slice": 0.2}
    (t,) = report.targets([row])
    assert t["goal"] == report.RULES_GOAL and t["met"] is True
    assert "generators swapped, 3 ABBA groups of 0.2 s slices" in t["note"]


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


def test_a_run_of_paired_points_only_says_why_it_has_no_plot(tmp_path):
    """A compare-only run draws nothing, and says so instead of blaming a
    matplotlib that is there (it is not needed to tell)."""
    with pytest.raises(report.NoPlot, match="paired blocks have none"):
        report.plot({"results": [_paired([0.95, 0.96])]}, tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


class _Layouts(Runner):
    """A runner without a topology: what it sets is recorded, not done."""

    def __init__(self):  # no topology, no generators
        self.layout, self.set = "default", []

    def set_layout(self, layout: str) -> None:
        self.set.append(layout)
        self.layout = layout


def test_each_layout_is_set_in_turn_and_the_default_comes_back_after_an_error():
    block = Block("x", ("mcr-xdp-native",), layouts=("threaded", "default", "threaded"))
    runner = _Layouts()
    assert list(runner.layouts(block)) == ["threaded", "default", "threaded"]
    assert runner.set == ["threaded", "default", "threaded", "default"]
    runner = _Layouts()
    with pytest.raises(RuntimeError):
        for layout in runner.layouts(block):
            if layout == "default":
                raise RuntimeError("a run failed")
    assert runner.set == ["threaded", "default", "default"]
