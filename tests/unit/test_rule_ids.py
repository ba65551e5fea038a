"""Rule ids are never given twice in a relay's life; the indexes behind
them (where the backends keep a rule) are reused and stay below
abi.MAX_RULES (relay.RuleIds, docs/architecture.md, Rule ids).

The relay runs here over a backend that only records what it is given, on
interfaces that exist only in the test (links.lookup is replaced): no
kernel, no root."""

from __future__ import annotations

import pytest

from mcr_xdp import abi, metrics, pins
from mcr_xdp import relay as relay_mod
from mcr_xdp.backends import Attachment, InstalledRule
from mcr_xdp.errors import RuleError
from mcr_xdp.links import Link
from mcr_xdp.modes import Mode
from mcr_xdp.relay import Relay, RelayConfig, RuleIds
from mcr_xdp.rules import parse_rule
from mcr_xdp.service import Service

IN = "rid-in0"
LINKS = {name: Link(name, ifindex, bytes([2, 0, 0, 0, 0, ifindex % 256]), "veth", True)
         for ifindex, name in enumerate((IN, "rid-out0", "rid-out1"), start=9000)}


def rule(n: int, out: str = "rid-out0") -> str:
    return f"{IN}/239.1.1.{n}:5001={out}"


# -- the allocator --------------------------------------------------------------


def test_a_new_rule_gets_a_new_id_and_the_lowest_free_index():
    ids = RuleIds()
    assert [ids.take() for _ in range(3)] == [(0, 0), (1, 1), (2, 2)]
    ids.release(0)
    assert ids.take() == (3, 0)  # the index again, never the id
    assert ids.take() == (4, 3)


def test_churn_never_repeats_an_id_and_stays_within_the_indexes():
    """Far more rules over a relay's life than it can hold at once: every
    id is new, every index one of the size's."""
    ids = RuleIds(size=4)
    live: list[tuple[int, int]] = [ids.take() for _ in range(4)]
    given = {rule_id for rule_id, _ in live}
    for n in range(1000):
        _, index = live.pop(n % len(live))
        ids.release(index)
        rule_id, index = ids.take()
        assert rule_id not in given and 0 <= index < 4
        given.add(rule_id)
        live.append((rule_id, index))
        assert ids.in_use == 4 and len({i for _, i in live}) == 4
    assert len(given) == 1004 and ids.next_id == 1004


def test_no_free_index_is_a_rule_error():
    ids = RuleIds(size=2)
    ids.take()
    ids.take()
    with pytest.raises(RuleError, match="more than 2 rules"):
        ids.take()


def test_kept_ids_and_indexes_are_never_given_to_new_rules():
    """A restart that takes over: the old relay's rules keep their (id,
    index); new rules come after every id it gave out."""
    ids = RuleIds(next_id=7)
    assert ids.keep(5, 0) == (5, 0)
    assert ids.keep(2, 3) == (2, 3)
    assert ids.take() == (7, 1)
    with pytest.raises(RuleError):
        ids.keep(9, 3)  # that index is taken
    with pytest.raises(RuleError):
        ids.keep(9, abi.MAX_RULES)


# -- the state file ---------------------------------------------------------------


def test_the_state_carries_ids_indexes_and_the_next_id():
    state = pins.make_state(1, 0.0, {}, {4: (0, parse_rule(rule(1))), 9: (2, parse_rule(rule(2)))}, 12)
    assert pins.state_rules(state) == {4: (0, rule(1)), 9: (2, rule(2))}
    assert pins.next_id(state) == 12


def test_a_state_of_before_version_3_gave_each_rule_its_index_as_id():
    """An upgrade without a gap (SIGQUIT) from a relay that wrote id -> text."""
    old = {"version": 2, "rules": {"0": rule(1), "3": rule(2)}}
    assert pins.state_rules(old) == {0: (0, rule(1)), 3: (3, rule(2))}
    assert pins.next_id(old) == 4


