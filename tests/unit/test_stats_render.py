"""The stats pipeline's pure steps from fixed snapshots: rates, JSON (with
its schema), Prometheus exposition (parsed by prometheus_client's parser)
and the rendered tables."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from mcr_xdp import stats
from mcr_xdp.errors import UsageError
from mcr_xdp.metrics import exposition, parse_addr
from mcr_xdp_cli import render

SCHEMA = json.loads((Path(stats.__file__).parent / "stats_schema.json").read_text())


def snapshot(t: float, packets: int, lost: int = 0, ttl_drops: int = 0) -> stats.Snapshot:
    out0 = stats.OutputStats("out0/239.2.2.2:5002", "out0", packets, packets * 100)
    out1 = stats.OutputStats("out1", "out1", packets, packets * 100)
    rules = (
        stats.RuleStats(0, "in0/239.1.1.1:5001=out0/239.2.2.2:5002", "in0", packets, packets * 100, packets, 0,
                        (out0,)),
        stats.RuleStats(3, "in0/239.1.1.3:5001=out0/239.2.2.2:5002,out1", "in0", packets + ttl_drops,
                        (packets + ttl_drops) * 100, packets, ttl_drops, (out0, out1)),
    )
    verdicts = {"redirect": (packets, packets * 100), "redirect_multi": (packets, packets * 100),
                "drop_ttl": (ttl_drops, ttl_drops * 100), "pass_no_rule": (7, 700)}
    cpus = (stats.CpuStats(0, 2 * packets + 7, 2 * packets), stats.CpuStats(1, ttl_drops, 0))
    interfaces = {"in0": stats.InterfaceStats("in0", rx_packets=2 * packets),
                  "out0": stats.InterfaceStats("out0", tx_packets=2 * packets, lost_after_redirect=lost),
                  "out1": stats.InterfaceStats("out1", tx_packets=packets)}
    return stats.Snapshot(t, verdicts, rules, cpus, interfaces)


STATUS = {"uptime": 61.0, "cpus": 2, "rules": [], "notices": [],
          "interfaces": [{"name": "in0", "mode": "xdp-native", "prog_id": 42}]}


def text(renderable, width: int = 160) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_rates_from_two_snapshots():
    r = stats.rate(snapshot(10.0, 1000), snapshot(12.0, 3000, lost=50, ttl_drops=10))
    assert r.interval == 2.0
    assert r.forwarded_pps == pytest.approx(2000)  # (6000 - 2000) / 2
    assert r.rule_pps[0] == pytest.approx(1000)
    assert r.rule_bps[0] == pytest.approx(1000 * 100 * 8)
    assert r.rule_pps[3] == pytest.approx(1005)
    assert r.output_pps[(3, 1)] == pytest.approx(1000)
    assert r.dropped_pps == pytest.approx(5)
    assert r.lost_pps == pytest.approx(25)
    assert r.interface_lost_pps == {"in0": 0, "out0": pytest.approx(25), "out1": 0}
    assert r.cpu_pps == {0: pytest.approx(2000), 1: pytest.approx(5)}


def test_rates_never_negative_when_an_id_names_another_rule():
    """A client's previous snapshot from a relay that was since started
    afresh: its ids begin at 0 again."""
    old = snapshot(1.0, 5000)
    new = stats.Snapshot(2.0, old.verdicts, (stats.RuleStats(0, "in0/239.9.9.9:1=out0", "in0", 10, 1000, 10, 0),))
    assert stats.rate(old, new).rule_pps[0] == pytest.approx(10)  # another rule: counted from zero


def test_rates_of_equal_timestamps_are_empty():
    snap = snapshot(5.0, 10)
    assert stats.rate(snap, snap).rule_pps == {}


def test_json_matches_schema_and_round_trips():
    snap = snapshot(3.5, 1234, lost=9, ttl_drops=2)
    data = stats.as_json(snap, STATUS)
    jsonschema.validate(data, SCHEMA)
    assert data["totals"] == {"forwarded": 2468, "dropped": 2, "passed": 7, "lost": 9, "lost_after_redirect": 9,
                              "lost_in_steering": 0, "lost_in_ring": 0}
    assert data["rules"][1]["outputs"][1] == {"output": "out1", "interface": "out1", "packets": 1234,
                                              "bytes": 123400}
    back, status = stats.from_json(json.loads(json.dumps(data)))
    assert back == snap
    assert status == STATUS


def test_steering_queue_losses_count_as_lost_everywhere():
    snap = dataclasses.replace(snapshot(3.5, 100, lost=9), steering_lost=40)
    assert snap.lost == 49
    data = stats.as_json(snap, STATUS)
    jsonschema.validate(data, SCHEMA)
    assert data["totals"]["lost_in_steering"] == 40 and data["totals"]["lost"] == 49
    assert stats.from_json(data)[0] == snap
    samples = {s.name: s.value for f in text_string_to_metric_families(exposition(snap, STATUS)) for s in f.samples}
    assert samples["mcr_xdp_steering_lost_total"] == 40
    assert "lost in steering queues" in text(render.drops_table(snap, None))


def test_ring_losses_of_a_userspace_input():
    snap = snapshot(3.5, 100)
    snap = dataclasses.replace(snap, interfaces={**snap.interfaces,
                                                 "in0": stats.InterfaceStats("in0", rx_packets=5, lost_in_ring=7)})
    assert snap.lost == 7 and snap.lost_in_ring == 7
    data = stats.as_json(snap, STATUS)
    jsonschema.validate(data, SCHEMA)
    assert data["totals"]["lost_in_ring"] == 7 and data["interfaces"]["in0"]["lost_in_ring"] == 7
    assert stats.from_json(data)[0] == snap
    assert "lost in userspace ring on in0" in text(render.drops_table(snap, None))


def test_json_of_another_schema_is_refused():
    data = stats.as_json(snapshot(1.0, 1), STATUS)
    data["schema_version"] = 99
    with pytest.raises(ValueError, match="schema 99"):
        stats.from_json(data)


def test_exposition_parses_and_matches_the_snapshot():
    snap = snapshot(3.5, 1234, lost=9, ttl_drops=2)
    families = {f.name: f for f in text_string_to_metric_families(exposition(snap, STATUS))}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert families["mcr_xdp_verdict_packets"].type == "counter"
    assert samples[("mcr_xdp_verdict_packets_total", (("reason", "redirect"),))] == 1234
    assert samples[("mcr_xdp_rule_dropped_total", (("interface", "in0"), ("rule", snap.rules[1].rule),
                                                    ("rule_id", "3")))] == 2
    assert samples[("mcr_xdp_output_packets_total", (("interface", "out1"), ("output", "out1"),
                                                      ("rule_id", "3")))] == 1234
    assert samples[("mcr_xdp_cpu_packets_total", (("cpu", "1"),))] == 2
    assert samples[("mcr_xdp_interface_lost_after_redirect_total", (("interface", "out0"),))] == 9
    assert samples[("mcr_xdp_uptime_seconds", ())] == 61.0


def test_exposition_escapes_label_values():
    snap = stats.Snapshot(1.0, {}, (stats.RuleStats(0, 'in0/a"b\\c', "in0", 1, 1, 1, 0),))
    families = list(text_string_to_metric_families(exposition(snap, STATUS)))
    rule_labels = [s.labels["rule"] for f in families for s in f.samples if "rule" in s.labels]
    assert rule_labels and all(v == 'in0/a"b\\c' for v in rule_labels)


@pytest.mark.parametrize("addr, expected", [("127.0.0.1:9477", ("127.0.0.1", 9477)), (":9477", ("0.0.0.0", 9477)),
                                            ("[::1]:80", ("::1", 80))])
def test_metrics_addr(addr, expected):
    assert parse_addr(addr) == expected


@pytest.mark.parametrize("addr", ["9477", "host:", "host:0", "host:70000", "host:x"])
def test_bad_metrics_addr(addr):
    with pytest.raises(UsageError, match="HOST:PORT"):
        parse_addr(addr)


def test_dashboard_text():
    prev, cur = snapshot(10.0, 1000), snapshot(12.0, 3000, lost=50, ttl_drops=10)
    shown = text(render.dashboard(cur, stats.rate(prev, cur), STATUS))
    assert "up 00:01:01" in shown and "in0 (xdp-native, prog 42)" in shown
    assert "losing 25 pps outside the datapath" in shown
    assert "in0/239.1.1.1:5001=out0/239.2.2.2:5002" in shown
    assert "-> out1" in shown  # fan-out rows per output
    assert "1.0 k" in shown  # the rule's rate
    assert "lost after redirect on out0" in shown
    assert "drop_ttl" in shown
    assert "q or Ctrl-C quits" in shown


def test_counter_line():
    prev, cur = snapshot(10.0, 1000), snapshot(12.0, 3000, lost=50)
    assert render.counter_line(cur, stats.rate(prev, cur)) == (
        "forwarded 6000 dropped 0 passed 7 lost-after-redirect 50 | 2.0 kpps forwarded, 0 pps dropped")
    assert render.counter_line(snapshot(1.0, 0), None) == "forwarded 0 dropped 0 passed 7"


def test_si_units():
    assert [render.si(v, "pps") for v in (0, 999, 1000, 1500000, 2.5e9)] == ["0 pps", "999 pps", "1.0 kpps",
                                                                             "1.5 Mpps", "2.5 Gpps"]


def test_ipv6_rules_keep_their_brackets():
    """Rich reads "[ff3e::1]" as markup unless the cell is plain Text."""
    rule = "uxr0/[ff3e::1]:5001=uxr1/[ff3e::2]:5002,uxr2"
    assert rule in text(render.rule_list([{"id": 0, "rule": rule}]))
    out = stats.OutputStats("uxr1/[ff3e::2]:5002", "uxr1", 5, 500)
    snap = stats.Snapshot(1.0, {}, (stats.RuleStats(0, rule, "uxr0", 5, 500, 5, 0, (out, out)),), (), {})
    shown = text(render.dashboard(snap, None, STATUS))
    assert rule in shown and "-> uxr1/[ff3e::2]:5002" in shown


def test_status_text_shows_the_notices():
    st = {**STATUS, "rules": [], "notices": ["rule 0: an output has no XDP transmit [vx0]"],
          "interfaces": [{"name": "in0", "mode": "xdp-native", "prog_id": 42, "rules": 1, "joins": 1}]}
    shown = text(render.status(st)[1])
    assert "notice: rule 0: an output has no XDP transmit [vx0]" in shown


def test_stream_health_in_json_prometheus_and_tables():
    """A rule's health goes everywhere its counters go: the JSON (schema and
    round trip), Prometheus (lost as a gauge: a late packet takes it back),
    the stats tables and status."""
    from mcr_xdp.health import Counts

    snap = snapshot(3.5, 100)
    checked = Counts("mpegts", received=90, lost=3, duplicates=1, reordered=2, ssrc=0x11223344, ts_packets=630,
                     cc_errors=4)
    snap = dataclasses.replace(snap, rules=(dataclasses.replace(snap.rules[0], health=checked), *snap.rules[1:]))
    data = stats.as_json(snap, STATUS)
    jsonschema.validate(data, SCHEMA)
    assert data["rules"][0]["health"]["cc_errors"] == 4 and data["rules"][1]["health"] is None
    assert stats.from_json(json.loads(json.dumps(data)))[0] == snap
    families = {f.name: f for f in text_string_to_metric_families(exposition(snap, STATUS))}
    assert families["mcr_xdp_rule_health_lost"].type == "gauge"
    assert [s.value for s in families["mcr_xdp_rule_health_lost"].samples] == [3]
    assert [s.labels["kind"] for s in families["mcr_xdp_rule_health_cc_errors"].samples] == ["mpegts"]
    shown = text(render.snapshot_health(snap))
    assert "0x11223344" in shown and "stream health" in shown
    assert render.snapshot_health(snapshot(3.5, 100)) is None
    row = {"id": 0, "rule": "in0/[ff3e::1]:5001=out0;health=mpegts", **checked.as_json()}
    st = {**STATUS, "interfaces": [], "health": [row]}
    assert "[ff3e::1]:5001" in "".join(text(r) for r in render.status(st) if not isinstance(r, str))


def test_merged_streams_in_json_prometheus_and_tables():
    """A merged stream shows on each leg in the JSON, once in Prometheus
    (labelled by its legs) and in the stats table with a row per leg."""
    from mcr_xdp.health import Counts, MergeCounts

    snap = snapshot(3.5, 100)
    merged = MergeCounts("rtp", 2, received=190, forwarded=99, copies=91, lost=1, reordered=4)
    legs = ("in0/239.1.1.1:5001|in1/239.1.1.2:5001=out0/239.2.2.2:5002;merge=rtp",
            "in1/239.1.1.2:5001|in0/239.1.1.1:5001=out0/239.2.2.2:5002;merge=rtp")
    rules = tuple(dataclasses.replace(snap.rules[0], rule_id=i, rule=text, merge=merged,
                                      health=Counts("rtp", received=95, lost=5, first_copies=50 - i,
                                                    suppressed=45 + i))
                  for i, text in enumerate(legs))
    snap = dataclasses.replace(snap, rules=rules)
    data = stats.as_json(snap, STATUS)
    jsonschema.validate(data, SCHEMA)
    assert [r["merge"]["copies"] for r in data["rules"]] == [91, 91]
    assert stats.from_json(json.loads(json.dumps(data)))[0] == snap
    families = {f.name: f for f in text_string_to_metric_families(exposition(snap, STATUS))}
    assert [(s.labels["stream"], s.value) for s in families["mcr_xdp_merge_lost"].samples] \
        == [("in0/239.1.1.1:5001|in1/239.1.1.2:5001", 1)]
    assert families["mcr_xdp_merge_copies"].samples[0].value == 91
    assert [s.value for s in families["mcr_xdp_rule_health_first_copies"].samples] == [50, 49]
    shown = text(render.merge_table(snap))
    assert "merged streams" in shown and "leg in1/239.1.1.2:5001" in shown and "-> out0/239.2.2.2:5002" in shown
    assert render.merge_table(snapshot(3.5, 100)) is None


def test_rates_json_matches_schema_and_round_trips():
    rates = stats.rate(snapshot(10.0, 1000), snapshot(12.0, 3000, lost=50, ttl_drops=10))
    data = stats.as_json(snapshot(12.0, 3000, lost=50, ttl_drops=10), STATUS, rates)
    jsonschema.validate(data, SCHEMA)
    assert data["rates"]["rules"][1] == {"id": 3, "pps": pytest.approx(1005), "bps": pytest.approx(1005 * 800),
                                         "outputs": [pytest.approx(1000), pytest.approx(1000)]}
    assert stats.rates_from_json(json.loads(json.dumps(data))["rates"]) == rates
    jsonschema.validate(stats.as_json(snapshot(12.0, 3000), STATUS), SCHEMA)  # no rates: null
    assert stats.rates_from_json(None) is None


def test_one_shot_tables_show_rates_cpus_and_outputs():
    prev, cur = snapshot(10.0, 1000), snapshot(12.0, 3000)
    rates = stats.rate(prev, cur)
    shown = text(render.rules_live(cur, rates)) + text(render.cpus_table(cur, rates)) + text(render.header(cur, rates,
                                                                                                         STATUS))
    assert "1.0 k" in shown and "forwarding 2.0 kpps" in shown  # rule 0 at 1000 pps; 2000 in all
    assert "-> out1" in shown and "CPU" in shown.upper()


def test_status_rows_show_rates_and_the_pid():
    rule = "in0/[ff3e::1]:5001=out0/[ff3e::2]:5002"
    st = {**STATUS, "pid": 4242, "rates_seconds": 5.0,
          "rules": [{"id": 7, "rule": rule, "pps": 1500.0, "bps": 1.2e7}],
          "interfaces": [{"name": "in0", "mode": "xdp-native", "prog_id": 42, "rules": 1, "joins": 1}]}
    shown = "".join(text(r) for r in render.status(st))
    assert "pid 4242" in shown and "rates over the last 5.0 s" in shown
    assert rule in shown and "1.5 k" in shown and "12.0 Mbit/s" in shown
    # Before the relay's second tick there are no rates: no empty columns.
    plain = text(render.rule_list([{"id": 7, "rule": rule}]))
    assert rule in plain and "pps" not in plain


class _Relay:
    """What Service asks of a relay, for the sampling logic alone."""

    def __init__(self):
        self.snap = snapshot(0.0, 0)

    def snapshot(self):
        return self.snap

    def status(self):
        return {**STATUS, "rules": [{"id": 0, "rule": "in0/239.1.1.1:5001=out0/239.2.2.2:5002"},
                                    {"id": 3, "rule": "in0/239.1.1.3:5001=out0/239.2.2.2:5002,out1"}]}


def test_service_rates_from_the_daemons_samples():
    from mcr_xdp.service import Service

    relay = _Relay()
    service = Service(relay)
    assert service.stats()["rates"] is None and "pid" in service.status() and "pps" not in service.status()["rules"][0]
    service.sampled(snapshot(10.0, 1000))
    service.sampled(snapshot(15.0, 6000))  # a tick: 1000 pps per rule
    st = service.status()
    assert st["rates_seconds"] == 5.0 and [r["pps"] for r in st["rules"]] == [pytest.approx(1000)] * 2
    relay.snap = snapshot(15.5, 6500)  # asked half a second after the tick: the tick's rates
    assert service.stats()["rates"]["seconds"] == 5.0
    relay.snap = snapshot(17.0, 10000)  # two seconds after: since the tick
    rates = service.stats()["rates"]
    assert rates["seconds"] == 2.0 and rates["rules"][0]["pps"] == pytest.approx(2000)
