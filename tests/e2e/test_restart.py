"""A relay killed with SIGKILL and started again with the same command:
the new one swaps the orphaned program for its own in one step
(XDP_FLAGS_REPLACE, or the TC filter replaced in place), so a stream
running through both loses nothing; it takes over the killed relay's
pinned counter maps, so the counts go on as if nothing happened."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from mcr_xdp import abi, pins
from tests.fixtures.relay import SCALE, relay_cli, result, start_receiver, start_relay, start_sender

pytestmark = pytest.mark.e2e

RULE = "239.1.1.1:5001=out0/239.2.2.2:5002"


def kill_and_restart(chain, mode: str, count: int, rate: float, before_restart=lambda: None) -> dict:
    """A stream through a relay killed with SIGKILL and started again with
    the same command; returns the receiver's result."""
    relay = start_relay(chain, chain.IN, "--mode", mode, "--rule", RULE)
    receiver = start_receiver(chain, "239.2.2.2", 5002, count, idle=3.0 * SCALE)
    sender = start_sender(chain, "239.1.1.1", 5001, count, rate=rate)
    time.sleep(0.5 * SCALE)
    relay.stop(sig=9)  # its program forwards on, orphaned
    before_restart()
    start_relay(chain, chain.IN, "--mode", mode, "--rule", RULE)
    sender.wait_for('"sent"', timeout=60 * SCALE)
    return result(receiver)


def stopped_clean(chain) -> None:
    assert chain.procs[-1].stop() == 0
    assert chain.exec(chain.relay_in.ns, "ip", "link", "show", chain.IN).stdout.count("xdp") == 0
    assert "mcr_tc_relay" not in chain.exec(chain.relay_in.ns, "tc", "filter", "show", "dev", chain.IN,
                                            "ingress").stdout
    assert "clsact" not in chain.exec(chain.relay_in.ns, "tc", "qdisc", "show", "dev", chain.IN).stdout


@pytest.mark.parametrize("mode", ["xdp-native", "xdp-generic", "tc"])
def test_kill_and_restart_loses_nothing(chain, mode):
    count, rate = 60_000, 10_000 / SCALE  # 6 s of stream; the restart takes 2-3 s of it
    got = kill_and_restart(chain, mode, count, rate)
    assert (got["unique"], got["missing"], got["duplicates"]) == (count, 0, 0), got

    stats = json.loads(relay_cli(chain, "stats", "--json").stdout)
    assert stats["rules"][0]["forwarded"] == count, stats["rules"]  # counted by both programs, in one map
    assert stats["rules"][0]["outputs"][0]["packets"] == count, stats["rules"]  # its output counter too
    notices = stats["status"]["notices"]
    assert any("took over from the" in n and "a killed relay left" in n for n in notices), notices
    assert any("counters go on from the maps the killed relay" in n for n in notices), notices
    stopped_clean(chain)


def test_restart_by_another_abi_version_loses_nothing_and_counts_again(chain):
    """An upgrade whose datapath changed its maps' layout (another ABI
    version, made here by rewriting the killed relay's state): the program
    is still swapped in one step, so no packet is lost, but the old maps
    can't be read with the new layout: counting starts again, and says so.
    9 s of stream: the new relay must come up while it still flows (4 s on
    a quiet host, 6-7 s on a busy one), or it has nothing to count."""
    count, rate = 90_000, 10_000 / SCALE

    def older_abi():
        path = pins.state_path(f"netns-{chain.relay_in.ns}")
        state = json.loads(path.read_text())
        path.write_text(json.dumps({**state, "abi_version": abi.ABI_VERSION - 1}))

    got = kill_and_restart(chain, "xdp-native", count, rate, older_abi)
    assert (got["unique"], got["missing"], got["duplicates"]) == (count, 0, 0), got
    stats = json.loads(relay_cli(chain, "stats", "--json").stdout)
    assert 0 < stats["rules"][0]["forwarded"] < count, stats["rules"]
    assert any("counters start again: the maps the killed relay (pid" in n and
               f"are of datapath ABI version {abi.ABI_VERSION - 1}" in n for n in stats["status"]["notices"]), stats
    stopped_clean(chain)


def test_killed_userspace_worker_runs_again(chain):
    """A userspace worker killed under traffic: the other worker carries its
    share at once (the dead one's sockets leave the fanout groups), a new
    worker takes its place, and every stream is exact again afterwards."""
    streams, per_stream = 4, 4_000
    rules = [a for i in range(streams) for a in ("--rule", f"239.10.0.{i + 1}:5001=out0/239.20.0.{i + 1}:5002")]
    start_relay(chain, chain.IN, "--mode", "userspace", "--workers", "2", "--interval", "0.5", *rules)
    workers = json.loads(relay_cli(chain, "status", "--json").stdout)["userspace"]["workers"]

    receiver = start_receiver(chain, "239.20.0.1", 5002, per_stream, streams=streams, idle=3.0 * SCALE)
    sender = start_sender(chain, "239.10.0.1", 5001, per_stream, rate=1_000 / SCALE, streams=streams)
    time.sleep(1.0 * SCALE)
    os.kill(workers[0]["pid"], signal.SIGKILL)
    sender.wait_for('"sent"', timeout=60 * SCALE)
    during = result(receiver)
    # Lost: what sat in the dead worker's ring and what reached its sockets
    # before the relay closed them (at once, on SIGCHLD): a few frames.
    assert all(got["duplicates"] == 0 and got["missing"] <= per_stream // 100 for got in during.values()), during

    status = json.loads(relay_cli(chain, "status", "--json").stdout)["userspace"]
    assert status["restarts"] == 1, status
    assert [w["alive"] for w in status["workers"]] == [True, True], status
    assert status["workers"][0]["pid"] != workers[0]["pid"]
    receiver = start_receiver(chain, "239.20.0.1", 5002, per_stream, streams=streams)
    start_sender(chain, "239.10.0.1", 5001, per_stream, rate=1_000 / SCALE, streams=streams)
    after = result(receiver)
    assert all((got["unique"], got["missing"], got["duplicates"]) == (per_stream, 0, 0) for got in after.values()), \
        after
