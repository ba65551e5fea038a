"""python -m bench packet-tx (bench/packet_tx.py): both ways of sending
deliver every frame to the veth's peer, the ring-only way none, and the
namespaces go away. The timing is the benchmark's business."""

from __future__ import annotations

import json
import os

import pytest

from bench import packet_tx
from mcr_xdp.lab.netns import existing_namespaces

pytestmark = [pytest.mark.root, pytest.mark.e2e]


def test_every_frame_reaches_the_peer_and_nothing_is_left():
    doc = packet_tx.measure(n=packet_tx.FRAMES * 2 + 7, rounds=1)  # the ring wraps twice
    ways = doc["ways"]
    assert ways["send"]["received"] == ways["send"]["sent"]
    assert ways["tx-ring"]["received"] == ways["tx-ring"]["sent"]
    assert ways["ring-only"]["received"] == 0
    assert all(w["us_per_frame"] > 0 for w in ways.values())
    json.dumps(doc)
    assert "tx-ring" in packet_tx.render(doc)
    mine = f"mcrb-{os.getpid()}-"  # unique_prefix("mcrb") of this process
    assert not [ns for ns in existing_namespaces() if ns.startswith(mine)]
