"""docs/grafana-dashboard.json against the Prometheus exposition: a valid
dashboard whose every query asks only for metrics, labels and label values
that mcr_xdp.metrics.exposition really renders, from a snapshot with every
feature in use; and every metric charted or deliberately not.

A small PromQL reader follows each query's labels through selectors,
aggregations, functions and vector matching, so a renamed metric, label or
verdict fails here instead of drawing an empty panel. The list of metrics
in docs/stats-json.md is checked against the same exposition."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mcr_xdp import abi, rules, stats
from mcr_xdp.backends import Losses
from mcr_xdp.health import Counts, MergeCounts
from mcr_xdp.metrics import exposition

DOCS = Path(__file__).resolve().parents[2] / "docs"
DASHBOARD = DOCS / "grafana-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TARGET_LABELS = {"instance", "job"}  # added by Prometheus at scrape time
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range", "__all"}

# Metrics of the exposition no panel charts, and why.
NOT_CHARTED = {
    # Verdicts are charted in packets; the volume that matters, what is
    # relayed, is charted in bits/s per rule and per output.
    "mcr_xdp_verdict_bytes_total",
}

RULES = [r for text in ("in0/239.1.1.1:5001=out0/239.2.2.2:5002,out1;police=20kpps",
                        "in0/239.1.1.2:5001=out0;health=rtp",
                        "in1/[ff3e::3]:5004=out1/[ff3e::4]:5004;health=mpegts",
                        "in0/239.1.1.5:5001|in1/239.1.1.6:5001=out0/239.3.3.3:5003;merge=rtp")
         for r in rules.parse_rules(text)]
LINKS = {"in0": 1, "in1": 2, "out0": 3, "out1": 4}


class EverySource:
    """A counter source with every optional counter (health, merge,
    policer, per CPU), each non-zero."""

    def verdicts(self):
        return [abi.Counter(10 + v, 1000 * (10 + v)) for v in range(abi.VERDICT_MAX)]

    def rule_and_outputs(self, index, n_outputs):
        return (abi.RuleCounters(100 + index, 10000, 90 + index, 10),
                [abi.Counter(90 + index, 9000) for _ in range(n_outputs)])

    def cpu_totals(self):
        return [(500, 450), (300, 280)]

    def health_counts(self, index, kind):
        return Counts(kind, received=95, lost=5, duplicates=1, reordered=2, ssrc=0x11223344, ssrc_changes=1,
                      invalid=3, ts_packets=630 if kind == "mpegts" else 0, cc_errors=4 if kind == "mpegts" else 0,
                      first_copies=50, suppressed=45)

    def merge_counts(self, index, kind, legs):
        return MergeCounts(kind, legs, received=190, forwarded=99, copies=91, lost=1, reordered=4, invalid=2,
                           ssrc=0x11223344, ssrc_changes=1, resyncs=1)

    def policed(self, index):
        return 7


def rich_snapshot() -> stats.Snapshot:
    """Collected as the relay collects, from rules using every feature."""
    links = {name: (ifindex, {"rx_packets": 1000, "rx_dropped": 1, "tx_packets": 900, "tx_dropped": 2})
             for name, ifindex in LINKS.items()}
    losses = Losses(after_redirect={LINKS["out0"]: 5}, steering=4, ring={"in1": 6})
    return stats.collect([EverySource()], {i: (i, rule) for i, rule in enumerate(RULES)}, losses, links,
                         clock=lambda: 1.0)


@dataclasses.dataclass
class Exposition:
    """What a scrape of the relay holds: per sample name its type, label
    names and the values of each label."""

    types: dict[str, str]
    labels: dict[str, set[str]]
    values: dict[tuple[str, str], set[str]]

    @classmethod
    def of(cls, text: str) -> Exposition:
        types, labels, values = {}, {}, {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                types[sample.name] = family.type
                labels.setdefault(sample.name, set()).update(sample.labels)
                for label, value in sample.labels.items():
                    values.setdefault((sample.name, label), set()).add(value)
        return cls(types, labels, values)


def rendered() -> str:
    return exposition(rich_snapshot(), {"uptime": 61.0})


# --- Just enough PromQL

TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<range>\[[^\]]*\])
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>(){},])
""", re.X)
PRECEDENCE = {"or": 1, "and": 2, "unless": 2, "==": 3, "!=": 3, "<=": 3, "<": 3, ">=": 3, ">": 3,
              "+": 4, "-": 4, "*": 5, "/": 5, "%": 5, "^": 6}
