"""A relay killed with SIGKILL and started again with the same command:
the new one swaps the orphaned program for its own in one step
(XDP_FLAGS_REPLACE), so a stream running through both loses nothing."""

from __future__ import annotations

import json
import time

import pytest

from tests.fixtures.relay import SCALE, relay_cli, result, start_receiver, start_relay, start_sender

pytestmark = pytest.mark.e2e

RULE = "239.1.1.1:5001=out0/239.2.2.2:5002"


@pytest.mark.parametrize("mode", ["xdp-native", "xdp-generic"])
def test_kill_and_restart_loses_nothing(chain, mode):
    count, rate = 20_000, 5_000 / SCALE  # 4 s of stream; the restart takes about 2 s of it
    relay = start_relay(chain, chain.IN, "--mode", mode, "--rule", RULE)
    receiver = start_receiver(chain, "239.2.2.2", 5002, count, idle=3.0 * SCALE)
    sender = start_sender(chain, "239.1.1.1", 5001, count, rate=rate)
    time.sleep(0.5 * SCALE)
    relay.stop(sig=9)  # its program forwards on, orphaned

    again = start_relay(chain, chain.IN, "--mode", mode, "--rule", RULE)
    sender.wait_for('"sent"', timeout=60 * SCALE)
    got = result(receiver)
    assert (got["unique"], got["missing"], got["duplicates"]) == (count, 0, 0), got

    status = json.loads(relay_cli(chain, "status", "--json").stdout)
    assert any("took over from the program a killed relay left" in n for n in status["notices"]), status
    assert again.stop() == 0
    assert chain.exec(chain.relay_in.ns, "ip", "link", "show", chain.IN).stdout.count("xdp") == 0
