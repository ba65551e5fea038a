"""VLAN tags on the input: a tag belongs to the input segment, so every
relayed frame leaves untagged, whether the tag came in the frame or, as a
NIC with VLAN receive offload (or a veth peer with tx VLAN offload) hands
it over, in skb metadata. A double-tagged (QinQ) frame is passed to the
host in every mode, never relayed.

The sender's frames are tagged by a clsact egress program on its veth
(vlan_tagger.py); its tx-vlan-offload decides where the tag travels.
Receivers on the outputs have no VLAN interface: a frame that left tagged
never reaches them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mcr_xdp.modes import FAIL_MODES_ENV
from tests.fixtures.relay import SCALE, relay_cli, send, start_receiver, start_relay
from tests.fixtures.shared_outputs import MODES, SCENARIOS, assert_exact, run_scenario

pytestmark = pytest.mark.e2e

TAGGER = Path(__file__).with_name("vlan_tagger.py")
SHARED = SCENARIOS["single and fan-out share an output"]


def tag_sender(topo, where: str, *vids: int) -> None:
    """Tag every frame the sender sends, the tag in the frame or in skb
    metadata."""
    state = "off" if where == "frame" else "on"
    topo.exec(topo.src.ns, "ethtool", "-K", topo.src.name, "txvlan", state, "tx-vlan-stag-hw-insert", state)
    proc = topo.python(topo.src.ns, str(TAGGER), topo.src.name, *map(str, vids))
    out, err = proc.communicate(timeout=60 * SCALE)
    assert proc.returncode == 0 and "tagging" in out, err


def status(topo) -> dict:
    proc = relay_cli(topo, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def verdicts(topo) -> dict[str, int]:
    proc = relay_cli(topo, "stats", "--json")
    assert proc.returncode == 0, proc.stderr
    return {name: v["packets"] for name, v in json.loads(proc.stdout)["verdicts"].items()}


CASES = {  # (where the tag travels, relay options, environment)
    **{f"{mode}, tag in the frame": ("frame", args, None) for mode, args in MODES.items()},
    **{f"{mode}, tag in metadata": ("metadata", args, None) for mode, args in MODES.items() if mode != "generic"},
    # Generic XDP can't see a tag in metadata: the ladder passes over it.
    "auto without native XDP, tag in metadata": ("metadata", (), {FAIL_MODES_ENV: "xdp-native"}),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chain", [{"outputs": 2}], indirect=True)
def test_tagged_input_leaves_untagged(chain, case):
    where, args, env = CASES[case]
    tag_sender(chain, where, 5)
    res = run_scenario(chain, SHARED, *args, env={**os.environ, **env} if env else None)
    assert_exact(res, SHARED, ["239.1.1.1:5001", "239.1.1.9:5009"])
    if env:
        iface = next(i for i in status(chain)["interfaces"] if i["name"] == chain.IN)
        assert iface["mode"] == "tc", iface
        reasons = {n["mode"]: n["reason"] for n in iface["not_used"]}
        assert "VLAN" in reasons["xdp-generic"], reasons


@pytest.mark.parametrize("chain", [{"outputs": 2}], indirect=True)
def test_generic_on_veth_says_it_cannot_remove_metadata_tags(chain):
    relay = start_relay(chain, chain.IN, "--rule", f"239.1.1.1:5001={chain.OUT}", "--mode", "xdp-generic")
    notices = status(chain)["notices"]
    assert any("generic XDP" in n and "VLAN tag" in n and "--mode xdp-native or tc" in n for n in notices), notices
    assert relay.stop() == 0
    assert "VLAN tag" in relay.stderr()


@pytest.mark.parametrize("mode", MODES)
def test_double_tagged_input_is_passed_in_every_mode(chain, mode):
    """QinQ in the frame: the XDP programs see both tags; in TC mode the
    kernel has moved the outer one into metadata before the hook."""
    count = 2000
    tag_sender(chain, "frame", 5, 7)
    start_relay(chain, chain.IN, "--rule", f"239.1.1.1:5001={chain.OUT}/239.2.2.2:5002", *MODES[mode])
    receiver = start_receiver(chain, "239.2.2.2", 5002, count, idle=2.0, first=3.0)  # nothing comes
    send(chain, "239.1.1.1", 5001, count, rate=5000)
    got = json.loads(receiver.wait_for('"received"', timeout=60 * SCALE))
    assert got["received"] == 0, got
    if mode != "userspace":  # the userspace workers' packet filter never takes such a frame
        counts = verdicts(chain)
        assert counts["pass_not_ip"] >= count, counts
        assert counts["redirect"] == 0 and counts["redirect_multi"] == 0, counts
