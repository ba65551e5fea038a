"""Backend bookkeeping that needs no kernel: devmap slots of single-output
rules, and the refusal of pins written by another ABI version."""

from __future__ import annotations

import json

import pytest

from mcr_xdp import abi, pins
from mcr_xdp.backends.bpf import SlotAllocator, StatAllocator
from mcr_xdp.errors import McrError, RuleError
from mcr_xdp.modes import Mode
from mcr_xdp.rules import parse_rule


def test_rules_on_one_interface_share_its_slot_until_the_last_goes():
    slots = SlotAllocator(4)
    assert slots.acquire(0, 10) == (0, True)
    assert slots.acquire(1, 10) == (0, False)
    assert slots.acquire(2, 11) == (1, True)
    assert slots.release(0) == []  # rule 1 still outputs on 10
    assert slots.release(1) == [0]
    assert slots.in_use == {11: 1}


def test_a_freed_slot_is_reused():
    slots = SlotAllocator(2)
    slots.acquire(0, 10)
    slots.acquire(1, 11)
    slots.release(0)
    assert slots.acquire(2, 12) == (0, True)


def test_churn_through_more_interfaces_than_slots():
    """Interfaces re-created under new ifindexes (VPN, containers): each
    rule's output moves on, the slot goes with it."""
    slots = SlotAllocator(abi.MAX_PORTS)
    previous = None
    for ifindex in range(100, 100 + 3 * abi.MAX_PORTS):
        slot, new = slots.acquire(7, ifindex)  # the new output's slot is written before the old one goes
        assert new and slot in (0, 1) and slot != previous
        assert slots.release(7, keep=(ifindex,)) == ([] if previous is None else [previous])
        previous = slot
    assert len(slots.in_use) == 1


def test_replacing_an_output_keeps_the_new_and_frees_the_old():
    slots = SlotAllocator(4)
    slots.acquire(3, 10)
    slots.acquire(3, 11)  # the rule's new output, before the rule entry is rewritten
    assert slots.held(3) == (10, 11)
    assert slots.release(3, keep=(11,)) == [0]
    assert slots.held(3) == (11,)


def test_no_slot_left_is_a_rule_error():
    slots = SlotAllocator(2)
    slots.acquire(0, 10)
    slots.acquire(1, 11)
    with pytest.raises(RuleError, match="more than 2 output interfaces"):
        slots.acquire(2, 12)


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(pins, "STATE_DIR", tmp_path)
    monkeypatch.setattr(pins, "_bpffs", pins.Bpffs(tmp_path / "bpffs", "a test directory"))
    return tmp_path


def _state(**changes) -> dict:
    st = pins.make_state(1234, 0.0, {"in0": (3, 42, Mode.TC)},
                         {0: (0, parse_rule("in0/239.1.1.1:5001=out0/239.2.2.2:5002"))}, 1)
    return {**st, **changes}


@pytest.mark.parametrize("version", [abi.ABI_VERSION - 1, abi.ABI_VERSION + 1, None])
def test_pins_of_another_abi_version_are_refused(state_dir, version):
    state = _state(abi_version=version) if version is not None else {
        k: v for k, v in _state().items() if k != "abi_version"}
    pins.state_path("x").write_text(json.dumps(state))
    pins.pin_dir("x").mkdir(parents=True)  # the maps would be there: never opened
    with pytest.raises(pins.AbiMismatch) as info:
        pins.read_stats("x")
    assert isinstance(info.value, McrError)
    assert f"reads version {abi.ABI_VERSION}" in str(info.value)
    assert f"ABI version {version if version is not None else 'unknown'}" in str(info.value)


def test_the_state_names_the_mode_as_mode_does():
    """One spelling of a mode: the state of a killed TC relay says tc."""
    state = _state()
    assert state["abi_version"] == abi.ABI_VERSION
    assert state["inputs"] == {"in0": {"ifindex": 3, "prog_id": 42, "mode": "tc"}}
    assert Mode(state["inputs"]["in0"]["mode"]) is Mode.TC


def test_output_counter_keys_follow_the_outputs_of_a_rule():
    """StatAllocator: a rule holds one key per output, keeps them while its
    outputs change (output i counts on), and frees them with the rule."""
    stats = StatAllocator(8)
    keys, new = stats.take(1, 3)
    assert len(set(keys)) == 3 and new == keys
    more, new = stats.take(1, 5)  # two outputs more: the first three keep their keys
    assert more[:3] == keys and len(new) == 2 and set(new).isdisjoint(keys)
    fewer, new = stats.take(1, 2)
    assert fewer == keys[:2] and new == ()
    other, _ = stats.take(2, 6)  # the three given back are taken again
    assert set(other).isdisjoint(fewer)
    with pytest.raises(RuleError, match="outputs across all rules"):
        stats.take(3, 1)
    stats.release(1)
    assert len(stats.take(3, 2)[0]) == 2


def test_output_counter_keys_of_a_killed_relay_go_back_to_its_rules():
    stats = StatAllocator(6)
    stats.adopt({4: (1, 2), 5: (0,)})
    assert stats.take(4, 2) == ((1, 2), ())  # its counters go on: nothing to zero
    taken, _ = stats.take(9, 3)  # a new rule gets what no rule holds (0 may be among them)
    assert not {1, 2} & set(taken)
    assert not set(stats.take(5, 1)[0]) & set(taken)  # never a key another rule holds now


def test_undoing_a_take():
    stats = StatAllocator(4)
    held, _ = stats.take(1, 2)
    stats.take(1, 4)
    stats.restore(1, held)
    assert stats.held(1) == held
    assert len(stats.take(2, 2)[0]) == 2  # the two given back are free again
