"""Rule options end to end: `;ttl=N` sends every copy with TTL N, whatever
it came with (TTL 1 included), in every mode; with it, a link-local group
(mDNS) can be relayed, which is refused without it."""

from __future__ import annotations

import pytest

from tests.fixtures.relay import mcr, result, send, start_receiver, start_relay

pytestmark = pytest.mark.e2e

MODES = {"xdp-native": ("--mode", "xdp-native"), "tc": ("--mode", "tc"),
         "userspace": ("--mode", "userspace", "--workers", "2")}


@pytest.mark.parametrize("mode", MODES)
def test_ttl_option_sets_the_outgoing_ttl(chain, mode):
    start_relay(chain, chain.IN, "--rule", "239.1.1.1:5001=out0/239.2.2.2:5002;ttl=7", *MODES[mode])
    receiver = start_receiver(chain, "239.2.2.2", 5002, 600, idle=2.0)
    csum = chain.snmp(chain.sink[0].ns)["InCsumErrors"]
    send(chain, "239.1.1.1", 5001, 300, rate=2000, ttl=16)
    send(chain, "239.1.1.1", 5001, 300, rate=2000, ttl=1, first_seq=300)  # relayed too: it has a TTL of its own
    got = result(receiver)
    assert (got["unique"], got["duplicates"], got["ttls"]) == (600, 0, {"7": 600}), got
    assert chain.snmp(chain.sink[0].ns)["InCsumErrors"] == csum


def test_a_link_local_group_is_relayed_only_with_a_ttl(chain):
    refused = chain.exec(chain.relay_in.ns, mcr(), "attach", chain.IN, "--rule", "224.0.0.251:5353=out0",
                         check=False)
    assert refused.returncode == 2 and "add ;ttl=N" in refused.stderr, refused.stderr

    start_relay(chain, chain.IN, "--rule", "224.0.0.251:5353=out0;ttl=255")
    receiver = start_receiver(chain, "224.0.0.251", 5353, 300, idle=2.0)
    send(chain, "224.0.0.251", 5353, 300, rate=2000, ttl=255)
    got = result(receiver)
    assert (got["unique"], got["ttls"]) == (300, {"255": 300}), got
