"""Stats end to end: the live view in a real terminal, JSON and Prometheus
from a relay carrying traffic, and losses after redirect made visible."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mcr_xdp import libbpf
from mcr_xdp.lab.netns import Chain, unique_prefix
from tests.fixtures.relay import SCALE, mcr, relay_cli, result, send, start_receiver, start_relay, start_sender

pytestmark = pytest.mark.e2e

RULE = "239.1.1.1:5001=out0/239.2.2.2:5002"


def capture(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def wait_screen(session: str, pattern: str, timeout: float = 20.0 * SCALE) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = capture(session)
        if re.search(pattern, screen, re.M):
            return screen
        time.sleep(0.25)
    raise AssertionError(f"{pattern!r} never appeared; screen:\n{screen}")


def test_live_view_in_tmux_shows_the_rate_and_quits_on_q(chain):
    start_relay(chain, chain.IN, "--rule", RULE)
    # 8 s of traffic, or SCALE times that: the view must start while it flows
    # (make vm-test: ~20 s to start under emulation).
    flow = start_sender(chain, "239.1.1.1", 5001, int(16000 * SCALE), rate=2000)
    session = f"mcrt-{os.getpid()}"
    # The size must come from the terminal, not from COLUMNS/LINES the test
    # process may carry into the tmux server's environment.
    command = (f"env -u COLUMNS -u LINES ip netns exec {chain.relay_in.ns} {mcr()} stats --live --interval 0.5; "
               "echo EXITED $?; sleep 60")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "50", command], check=True)
    try:
        # The rule's row with a rate in the kilo range (2000 pps offered).
        screen = wait_screen(session, r"in0/239\.1\.1\.1:5001=out0/239\.2\.2\.2:5002\s.*\s\d\.\d k\s")
        assert "xdp-native" in screen and "per CPU" in screen
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        screen = wait_screen(session, r"^EXITED 0$")
        assert "Traceback" not in screen
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        flow.stop()


def test_prometheus_matches_json(chain):
    count = 1500
    start_relay(chain, chain.IN, "--rule", RULE, "--metrics-addr", "127.0.0.1:9477")
    receiver = start_receiver(chain, "239.2.2.2", 5002, count)
    send(chain, "239.1.1.1", 5001, count, rate=3000)
    assert result(receiver)["unique"] == count
    snap = json.loads(relay_cli(chain, "stats", "--json").stdout)
    fetch = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9477/metrics').read().decode())"
    text = chain.exec(chain.relay_in.ns, "python3", "-c", fetch).stdout
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    rule = snap["rules"][0]
    assert rule["packets"] == count
    for name, v in snap["verdicts"].items():
        metric = samples[("mcr_xdp_verdict_packets_total", (("reason", name),))]
        if name.startswith("pass_"):
            # Read after the JSON: the host's own IGMP/MLD may pass in between.
            assert metric >= v["packets"]
        else:
            assert metric == v["packets"]
    labels = (("interface", "in0"), ("rule", rule["rule"]), ("rule_id", "0"))
    assert samples[("mcr_xdp_rule_packets_total", labels)] == rule["packets"]
    assert samples[("mcr_xdp_rule_forwarded_total", labels)] == rule["forwarded"] == count
    out = rule["outputs"][0]
    assert samples[("mcr_xdp_output_packets_total", (("interface", "out0"), ("output", out["output"]),
                                                      ("rule_id", "0")))] == out["packets"] == count
    assert sum(v for (n, _), v in samples.items() if n == "mcr_xdp_cpu_forwarded_total") == count


def test_json_watch_prints_one_object_per_line(chain):
    start_relay(chain, chain.IN, "--rule", RULE)
    proc = subprocess.Popen(["ip", "netns", "exec", chain.relay_in.ns, mcr(), "stats", "--watch", "0.2"],
                            stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.terminate()
        proc.wait(10 * SCALE)
    objects = [json.loads(line) for line in lines]
    assert [o["schema_version"] for o in objects] == [1, 1, 1]
    assert objects[0]["timestamp"] < objects[2]["timestamp"]


def test_a_veth_that_cannot_receive_redirects_is_reached_through_tc(chain):
    """Without GRO (and no XDP program) the receiving veth runs no NAPI, so
    its peer has no XDP transmit and a native redirect would be lost: the
    relay sees that (netdev xdp-features) and forwards the rule with the TC
    program beside XDP instead."""
    count = 800
    chain.exec(chain.sink[0].ns, "ethtool", "-K", chain.sink[0].name, "gro", "off")
    start_relay(chain, chain.IN, "--rule", RULE)
    receiver = start_receiver(chain, "239.2.2.2", 5002, count, idle=2.0)
    send(chain, "239.1.1.1", 5001, count, rate=2000)
    assert result(receiver)["unique"] == count
    snap = json.loads(relay_cli(chain, "stats", "--json").stdout)
    assert snap["totals"]["lost_after_redirect"] == 0
    assert snap["status"]["via_tc"] == [{"rule": 0, "input": "in0", "outputs": ["out0"]}]


def _xmit_tracers() -> set[int]:
    """Ids of the loss tracers' transmit programs loaded now (any relay's)."""
    return {i for i in libbpf.prog_ids() if libbpf.prog_name(i) == "mcr_trace_xmit"}


def test_redirect_into_a_veth_whose_peer_is_down_counts_as_lost(chain):
    count = 800
    # The peer down: veth_xdp_xmit takes nothing (-ENXIO), and the kernel
    # drops the frames after the datapath said XDP_REDIRECT.
    chain.exec(chain.sink[0].ns, "ip", "link", "set", chain.sink[0].name, "down")
    before = _xmit_tracers()
    relay = start_relay(chain, chain.IN, "--rule", RULE, "--interval", "1")
    assert len(_xmit_tracers() - before) == 1
    send(chain, "239.1.1.1", 5001, count, rate=2000)
    snap = json.loads(relay_cli(chain, "stats", "--json").stdout)
    assert snap["totals"]["lost_after_redirect"] == count
    assert snap["interfaces"]["out0"]["lost_after_redirect"] == count
    assert snap["status"]["loss_tracer"] is True
    table = relay_cli(chain, "stats").stdout
    assert re.search(rf"lost after redirect on out0\s.*\s{count}\s", table), table
    relay.stop()
    assert any(f"lost-after-redirect {count}" in line for line in relay.lines), relay.lines


@pytest.mark.parametrize("how", ["--no-loss-tracer", "loss_tracer = false"])
def test_without_the_loss_tracer_those_losses_are_left_to_the_interfaces(chain, tmp_path, how):
    """Turned off (on the command line or in the file): no tracepoint
    program is loaded (its cost at every XDP transmit flush is what an
    operator turns it off for); the relay forwards as before, says at start
    and in status that losses after redirect are not counted, and the
    output's own tx_dropped still shows the frames its down peer refused."""
    count = 800
    chain.exec(chain.sink[0].ns, "ip", "link", "set", chain.sink[0].name, "down")
    if how.startswith("--"):
        args = (chain.IN, "--rule", RULE, how)
    else:
        path = tmp_path / "relay.toml"
        path.write_text(f'{how}\n[inputs.{chain.IN}]\nrules = ["{RULE}"]\n')
        args = ("--config", str(path))
    before = _xmit_tracers()
    relay = start_relay(chain, *args)
    assert _xmit_tracers() <= before
    send(chain, "239.1.1.1", 5001, count, rate=2000)
    snap = json.loads(relay_cli(chain, "stats", "--json").stdout)
    assert snap["status"]["loss_tracer"] is False
    assert any("the loss tracer is off" in n for n in snap["status"]["notices"]), snap["status"]["notices"]
    assert snap["totals"]["forwarded"] == count
    assert snap["totals"]["lost_after_redirect"] == 0
    assert snap["interfaces"]["out0"]["tx_dropped"] >= count
    assert relay.stop() == 0
    notices = relay.popen.stderr.read()
    assert "losses after redirect are not counted: the loss tracer is off" in notices, notices