@pytest.mark.parametrize("rules", [
    {"x": rule(1)}, {"1": {"rule": rule(1)}}, {"1": {"rule": rule(1), "index": abi.MAX_RULES}},
    {"1": {"rule": rule(1), "index": "0"}}, {"1": ["a", 0]}, {"-1": rule(1)},
])
def test_entries_of_a_state_that_cannot_be_read_are_left_out(rules):
    assert pins.state_rules({"rules": {"0": rule(5), **rules}}) == {0: (0, rule(5))}


def test_an_index_given_twice_in_a_state_is_kept_once():
    state = {"rules": {"0": {"rule": rule(1), "index": 1}, "1": {"rule": rule(2), "index": 1}}}
    assert pins.state_rules(state) == {0: (1, rule(1))}
    assert pins.state_rules({"rules": "no"}) == {} and pins.next_id({"next_id": True}) == 0


# -- a relay ----------------------------------------------------------------------


class Recorder:
    """A backend that keeps its rules by index, as the datapath does, and
    counts for each index its own number of packets."""

    def __init__(self):
        self.rules: dict[int, InstalledRule] = {}
        self.indexes: set[int] = set()  # every index ever written
        self.counters = self
        self.refuse = False  # put_rule fails, as a kernel may

    def put_rule(self, installed: InstalledRule, links: dict[str, Link], fresh: bool) -> None:
        if self.refuse:
            raise RuleError("the kernel said no")
        held = self.rules.get(installed.index)
        # A new rule never lands on an index another rule holds; a rule
        # rewritten in place keeps its index.
        assert (held is None) if fresh else (held is None or held.rule_id == installed.rule_id)
        self.rules[installed.index] = installed
        self.indexes.add(installed.index)

    def delete_rule(self, installed: InstalledRule) -> None:
        assert self.rules.pop(installed.index).rule_id == installed.rule_id

    def losses(self):
        from mcr_xdp.backends import Losses

        return Losses()

    # CounterSource
    def verdicts(self) -> list[abi.Counter]:
        return [abi.Counter() for _ in range(abi.VERDICT_MAX)]

    def rule_and_outputs(self, index: int, n_outputs: int) -> tuple[abi.RuleCounters, list[abi.Counter]]:
        return abi.RuleCounters(packets=1000 + index), [abi.Counter() for _ in range(n_outputs)]

    def cpu_totals(self) -> list[tuple[int, int]]:
        return []


@pytest.fixture
def relay(monkeypatch) -> Relay:
    """A relay with input IN, as after start, over a Recorder."""
    monkeypatch.setattr(relay_mod, "lookup", lambda names: {n: LINKS[n] for n in names})
    monkeypatch.setattr(relay_mod, "link_counters", lambda names: {})
    r = Relay(RelayConfig([IN], [], no_join=frozenset({IN})))
    r.attachments[IN] = Attachment(LINKS[IN].ifindex, IN, Mode.TC, 0)
    r.backends[Recorder] = Recorder()
    return r


def backend(r: Relay) -> Recorder:
    return r.backends[Recorder]


def add(r: Relay, *texts: str) -> list[int]:
    return [i.rule_id for i in r.add_rules([parse_rule(t) for t in texts])]


def test_add_delete_add_gives_a_new_id(relay):
    assert add(relay, rule(1), rule(2)) == [0, 1]
    relay.delete_rule(0)
    assert add(relay, rule(3)) == [2]
    assert relay.rules[2].index == 0  # where rule 0 was
    relay.delete_rule(2)
    assert add(relay, rule(1)) == [3]  # the same rule again: a new id all the same
    with pytest.raises(RuleError, match="no rule with id 0"):
        relay.delete_rule(0)


def test_stats_and_prometheus_show_a_rule_under_its_id_with_its_index_counters(relay):
    add(relay, rule(1), rule(2))
    relay.delete_rule(0)
    add(relay, rule(3))  # id 2, index 0
    snap = relay.snapshot()
    assert [(r.rule_id, r.rule, r.packets) for r in snap.rules] == [(1, rule(2), 1001), (2, rule(3), 1000)]
    text = metrics.exposition(snap, {})
    assert f'mcr_xdp_rule_packets_total{{rule_id="2",rule="{rule(3)}",interface="{IN}"}} 1000' in text
    assert 'rule_id="0"' not in text


