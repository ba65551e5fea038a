"""Policers end to end: a stream at twice its rule's ;police= rate gets the
rate through (within 2%), the rest dropped and counted as policed, in every
mode that forwards."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.relay import SCALE, relay_cli, result, send, start_receiver, start_relay

pytestmark = pytest.mark.e2e

MODES = {"xdp-native": ("--mode", "xdp-native"), "tc": ("--mode", "tc"),
         "userspace": ("--mode", "userspace", "--workers", "2")}
LIMIT = int(5000 / SCALE)  # packets a second
SENT = 4 * LIMIT * 2  # four seconds at twice the limit
BURST = max(LIMIT // 50, 1)  # 20 ms at the rate (encode.police_value)


@pytest.mark.parametrize("mode", MODES)
def test_a_policed_rule_delivers_its_rate(chain, mode):
    start_relay(chain, chain.IN, "--rule", f"239.1.1.1:5001=out0/239.2.2.2:5002;police={LIMIT}pps", *MODES[mode])
    receiver = start_receiver(chain, "239.2.2.2", 5002, SENT, idle=2.0)
    sent = send(chain, "239.1.1.1", 5001, SENT, rate=2 * LIMIT)
    got = result(receiver)
    # The bucket starts full, then fills at the rate for as long as the stream lasts.
    expected = LIMIT * sent["seconds"] + BURST
    assert abs(got["unique"] - expected) <= 0.02 * expected, (got, sent)
    assert got["duplicates"] == 0 and got["corrupt"] == 0
    stats = json.loads(relay_cli(chain, "stats", "--json").stdout)
    rule = stats["rules"][0]
    assert rule["forwarded"] == got["unique"] and rule["dropped"] == SENT - got["unique"], rule
    assert stats["verdicts"]["drop_policed"]["packets"] == SENT - got["unique"]
    # The kernel datapath counts its policer's drops per rule; the userspace
    # workers only as the verdict (each worker holds its own bucket).
    assert rule["policed"] == (None if mode == "userspace" else SENT - got["unique"]), rule