def _ifindexes(topo) -> dict[str, int]:
    links = json.loads(topo.exec(topo.relay_in.ns, "ip", "-j", "link", "show").stdout)
    return {link["ifname"]: link["ifindex"] for link in links}


@pytest.mark.parametrize("drop", ["at redirect", "at the flush"])
def test_losses_of_a_relay_in_another_namespace_are_not_counted(chain, drop):
    """Interface indexes repeat across namespaces: two relays with the same
    (input, output) ifindexes in two namespaces, both losing frames after
    the redirect, each count exactly their own. At redirect: the output is
    down, the redirect fails (xdp:xdp_redirect_err, which the tracer keys by
    program id). At the flush: the output's peer is down, so veth_xdp_xmit
    takes nothing (-ENXIO), which the kernel reports in xdp:xdp_devmap_xmit
    per device; the tracer compares the device's network namespace."""
    counts = {"other": 700, "this": 300}
    other = Chain(unique_prefix("mcrt")).build()
    other.procs = []
    try:
        assert _ifindexes(other) == _ifindexes(chain)  # the same pairs, in another namespace
        for topo in (other, chain):
            if drop == "at redirect":
                topo.exec(topo.relay_in.ns, "ip", "link", "set", topo.OUT, "down")
            else:
                topo.exec(topo.sink[0].ns, "ip", "link", "set", topo.sink[0].name, "down")
        start_relay(other, other.IN, "--rule", RULE)
        start_relay(chain, chain.IN, "--rule", RULE)
        send(other, "239.1.1.1", 5001, counts["other"], rate=2000, size=1000)
        send(chain, "239.1.1.1", 5001, counts["this"], rate=2000, size=1000)
        lost = {name: json.loads(relay_cli(topo, "stats", "--json").stdout)["totals"]["lost_after_redirect"]
                for name, topo in (("other", other), ("this", chain))}
        assert lost == counts
        assert other.procs[-1].stop() == 0 and chain.procs[-1].stop() == 0
    finally:
        for proc in reversed(other.procs):
            proc.stop()
        other.close()