def test_many_adds_and_deletes_keep_ids_unique_and_indexes_few(relay):
    given = []
    for n in range(300):
        given += add(relay, rule(n % 200 + 1))
        if len(relay.rules) > 3:
            relay.delete_rule(min(relay.rules))
    assert given == list(range(300))
    assert backend(relay).indexes == {0, 1, 2, 3}  # never more than 4 rules at once
    assert len(relay.rules) == 3 and sorted(relay.rules) == [297, 298, 299]


def test_a_failed_add_gives_its_index_back_and_no_id_twice(relay):
    add(relay, rule(1))
    backend(relay).refuse = True
    with pytest.raises(RuleError, match="said no"):
        add(relay, rule(2))
    backend(relay).refuse = False
    [rule_id] = add(relay, rule(2))
    assert rule_id == 2 and relay.rules[rule_id].index == 1


def _write(tmp_path, *rules: str):
    path = tmp_path / "relay.toml"
    body = ", ".join(f'"{r.split("/", 1)[1]}"' for r in rules)
    path.write_text(f'[inputs.{IN}]\nrules = [{body}]\njoin = "none"\n')
    return str(path)


def test_a_reload_keeps_the_ids_of_rules_that_stay_and_never_reuses_one(relay, tmp_path):
    """SIGHUP: unchanged and changed rules (same input, source, group and
    port) keep their ids; a new rule's id is one never given, even when it
    takes a deleted rule's place in the file."""
    service = Service(relay, _write(tmp_path, rule(1), rule(2), rule(3)))
    service.reload()
    assert {i: str(r.rule) for i, r in relay.rules.items()} == {0: rule(1), 1: rule(2), 2: rule(3)}
    service.config_path = _write(tmp_path, rule(1), rule(3, "rid-out1"), rule(4))
    result = service.reload()
    assert (result["removed"], result["added"], result["changed"]) == ([rule(2)], [rule(4)], [rule(3, "rid-out1")])
    assert {i: str(r.rule) for i, r in relay.rules.items()} == {0: rule(1), 2: rule(3, "rid-out1"), 3: rule(4)}
    assert relay.rules[3].index == 1  # the deleted rule's index, under a new id
    service.config_path = _write(tmp_path, rule(1), rule(2), rule(3, "rid-out1"), rule(4))
    service.reload()
    assert {i: str(r.rule) for i, r in relay.rules.items()} == {0: rule(1), 2: rule(3, "rid-out1"), 3: rule(4),
                                                                4: rule(2)}
    service.reload()  # the same file again: nothing moves
    assert sorted(relay.rules) == [0, 2, 3, 4]


def test_rule_add_over_the_socket_after_a_delete_answers_a_new_id(relay):
    service = Service(relay)
    assert service.handle("rule.add", {"rules": [rule(1)]}) == [{"id": 0, "rule": rule(1)}]
    assert service.handle("rule.del", {"id": 0}) == {"id": 0, "rule": rule(1)}
    assert service.handle("rule.add", {"rules": [rule(1)]}) == [{"id": 1, "rule": rule(1)}]


def test_a_restart_taking_over_keeps_ids_and_indexes_and_gives_new_ids_after_the_old_ones(relay):
    """The rules the relay before had keep their (id, index), whatever the
    order of the new rule set; a new rule's id comes after every id that
    relay gave, its index is one no kept rule holds."""
    relay._left = pins.make_state(1, 0.0, {}, {3: (0, parse_rule(rule(1))), 8: (1, parse_rule(rule(2)))}, 10)
    relay._install_first([parse_rule(rule(5)), parse_rule(rule(2)), parse_rule(rule(1))], LINKS)
    assert {i: (r.index, str(r.rule)) for i, r in relay.rules.items()} == {
        3: (0, rule(1)), 8: (1, rule(2)), 10: (2, rule(5))}
    assert pins.next_id(relay.pin_state()) == 11
    relay.delete_rule(10)
    assert add(relay, rule(6)) == [11]


def test_a_fresh_start_numbers_the_rules_in_order(relay):
    relay._install_first([parse_rule(rule(2)), parse_rule(rule(1))], LINKS)
    assert {i: str(r.rule) for i, r in relay.rules.items()} == {0: rule(2), 1: rule(1)}
