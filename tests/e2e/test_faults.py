"""The fault matrix under load: two sequence-numbered streams, each through
its own rule and output, while one fault happens. The stream the fault
does not touch loses nothing; the one it does resumes by itself.

Stream A: 239.1.1.1:5001 -> out0/239.2.2.2:5002 (sink 0)
Stream B: 239.1.1.9:5009 -> out1/239.9.9.9:5009 (sink 1)
"""

from __future__ import annotations

import json
import signal
import tempfile
import time
from pathlib import Path

import pytest

from mcr_xdp import control, pins
from tests.fixtures.relay import SCALE, relay_cli, result, send, start_receiver, start_relay, start_sender, until

pytestmark = pytest.mark.e2e

A = ("239.1.1.1", 5001, "239.2.2.2", 5002, 0)
B = ("239.1.1.9", 5009, "239.9.9.9", 5009, 1)
RULE_A = f"{A[0]}:{A[1]}=out0/{A[2]}:{A[3]}"
RULE_B = f"{B[0]}:{B[1]}=out1/{B[2]}:{B[3]}"
COUNT, RATE = 12_000, 2_000 / SCALE  # 6 s a stream


def under_load(chain, fault, streams=(A, B)) -> list[dict]:
    """Both streams at once; fault() one second in; each receiver's result."""
    receivers = [start_receiver(chain, out_group, out_port, COUNT, sink=sink, idle=3.0 * SCALE)
                 for _, _, out_group, out_port, sink in streams]
    senders = [start_sender(chain, group, port, COUNT, rate=RATE) for group, port, *_ in streams]
    time.sleep(1.0 * SCALE)
    fault()
    for sender in senders:
        sender.wait_for('"sent"', timeout=(COUNT / RATE + 60) * SCALE)
    return [result(r) for r in receivers]


def exact(got: dict) -> bool:
    return (got["unique"], got["missing"], got["duplicates"]) == (COUNT, 0, 0)


def relays(chain, stream, count: int = 500) -> int:
    """A short run of stream on its own, after the fault: packets received."""
    group, port, out_group, out_port, sink = stream
    receiver = start_receiver(chain, out_group, out_port, count, sink=sink, idle=2.0 * SCALE)
    send(chain, group, port, count, rate=RATE)
    return result(receiver)["unique"]


def notices(chain) -> list[str]:
    return json.loads(relay_cli(chain, "status", "--json").stdout)["notices"]


TWO_OUTPUTS = pytest.mark.parametrize("chain", [{"outputs": 2}], indirect=True)


@TWO_OUTPUTS
@pytest.mark.parametrize("fault", ["deleted and re-created", "down and up"])
def test_an_output_fault_spares_the_other_stream(chain, fault):
    relay = start_relay(chain, chain.IN, "--rule", RULE_A, "--rule", RULE_B, "--interval", "0.5")
    out1 = chain.relay_out[1]

    def break_out1():
        if fault == "down and up":
            chain.exec(out1.ns, "ip", "link", "set", out1.name, "down")
            until(lambda: "interface out1 is down" in notices(chain), 10 * SCALE)
            chain.exec(out1.ns, "ip", "link", "set", out1.name, "up")
        else:
            chain.exec(out1.ns, "ip", "link", "del", out1.name)  # takes the sink's end with it
            until(lambda: any("output out1 is gone" in n for n in notices(chain)), 10 * SCALE)
            chain.link(out1, chain.sink[1])  # the same names, new ifindexes
        until(lambda: not any("out1" in n for n in notices(chain)), 10 * SCALE)

    got_a, _ = under_load(chain, break_out1)
    assert exact(got_a), got_a
    assert relays(chain, B) == 500  # resumed by itself
    assert relay.stop() == 0
    assert "Traceback" not in relay.stderr()


