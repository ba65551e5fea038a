"""A relay killed with SIGKILL: its program keeps forwarding, its pinned
maps keep the counters readable, and `mcr-xdp detach` removes both."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mcr_xdp import pins
from mcr_xdp.lab.proc import Proc
from tests.fixtures.relay import SCALE, mcr, result, send, start_receiver, start_relay

pytestmark = pytest.mark.e2e


def in_relay_netns(chain, *args: str):
    """Run as an operator would in the relay's network namespace: with `ip
    netns exec`, whose mount namespace (and /sys) is the command's own; the
    pins still land on this mount namespace's bpffs, where later commands
    find them."""
    return ["ip", "netns", "exec", chain.relay_in.ns, *args]


@pytest.mark.parametrize("mode", ["xdp-native", "tc"])
def test_killed_relay_stats_from_pins_then_detach(chain, mode):
    instance = f"netns-{chain.relay_in.ns}"
    try:
        relay = Proc(subprocess.Popen(in_relay_netns(chain, mcr(), "attach", chain.IN, "--mode", mode, "--rule",
                                                     "239.1.1.1:5001=out0/239.2.2.2:5002"),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        chain.procs.append(relay)
        relay.wait_for("relaying", timeout=60 * SCALE)
        assert (pins.pin_dir(instance) / "mcr_rules").exists() and pins.state_path(instance).is_file()
        relay.stop(sig=9)

        receiver = start_receiver(chain, "239.2.2.2", 5002, 700)
        send(chain, "239.1.1.1", 5001, 700, rate=2000)
        assert result(receiver)["unique"] == 700  # the orphaned program still forwards

        stats = subprocess.run(in_relay_netns(chain, mcr(), "stats", "--json"), capture_output=True, text=True)
        assert stats.returncode == 0, stats.stderr
        snap = json.loads(stats.stdout)
        assert snap["rules"][0]["rule"] == "in0/239.1.1.1:5001=out0/239.2.2.2:5002"
        assert snap["rules"][0]["forwarded"] == 700
        assert "is gone" in snap["status"]["notices"][0]
        # The killed relay's input, in its own mode, still attached.
        assert [(i["name"], i["mode"], i["attached"]) for i in snap["status"]["interfaces"]] == [
            (chain.IN, mode, True)]
        table = subprocess.run(in_relay_netns(chain, mcr(), "stats"), capture_output=True, text=True)
        assert f"{chain.IN} ({mode}, prog" in table.stdout and "detached" not in table.stdout, table.stdout

        detach = subprocess.run(in_relay_netns(chain, mcr(), "detach", chain.IN), capture_output=True, text=True)
        assert detach.returncode == 0, detach.stderr
        assert "pinned maps" in detach.stdout and "stale control socket" in detach.stdout
        assert not pins.pin_dir(instance).exists() and not pins.state_path(instance).exists()
        gone = subprocess.run(in_relay_netns(chain, mcr(), "stats", "--json"), capture_output=True, text=True)
        assert gone.returncode != 0 and "no relay is running" in gone.stderr
    finally:
        pins.remove(instance)


def _states(chain) -> dict[str, dict]:
    """Instance -> state of the relays of chain's relay namespace."""
    base = f"netns-{chain.relay_in.ns}"
    return {p.name.removesuffix(".state.json"): json.loads(p.read_text())
            for p in pins.STATE_DIR.glob(f"{base}*.state.json")
            if p.name.startswith((f"{base}.", f"{base}@"))}


@pytest.mark.parametrize("chain", [{"inputs": 2}], indirect=True)
def test_relays_with_sockets_of_their_own_keep_their_own_pins(chain, tmp_path):
    """Two relays in one namespace, each with its own --socket: neither a
    failed start nor a stop touches the other's pins or state, detach
    refuses an input a running relay owns, and stats finds a killed relay's
    pins by its socket."""
    inputs = [i.name for i in chain.relay_ins]
    socks = [str(tmp_path / f"relay{i}.sock") for i in range(3)]
    relays = []
    try:
        for name, sock in zip(inputs, socks):
            relay = Proc(subprocess.Popen(in_relay_netns(chain, mcr(), "attach", name, "--socket", sock, "--rule",
                                                         f"239.1.1.1:5001={chain.OUT}/239.2.2.2:5002"),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            chain.procs.append(relay)
            relay.wait_for("relaying", timeout=60 * SCALE)
            relays.append(relay)
        states = _states(chain)
        assert sorted(s["socket"] for s in states.values()) == socks[:2]
        instance = {s["socket"]: i for i, s in states.items()}
        assert all(pins.pin_dir(i).is_dir() for i in states)

        busy = subprocess.run(in_relay_netns(chain, mcr(), "attach", inputs[0], "--socket", socks[2], "--rule",
                                             f"239.1.1.1:5001={chain.OUT}"), capture_output=True, text=True)
        assert busy.returncode == 4, busy.stderr
        refused = subprocess.run(in_relay_netns(chain, mcr(), "detach", inputs[0]), capture_output=True, text=True)
        assert refused.returncode == 4, refused.stderr
        assert f"pid {relays[0].popen.pid}" in refused.stderr and socks[0] in refused.stderr
        assert _states(chain) == states and all(pins.pin_dir(i).is_dir() for i in states)

        assert relays[0].stop() == 0
        assert list(_states(chain)) == [instance[socks[1]]] and pins.pin_dir(instance[socks[1]]).is_dir()
        assert not pins.pin_dir(instance[socks[0]]).exists()

        relays[1].stop(sig=9)
        stats = subprocess.run(in_relay_netns(chain, mcr(), "stats", "--json", "--socket", socks[1]),
                               capture_output=True, text=True)
        assert stats.returncode == 0, stats.stderr
        assert "is gone" in json.loads(stats.stdout)["status"]["notices"][0]
        detach = subprocess.run(in_relay_netns(chain, mcr(), "detach", inputs[1]), capture_output=True, text=True)
        assert detach.returncode == 0, detach.stderr
        assert "pinned maps" in detach.stdout and "stale control socket" in detach.stdout, detach.stdout
        assert _states(chain) == {} and not Path(socks[1]).exists()
    finally:
        for i in _states(chain):
            pins.remove(i)


def test_a_new_relay_sweeps_what_killed_relays_left(chain, tmp_path):
    """A killed userspace relay leaves its state file (its workers end with
    it, nothing else is left): the next relay of the namespace removes it,
    and keeps a killed relay's whose program still forwards."""
    sock = str(tmp_path / "killed.sock")
    killed = Proc(subprocess.Popen(in_relay_netns(chain, mcr(), "attach", chain.IN, "--mode", "userspace",
                                                  "--socket", sock, "--rule", "239.1.1.1:5001=out0/239.2.2.2:5002"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    chain.procs.append(killed)
    killed.wait_for("relaying", timeout=60 * SCALE)
    left = _states(chain)
    assert [s["socket"] for s in left.values()] == [sock]
    killed.stop(sig=9)
    assert _states(chain) == left

    start_relay(chain, chain.IN, "--mode", "userspace", "--rule", "239.1.1.1:5001=out0/239.2.2.2:5002")
    assert list(_states(chain)) == [f"netns-{chain.relay_in.ns}"]