SET_OPS = {"and", "or", "unless"}
AGGREGATIONS = {"sum", "min", "max", "avg", "count", "group", "topk", "bottomk", "stddev", "stdvar"}
COUNTER_FUNCTIONS = {"rate", "irate", "increase", "resets"}
GAUGE_FUNCTIONS = {"delta", "idelta", "deriv"}
VECTOR_FUNCTIONS = {"clamp_min", "clamp_max", "abs", "round", "ceil", "floor"}


class Unreadable(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Value:
    kind: str  # "scalar", "instant" or "range"
    labels: frozenset[str] = frozenset()
    metric: str | None = None  # a range: the metric it selects


class Query:
    """One PromQL expression read against an exposition: the metrics it
    selects, the labels its result keeps, and what in it cannot work
    (problems)."""

    def __init__(self, expr: str, expo: Exposition, where: str, per_instance: bool = True):
        self.expr, self.expo, self.where, self.per_instance = expr, expo, where, per_instance
        self.metrics: set[str] = set()
        self.problems: list[str] = []
        self.tokens = []
        pos = 0
        while pos < len(expr):
            m = TOKEN.match(expr, pos)
            if not m:
                raise Unreadable(f"{where}: cannot read {expr[pos:]!r}")
            if m.lastgroup != "space":
                self.tokens.append((m.lastgroup, m.group()))
            pos = m.end()
        self.i = 0
        self.result = self._binary(0)
        if self.i != len(self.tokens):
            raise Unreadable(f"{where}: unexpected {self._peek()!r}")

    def _peek(self, ahead: int = 0) -> str | None:
        i = self.i + ahead
        return self.tokens[i][1] if i < len(self.tokens) else None

    def _take(self, expected: str | None = None, kind: str | None = None) -> str:
        if self.i >= len(self.tokens):
            raise Unreadable(f"{self.where}: {self.expr!r} ends early")
        got_kind, got = self.tokens[self.i]
        if (expected is not None and got != expected) or (kind is not None and got_kind != kind):
            raise Unreadable(f"{self.where}: expected {expected or kind}, found {got!r}")
        self.i += 1
        return got

    def _problem(self, text: str) -> None:
        self.problems.append(f"{self.where}: {text}")

    def _label_list(self) -> list[str]:
        self._take("(")
        names = []
        while self._peek() != ")":
            names.append(self._take(kind="ident"))
            if self._peek() == ",":
                self._take(",")
        self._take(")")
        return names

    def _binary(self, min_prec: int) -> Value:
        left = self._unary()
        while (op := self._peek()) in PRECEDENCE and PRECEDENCE[op] >= min_prec:
            self._take()
            if self._peek() == "bool":
                self._take()
            on = ignoring = group = None
            if self._peek() in ("on", "ignoring"):
                if self._take() == "on":
                    on = self._label_list()
                else:
                    ignoring = self._label_list()
            if self._peek() in ("group_left", "group_right"):
                side = self._take()
                group = (side, self._label_list() if self._peek() == "(" else [])
            right = self._binary(PRECEDENCE[op] + (op != "^"))
            left = self._match(op, left, right, on, ignoring, group)
        return left

    def _match(self, op, left: Value, right: Value, on, ignoring, group) -> Value:
        if "range" in (left.kind, right.kind):
            raise Unreadable(f"{self.where}: a range vector in {op!r}")
        if op in SET_OPS:
            return Value("instant", left.labels | right.labels if op == "or" else left.labels)
        if left.kind == "scalar" or right.kind == "scalar":
            return right if left.kind == "scalar" else left
        for name in on or ():
            if name not in left.labels or name not in right.labels:
                self._problem(f"on ({name}): not a label of both sides of {op!r}")
        if group is None:
            def keep(labels: frozenset[str]) -> frozenset[str]:
                return labels & set(on) if on is not None else labels - set(ignoring or ())

            if keep(left.labels) != keep(right.labels):
                self._problem(f"{op!r} matches nothing: labels {sorted(keep(left.labels))} against "
                              f"{sorted(keep(right.labels))}")
            return Value("instant", keep(left.labels))
        side, extra = group
        many, one = (left, right) if side == "group_left" else (right, left)
        for name in extra:
            if name not in one.labels:
                self._problem(f"{side} ({name}): not a label of the other side")
        return Value("instant", many.labels | set(extra))

    def _unary(self) -> Value:
        kind, token = self.tokens[self.i] if self.i < len(self.tokens) else (None, None)
        if token in ("-", "+"):
            self._take()
            return self._unary()
        if kind == "number":
            self._take()
            return Value("scalar")
        if token == "(":
            self._take()
            value = self._binary(0)
            self._take(")")
            return value
        if kind != "ident":
            raise Unreadable(f"{self.where}: unexpected {token!r} in {self.expr!r}")
        if token in AGGREGATIONS:
            return self._aggregation()
        if self._peek(1) == "(":
            return self._function()
        return self._selector()

    def _aggregation(self) -> Value:
        op = self._take()
        grouping = None
        if self._peek() in ("by", "without"):
            grouping = (self._take(), self._label_list())
        self._take("(")
        args = [self._binary(0)]
        while self._peek() == ",":
            self._take(",")
            args.append(self._binary(0))
        self._take(")")
        if grouping is None and self._peek() in ("by", "without"):
            grouping = (self._take(), self._label_list())
        vector = args[-1]
        if vector.kind != "instant":
            raise Unreadable(f"{self.where}: {op} of a {vector.kind}")
        if grouping is None:
            return Value("instant")
        how, names = grouping
        for name in names:
            if name not in vector.labels:
                self._problem(f"{op} {how} ({name}): not a label of what it aggregates")
        return Value("instant", frozenset(names) if how == "by" else vector.labels - set(names))

    def _function(self) -> Value:
        name = self._take()
        self._take("(")
        args = []
        while self._peek() != ")":
            args.append(self._binary(0))
            if self._peek() == ",":
                self._take(",")
        self._take(")")
        if name == "vector":
            return Value("instant")
        if name in COUNTER_FUNCTIONS | GAUGE_FUNCTIONS:
            (arg,) = args
            if arg.kind != "range":
                raise Unreadable(f"{self.where}: {name}() of a {arg.kind}")
            wanted = "counter" if name in COUNTER_FUNCTIONS else "gauge"
            if arg.metric in self.expo.types and self.expo.types[arg.metric] != wanted:
                self._problem(f"{name}() of {arg.metric}, a {self.expo.types[arg.metric]}, not a {wanted}")
            return Value("instant", arg.labels)
        if name in VECTOR_FUNCTIONS:
            if not args or args[0].kind != "instant":
                raise Unreadable(f"{self.where}: {name}() needs an instant vector first")
            return args[0]
        raise Unreadable(f"{self.where}: unknown function {name}()")

    def _selector(self) -> Value:
        metric = self._take(kind="ident")
        if not metric.startswith("mcr_xdp_"):
            raise Unreadable(f"{self.where}: {metric!r} is not a metric of the relay (mcr_xdp_*)")
        self.metrics.add(metric)
        known = metric in self.expo.labels
        if not known:
            self._problem(f"{metric}: not in the exposition")
        labels = self.expo.labels.get(metric, set()) | TARGET_LABELS
        matchers = []
        if self._peek() == "{":
            self._take("{")
            while self._peek() != "}":
                name = self._take(kind="ident")
                op = self._take()
                if op not in ("=", "!=", "=~", "!~"):
                    raise Unreadable(f"{self.where}: {op!r} is no label matcher")
                matchers.append((name, op, json.loads(self._take(kind="string"))))
                if self._peek() == ",":
                    self._take(",")
            self._take("}")
        for name, op, value in matchers:
            if name not in labels:
                self._problem(f"{metric}{{{name}{op}...}}: {metric} has no label {name}")
            elif known and "$" not in value and name not in TARGET_LABELS:
                self._check_value(metric, name, op, value)
        if self.per_instance and ("instance", "=", "$instance") not in matchers:
            self._problem(f'{metric}: no instance="$instance" (the panel would mix relays)')
        if self.i < len(self.tokens) and self.tokens[self.i][0] == "range":
            self._take()
            return Value("range", frozenset(labels), metric)
        return Value("instant", frozenset(labels))

    def _check_value(self, metric: str, name: str, op: str, value: str) -> None:
        """A literal value (or each alternative of a regex) is one the
        exposition has: a renamed verdict or kind must not match nothing."""
        present = self.expo.values.get((metric, name), set())
        wanted = value.split("|") if op in ("=~", "!~") else [value]
        for want in wanted:
            if op in ("=~", "!~"):
                found = any(re.fullmatch(want, v) for v in present)
            else:
                found = want in present
            if not found:
                self._problem(f"{metric}{{{name}{op}{value!r}}}: no {name} {want!r} in the exposition")


# --- The dashboard

def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel, also those inside collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def variable_query(variable: dict) -> str:
    query = variable["query"]
    return query["query"] if isinstance(query, dict) else query


LABEL_VALUES = re.compile(r"label_values\((?P<query>.*),\s*(?P<label>\w+)\)", re.S)


def problems(dashboard: dict, text: str) -> tuple[list[str], set[str]]:
    """What in the dashboard's queries the exposition text cannot answer,
    and the metrics its panels chart."""
    expo = Exposition.of(text)
    found, charted = [], set()
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        where = f"variable {variable['name']}"
        m = LABEL_VALUES.fullmatch(variable_query(variable).strip())
        if not m:
            found.append(f"{where}: not label_values(QUERY, LABEL)")
            continue
        query = Query(m["query"], expo, where, per_instance=variable["name"] != "instance")
        found += query.problems
        if m["label"] not in query.result.labels:
            found.append(f"{where}: {m['label']} is not a label of {m['query']}")
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            where = f"panel {panel['title']!r} {target['refId']}"
            query = Query(target["expr"], expo, where)
            found += query.problems
            charted |= query.metrics
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
                if label not in query.result.labels:
                    found.append(f"{where}: legend {{{{{label}}}}} is not a label of the result")
    return found, charted


def test_the_snapshot_exercises_every_feature():
    """Every optional part of a snapshot is present (an exposition omits
    what a snapshot lacks): a new one must be added here too."""
    snap = rich_snapshot()
    for field in dataclasses.fields(stats.RuleStats):
        if field.default in (None, ()):
            assert any(getattr(r, field.name) not in (None, ()) for r in snap.rules), field.name
    assert {r.health.kind for r in snap.rules if r.health} == set(rules.HEALTH_KINDS)
    assert {r.merge.kind for r in snap.rules if r.merge} == set(rules.MERGE_KINDS)
    assert sorted(snap.verdicts) == sorted(v.name.lower() for v in abi.Verdict)
    assert snap.cpus and snap.interfaces and snap.steering_lost
    assert snap.lost_after_redirect and snap.lost_in_ring


def test_it_is_an_importable_dashboard():
    dashboard = load()
    assert dashboard["title"] and dashboard["uid"] and dashboard["id"] is None
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert "__inputs" not in dashboard and "${DS_" not in DASHBOARD.read_text()  # the variable, not an input
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query" and not variables["instance"]["multi"]
    assert all(v.get("datasource", DATASOURCE) == DATASOURCE for v in variables.values())
    every = panels(dashboard)
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells = set()
    for p in every:
        assert p["title"], p
        pos = p["gridPos"]
        assert pos["w"] >= 1 and pos["h"] >= 1 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, f"{p['title']!r} overlaps another panel"
        cells |= mine
        if p["type"] == "row":
            assert "targets" not in p
            continue
        assert p["type"] in ("timeseries", "stat"), p["title"]
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p.get("description"), f"{p['title']!r}: say what the panel shows"
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE and t["expr"].strip(), (p["title"], t["refId"])
            for name in re.findall(r"\$\{?(\w+)", t["expr"]):
                assert name in variables or name in GRAFANA_VARIABLES, f"{p['title']!r}: ${name} is not defined"
    assert {p["type"] for p in every} == {"row", "timeseries", "stat"}


def test_every_query_asks_for_what_the_exposition_has():
    found, charted = problems(load(), rendered())
    assert found == []
    assert len(charted) > 20


def test_every_metric_is_charted_or_deliberately_not():
    _, charted = problems(load(), rendered())
    exposed = set(Exposition.of(rendered()).types)
    assert exposed - charted == NOT_CHARTED
    assert not NOT_CHARTED & charted


@pytest.mark.parametrize("old, new, complaint", [
    ("mcr_xdp_rule_forwarded_total", "mcr_xdp_rule_sent_total", "mcr_xdp_rule_forwarded_total: not in the exposition"),
    ('output="', 'out="', "legend {{output}} is not a label of the result"),
    ('rule_id="', 'id="', "on (rule_id): not a label of both sides"),
    ('reason="redirect_multi"', 'reason="fanout"', "no reason 'redirect_multi' in the exposition"),
    ('kind="mpegts"', 'kind="ts"', "no kind 'mpegts' in the exposition"),
    ("# TYPE mcr_xdp_cpu_packets_total counter", "# TYPE mcr_xdp_cpu_packets_total gauge",
     "rate() of mcr_xdp_cpu_packets_total, a gauge"),
])
def test_a_renamed_metric_label_or_value_is_found(old, new, complaint):
    text = rendered()
    assert old in text
    found, _ = problems(load(), text.replace(old, new))
    assert any(complaint in p for p in found), found


@pytest.mark.parametrize("expr, complaint", [
    ('rate(mcr_xdp_rules{instance="$instance"}[5m])', "rate() of mcr_xdp_rules, a gauge"),
    ('sum by (output) (rate(mcr_xdp_rule_packets_total{instance="$instance"}[5m]))', "by (output)"),
    ('rate(mcr_xdp_rule_packets_total{instance="$instance"}[5m]) / rate(mcr_xdp_output_packets_total'
     '{instance="$instance"}[5m])', "'/' matches nothing"),
    ('mcr_xdp_rules', 'no instance="$instance"'),
])
def test_a_query_that_cannot_work_is_found(expr, complaint):
    found = Query(expr, Exposition.of(rendered()), "test").problems
    assert any(complaint in p for p in found), found


def test_a_metric_outside_the_relay_is_refused():
    with pytest.raises(Unreadable, match="not a metric of the relay"):
        Query('rate(node_network_receive_packets_total{instance="$instance"}[5m])',
              Exposition.of(rendered()), "test")


def expand(name: str) -> list[str]:
    """mcr_xdp_cpu_{packets,forwarded}_total -> both names."""
    m = re.search(r"\{([^{}]*)\}", name)
    if not m:
        return [name]
    return [full for option in m[1].split(",") for full in expand(name[:m.start()] + option + name[m.end():])]


def documented_metrics() -> dict[str, set[str]]:
    """docs/stats-json.md's Prometheus list, each metric with its labels."""
    section = (DOCS / "stats-json.md").read_text().split("## Prometheus", 1)[1]
    found = {}
    for token in re.findall(r"`(mcr_xdp_[^`]+)`", section):
        m = re.fullmatch(r"(?P<name>.*?)(?:\{(?P<labels>[a-z_,]*)\})?", token)  # the labels: a last {...}
        for name in expand(m["name"]):
            found[name] = set(filter(None, (m["labels"] or "").split(",")))
    return found


def test_the_documented_metrics_are_the_exposition():
    assert documented_metrics() == Exposition.of(rendered()).labels