@TWO_OUTPUTS
def test_rule_churn_and_sighup_storm_lose_nothing(chain):
    """200 rule add/del pairs through the control socket and 20 SIGHUP
    reloads (a third rule in and out of the file) while both streams run."""
    directory = Path(tempfile.mkdtemp(prefix="mcr-e2e-"))
    try:
        sock, cfg = str(directory / "ctl.sock"), directory / "relay.toml"

        def config(*rules: str) -> None:
            body = "".join(f'  "{r}",\n' for r in rules)
            cfg.write_text(f"[inputs.{chain.IN}]\nrules = [\n{body}]\n")

        config(RULE_A, RULE_B)
        relay = start_relay(chain, "--config", str(cfg), "--socket", sock)
        extra = "239.1.1.5:5005=out0/239.5.5.5:5005,out1"

        def reloads() -> int:
            return sum("reloaded" in line for line in relay.lines)

        def storm():
            for i in range(200):
                added = control.request("rule.add", {"rules": [f"{chain.IN}/239.1.2.{i % 250 + 1}:5005=out1"]}, sock)
                control.request("rule.del", {"id": added[0]["id"]}, sock)
                if i % 10 == 0:
                    config(RULE_A, RULE_B, *([extra] if i % 20 == 0 else []))
                    before = reloads()
                    relay.popen.send_signal(signal.SIGHUP)
                    until(lambda n=before: reloads() > n, 10 * SCALE)

        for got in under_load(chain, storm):
            assert exact(got), got
        assert relay.stop() == 0
        assert "Traceback" not in relay.stderr()
    finally:
        for left in directory.iterdir():
            left.unlink()
        directory.rmdir()


@TWO_OUTPUTS
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGQUIT], ids=["SIGKILL", "SIGQUIT"])
@pytest.mark.parametrize("mode", ["xdp-native", "tc"])
def test_restart_loses_nothing_on_either_stream(chain, mode, sig):
    """The relay ends (killed, or SIGQUIT: a restart or an upgrade that
    leaves the programs forwarding) and the same command starts it again."""
    args = (chain.IN, "--mode", mode, "--rule", RULE_A, "--rule", RULE_B)
    relay = start_relay(chain, *args)
    codes = []

    def end_and_restart():
        codes.append(relay.stop(sig=sig))
        start_relay(chain, *args)

    for got in under_load(chain, end_and_restart):
        assert exact(got), got
    assert codes == [-9 if sig == signal.SIGKILL else 75]
    stats = json.loads(relay_cli(chain, "stats", "--json").stdout)
    assert [r["forwarded"] for r in stats["rules"]] == [COUNT, COUNT], stats["rules"]


@TWO_OUTPUTS
@pytest.mark.parametrize("mode, sig, code", [
    ("xdp-native", signal.SIGTERM, 0), ("tc", signal.SIGTERM, 0), ("userspace", signal.SIGTERM, 0),
    # Nothing of a userspace relay outlives it: SIGQUIT detaches, and exits
    # with 75 all the same (a successor is expected).
    ("userspace", signal.SIGQUIT, 75),
], ids=["xdp-native", "tc", "userspace", "userspace-SIGQUIT"])
def test_stop_under_load_leaves_nothing(chain, mode, sig, code):
    relay = start_relay(chain, chain.IN, "--mode", mode, "--rule", RULE_A, "--rule", RULE_B)
    instance = f"netns-{chain.relay_in.ns}"
    codes = []
    got_a, got_b = under_load(chain, lambda: codes.append(relay.stop(sig=sig)))
    assert codes == [code], relay.stderr()
    assert 0 < got_a["unique"] < COUNT and 0 < got_b["unique"] < COUNT  # relayed until the stop, then not
    assert "Traceback" not in relay.stderr()
    ns = chain.relay_in.ns
    assert "xdp" not in chain.exec(ns, "ip", "link", "show", chain.IN).stdout
    assert "clsact" not in chain.exec(ns, "tc", "qdisc", "show", "dev", chain.IN).stdout
    assert not pins.pin_dir(instance).exists() and not pins.state_path(instance).exists()
    assert not Path(f"/run/mcr-xdp/{instance}.sock").exists()
