"""The running relay's control socket and SIGHUP reload, end to end: a relay
started through the real CLI in a namespace chain, changed through `mcr-xdp
status|rule` and raw requests over its socket, and through its config file."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mcr_xdp.control import MAX_REQUEST, PROTOCOL_VERSION
from tests.fixtures.control import raw
from tests.fixtures.relay import SCALE, relay_cli, result, send, start_receiver, start_relay

pytestmark = pytest.mark.e2e

RULE_A = "in0/239.1.1.1:5001=out0/239.2.2.1:5002"
RULE_B = "in0/239.1.1.2:5001=out0/239.2.2.2:5002"
RULE_C = "in0/239.1.1.3:5001=out0/239.2.2.3:5002"


@pytest.fixture
def sock():
    """A control socket path of the test's own (short: sun_path has 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="mcr-e2e-"))
    yield str(path / "ctl.sock")
    shutil.rmtree(path)


def cli(chain, sock: str, *args: str):
    """`mcr-xdp ARGS --socket SOCK` in the relay namespace."""
    return relay_cli(chain, *args, "--socket", sock)


def rule_list(chain, sock: str) -> list[dict]:
    proc = cli(chain, sock, "rule", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def rule_texts(chain, sock: str) -> set[str]:
    return {r["rule"] for r in rule_list(chain, sock)}


def status(chain, sock: str) -> dict:
    proc = cli(chain, sock, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def joined(chain) -> set[str]:
    return chain.igmp_groups(chain.relay_in.ns, chain.IN)


def xdp_prog_id(chain, iface: str) -> int:
    words = chain.exec(chain.relay_in.ns, "ip", "-d", "link", "show", "dev", iface).stdout.split()
    return int(words[words.index("prog/xdp") + 2])  # "prog/xdp id N"


def prometheus(chain, port: int) -> dict:
    """The relay's /metrics: (name, sorted labels) -> value."""
    fetch = f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
    text = chain.exec(chain.relay_in.ns, "python3", "-c", fetch).stdout
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def stop_cleanly(relay) -> str:
    """Stop the relay; it must exit 0 without a traceback. Returns its stderr."""
    assert relay.stop() == 0
    stderr = relay.stderr()
    assert "Traceback" not in stderr, stderr
    return stderr


def test_status(chain, sock):
    relay = start_relay(chain, chain.IN, "--rule", RULE_A, "--socket", sock)

    st = status(chain, sock)

    [iface] = st["interfaces"]
    assert iface["name"] == chain.IN
    assert iface["mode"] == "xdp-native"
    assert iface["prog_id"] == xdp_prog_id(chain, chain.IN)
    assert (iface["rules"], iface["joins"]) == (1, 1)
    assert st["rules"] == [{"id": 0, "rule": RULE_A}]
    assert st["uptime"] >= 0
    assert st["config"] is None
    table = cli(chain, sock, "status")
    assert table.returncode == 0, table.stderr
    assert "xdp-native" in table.stdout and RULE_A in table.stdout
    stop_cleanly(relay)


def test_rule_add_list_del(chain, sock):
    relay = start_relay(chain, chain.IN, "--rule", RULE_A, "--socket", sock, "--metrics-addr", "127.0.0.1:9477")

    added = cli(chain, sock, "rule", "add", RULE_B.removeprefix("in0/"))  # one input: INPUT/ may be left out
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == f"added rule 1: {RULE_B}"
    assert rule_list(chain, sock) == [{"id": 0, "rule": RULE_A}, {"id": 1, "rule": RULE_B}]
    assert {"239.1.1.1", "239.1.1.2"} <= joined(chain)
    assert status(chain, sock)["interfaces"][0]["rules"] == 2

    # The new rule is live: its stream arrives rewritten.
    receiver = start_receiver(chain, "239.2.2.2", 5002, 500, idle=2.0)
    send(chain, "239.1.1.2", 5001, 500, rate=2000)
    got = result(receiver)
    assert got["unique"] == 500 and got["destinations"] == {"239.2.2.2:5002": 500}, got

    deleted = cli(chain, sock, "rule", "del", "1")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == f"deleted rule 1: {RULE_B}"
    assert rule_list(chain, sock) == [{"id": 0, "rule": RULE_A}]
    assert "239.1.1.2" not in joined(chain)

    # ... and gone: nothing arrives any more.
    receiver = start_receiver(chain, "239.2.2.2", 5002, 200, idle=1.0, first=3.0)
    send(chain, "239.1.1.2", 5001, 200, rate=2000)
    assert result(receiver)["received"] == 0

    # A rule added now gets an id never given before (a dashboard's rule_id
    # 1 keeps meaning RULE_B), and counts from zero where RULE_B counted.
    added = cli(chain, sock, "rule", "add", RULE_C)
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == f"added rule 2: {RULE_C}"
    assert rule_list(chain, sock) == [{"id": 0, "rule": RULE_A}, {"id": 2, "rule": RULE_C}]
    receiver = start_receiver(chain, "239.2.2.3", 5002, 300, idle=2.0)
    send(chain, "239.1.1.3", 5001, 300, rate=2000)
    assert result(receiver)["unique"] == 300
    snap = json.loads(cli(chain, sock, "stats", "--json").stdout)
    assert [(r["id"], r["rule"], r["packets"]) for r in snap["rules"]] == [(0, RULE_A, 0), (2, RULE_C, 300)]
    samples = prometheus(chain, 9477)
    assert samples[("mcr_xdp_rule_packets_total", (("interface", "in0"), ("rule", RULE_C), ("rule_id", "2")))] == 300
    assert not any(("rule_id", "1") in labels for _, labels in samples)

    by_text = cli(chain, sock, "rule", "del", RULE_A)
    assert by_text.returncode == 0, by_text.stderr
    assert cli(chain, sock, "rule", "del", "2").returncode == 0
    assert rule_list(chain, sock) == []
    again = cli(chain, sock, "rule", "del", "0")
    assert again.returncode == 2  # a bad rule, as the README's exit codes say
    assert again.stderr.strip() == "mcr-xdp: error: no rule with id 0"
    stop_cleanly(relay)


BAD_RULES = [
    # (rules given to `rule add`, part of the one-line error)
    (["239.1.1.5:5001=nope9"], "interface 'nope9' does not exist"),
    (["239.1.1.5:5001=out0", "239.1.1.6:5001=in0"], "would loop"),  # the first alone would be fine
    (["239.1.1.1:5001=out0"], "duplicate rule for in0 239.1.1.1:5001"),
    (["239.1.1.5:5001=" + ",".join(f"out0/239.3.3.{i}:5002" for i in range(17))], "the limit is 16"),
    (["239.9.9.9@239.1.1.5:5001=out0"], "not a unicast address"),
    (["ff3e::5:5001=out0"], "write IPv6 groups in brackets"),
    (["[ff3e::5]:5001=out0/239.3.3.3:5002"], "changes the IP version"),
    (["239.1.1.5:5001"], "has no outputs"),
    (["eth7/239.1.1.5:5001=out0"], "eth7, which is not an input of this relay"),
]


@pytest.mark.parametrize("rules, message", BAD_RULES, ids=[m for _, m in BAD_RULES])
def test_bad_rule_add_changes_nothing(chain, sock, rules, message):
    relay = start_relay(chain, chain.IN, "--rule", RULE_A, "--socket", sock)
    before_rules, before_joins = rule_list(chain, sock), joined(chain)

    proc = cli(chain, sock, "rule", "add", *rules)

    assert proc.returncode == 2, proc.stderr  # README: 2 bad rule, option, config or interface
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith("mcr-xdp: error: ") and message in line, line
    assert rule_list(chain, sock) == before_rules
    assert joined(chain) == before_joins
    stop_cleanly(relay)


BAD_REQUESTS = [
    # (description, bytes, part of the error reply)
    ("malformed JSON", b'{"version": 1, "op"\n', "malformed request"),
    ("not an object", b'["status"]\n', "malformed request"),
    ("oversized", b'{"version": 1, "op": "status", "args": {"x": "' + b"x" * (2 * MAX_REQUEST) + b'"}}\n',
     f"request larger than {MAX_REQUEST} bytes"),
    ("unknown op", b'{"version": 1, "op": "shutdown", "args": {}}\n', "unknown operation 'shutdown'"),
    ("unknown argument", b'{"version": 1, "op": "rule.del", "args": {"all": true}}\n', "rule.del does not take all"),
    ("bad argument", b'{"version": 1, "op": "rule.add", "args": {"rules": "239.1.1.5:5001=out0"}}\n',
     "a non-empty list of rule strings"),
    ("wrong protocol version", b'{"version": 99, "op": "status", "args": {}}\n', "unsupported protocol version 99"),
]


def test_bad_requests_get_error_replies(chain, sock):
    relay = start_relay(chain, chain.IN, "--rule", RULE_A, "--socket", sock)

    for desc, data, message in BAD_REQUESTS:
        reply = raw(sock, data)
        assert reply["version"] == PROTOCOL_VERSION, desc
        assert reply["ok"] is False, desc
        assert message in reply["error"], (desc, reply)
        assert relay.popen.poll() is None, desc

    assert raw(sock, b'{"version": 1, "op": "rule.list", "args": {}}\n') == {
        "version": PROTOCOL_VERSION, "ok": True, "result": [{"id": 0, "rule": RULE_A}]}
    assert status(chain, sock)["rules"] == [{"id": 0, "rule": RULE_A}]
    stop_cleanly(relay)


def write_config(path: Path, *rules: str, extra: str = "") -> None:
    body = ",\n".join(f'    "{r.removeprefix("in0/")}"' for r in rules)
    path.write_text(f'{extra}interval = 1\n\n[inputs.in0]\nrules = [\n{body},\n]\n')


def test_sighup_applies_the_config_difference(chain, sock, tmp_path):
    cfg = tmp_path / "relay.toml"
    write_config(cfg, RULE_A, RULE_B)
    relay = start_relay(chain, "--config", str(cfg), "--socket", sock)
    assert rule_list(chain, sock) == [{"id": 0, "rule": RULE_A}, {"id": 1, "rule": RULE_B}]
    assert status(chain, sock)["config"] == str(cfg)

    changed_a = "in0/239.1.1.1:5001=out0/239.2.2.9:5009"
    write_config(cfg, changed_a, RULE_C)  # A changed, B removed, C added
    relay.popen.send_signal(signal.SIGHUP)

    line = relay.wait_for("reloaded")
    assert line == f"reloaded {cfg}: 1 added, 1 removed, 1 changed"
    rules = rule_list(chain, sock)
    # A changed in place: same id, same counters. C takes B's place in the
    # file, not its id: ids are never given twice.
    assert rules == [{"id": 0, "rule": changed_a}, {"id": 2, "rule": RULE_C}]
    groups = joined(chain)
    assert {"239.1.1.1", "239.1.1.3"} <= groups and "239.1.1.2" not in groups

    # The changed rule forwards to its new group.
    receiver = start_receiver(chain, "239.2.2.9", 5009, 300, idle=2.0)
    send(chain, "239.1.1.1", 5001, 300, rate=2000)
    assert result(receiver)["unique"] == 300

    relay.popen.send_signal(signal.SIGHUP)  # the same file again: nothing to do
    assert relay.wait_for("0 added, 0 removed") == f"reloaded {cfg}: 0 added, 0 removed, 0 changed"
    assert rule_list(chain, sock) == rules
    stop_cleanly(relay)


def test_ids_go_on_through_a_restart_without_a_gap(chain, sock, tmp_path):
    """SIGQUIT, then the same command (a restart or an upgrade without a
    gap): a rule the relay had keeps its id; a rule new to the relay after
    it, even one it had and deleted, gets an id the first one never gave."""
    cfg = tmp_path / "relay.toml"
    write_config(cfg, RULE_A, RULE_B)
    relay = start_relay(chain, "--config", str(cfg), "--socket", sock)
    assert cli(chain, sock, "rule", "add", RULE_C).stdout.strip() == f"added rule 2: {RULE_C}"
    assert cli(chain, sock, "rule", "del", "0").returncode == 0
    assert relay.stop(sig=signal.SIGQUIT) == 75

    again = start_relay(chain, "--config", str(cfg), "--socket", sock)
    assert rule_list(chain, sock) == [{"id": 1, "rule": RULE_B}, {"id": 3, "rule": RULE_A}]
    assert cli(chain, sock, "rule", "add", RULE_C).stdout.strip() == f"added rule 4: {RULE_C}"
    stop_cleanly(again)


BAD_RELOADS = [
    # (description, config text, part of the error)
    ("TOML syntax error", 'interval = 1\n[inputs.in0]\nrules = ["239.1.1.3:5001=out0"\n', "{cfg}:3: Unclosed array"),
    ("bad rule", '[inputs.in0]\nrules = [\n  "239.1.1.3:5001=out0",\n  "10.1.1.1:5001=out0",\n]\n',
     "{cfg}:4: inputs.in0.rules[1]: group 10.1.1.1 is not a multicast group"),
    ("unknown interface", '[inputs.in0]\nrules = ["239.1.1.3:5001=nope9"]\n', "interface 'nope9' does not exist"),
    ("new input interface", '[inputs.in0]\nrules = []\n[inputs.out0]\nrules = []\n',
     "{cfg}: new input interfaces out0 need a restart"),
    ("file removed", None, "{cfg}: cannot read: No such file or directory"),
    # Crashed the relay once (a UnicodeDecodeError escaped the reload).
    ("not UTF-8", b'interval = 1\n# caf\xe9\n[inputs.in0]\nrules = []\n', "{cfg}:2: not UTF-8 (byte 0xe9)"),
]


@pytest.mark.parametrize("text, message", [(t, m) for _, t, m in BAD_RELOADS], ids=[d for d, _, _ in BAD_RELOADS])
def test_sighup_with_a_bad_config_changes_nothing(chain, sock, tmp_path, text, message):
    cfg = tmp_path / "relay.toml"
    write_config(cfg, RULE_A, RULE_B)
    relay = start_relay(chain, "--config", str(cfg), "--socket", sock)
    before_rules, before_joins = rule_list(chain, sock), joined(chain)

    if text is None:
        cfg.unlink()
    elif isinstance(text, bytes):
        cfg.write_bytes(text)
    else:
        cfg.write_text(text)
    relay.popen.send_signal(signal.SIGHUP)

    # The reload runs before the relay serves this request: the signal is
    # pending (and wakes the loop) before the connection is made.
    assert rule_list(chain, sock) == before_rules
    assert joined(chain) == before_joins
    assert relay.popen.poll() is None
    assert not any("reloaded" in line for line in relay.lines)
    stderr = stop_cleanly(relay)
    [line] = [line for line in stderr.splitlines() if "reload" in line]
    assert line.startswith("mcr-xdp: error: reload failed, rules unchanged: "), line
    assert message.format(cfg=cfg) in line, line


def test_stray_signals_leave_the_relay_running(chain, sock):
    """SIGUSR1 and SIGUSR2 would end the process by default and leave its
    program attached without the relay: logged and ignored instead."""
    relay = start_relay(chain, chain.IN, "--rule", RULE_A, "--socket", sock)
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE):
        relay.popen.send_signal(sig)
    assert rule_list(chain, sock) == [{"id": 0, "rule": RULE_A}]  # served after the signals woke the loop
    receiver = start_receiver(chain, "239.2.2.1", 5002, 300, idle=2.0)
    send(chain, "239.1.1.1", 5001, 300, rate=2000)
    assert result(receiver)["unique"] == 300
    stderr = stop_cleanly(relay)
    assert "SIGUSR1 ignored" in stderr and "SIGUSR2 ignored" in stderr, stderr


class PipeLines:
    """What the other end wrote to a pipe so far, read without blocking."""

    def __init__(self, fd: int):
        self.fd = fd
        self.text = ""

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        """The first line containing text."""
        deadline = time.monotonic() + timeout * SCALE
        while True:
            for line in self.text.splitlines():
                if text in line:
                    return line
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self.fd], [], [], left)[0], f"never wrote {text!r}: {self.text}"
            chunk = os.read(self.fd, 65536)
            assert chunk, f"closed without writing {text!r}: {self.text}"
            self.text += chunk.decode()

    def rest(self) -> str:
        """Everything, once the writers closed their ends."""
        while chunk := os.read(self.fd, 65536):
            self.text += chunk.decode()
        return self.text


def test_log_levels_reach_the_journal(chain, sock, tmp_path):
    """Under systemd, whose $JOURNAL_STREAM names the stream it connected
    (here the relay's stderr, a pipe of the test's), every line there
    carries its syslog level <N> for journald; stdout, not that stream,
    stays plain."""
    chain.exec(chain.relay_in.ns, "ip", "link", "set", chain.OUT, "down")
    cfg = tmp_path / "relay.toml"
    write_config(cfg, RULE_A)
    r, w = os.pipe()
    st = os.fstat(w)
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    try:
        relay = start_relay(chain, "--config", str(cfg), "--socket", sock, env=env, stderr=w)
    finally:
        os.close(w)
    with os.fdopen(r, "rb", buffering=0) as reader:
        journal = PipeLines(reader.fileno())
        assert journal.wait_for("out0 is down") == "<5>mcr-xdp: notice: interface out0 is down"  # at start
        chain.exec(chain.relay_in.ns, "ip", "link", "set", chain.OUT, "up")
        assert journal.wait_for("out0 is up") == "<5>mcr-xdp: notice: interface out0 is up"
        relay.popen.send_signal(signal.SIGUSR1)
        assert journal.wait_for("SIGUSR1").startswith("<4>mcr-xdp: SIGUSR1 ignored")
        cfg.write_text("interval = \n")
        relay.popen.send_signal(signal.SIGHUP)
        assert journal.wait_for("reload failed").startswith("<3>mcr-xdp: error: reload failed, rules unchanged: ")
        assert relay.stop() == 0
        lines = journal.rest().splitlines()
    assert all(re.match(r"<[345]>mcr-xdp: ", line) for line in lines), lines
    assert "Traceback" not in "\n".join(lines)
    assert "relaying; Ctrl-C or SIGTERM detaches" in relay.lines
    assert not any(line.startswith("<") for line in relay.lines), relay.lines


def test_json_log_lines(chain, sock):
    """--log-format json: every line of stdout and stderr one JSON object
    with ts, level and msg; counter lines carry their numbers."""
    relay = start_relay(chain, chain.IN, "--rule", RULE_A, "--socket", sock, "--log-format", "json",
                        "--interval", "0.2")
    relay.popen.send_signal(signal.SIGUSR1)
    send(chain, "239.1.1.1", 5001, 200, rate=2000)
    relay.wait_for('"forwarded_pps"')
    stderr = stop_cleanly(relay)
    out = [json.loads(line) for line in relay.lines]
    err = [json.loads(line) for line in stderr.splitlines()]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", o["ts"]) for o in out + err)
    assert {o["level"] for o in out} == {"info"} and {o["level"] for o in err} <= {"error", "warning", "notice"}
    assert {"level": "warning", "msg": "SIGUSR1 ignored (SIGHUP reloads, SIGINT and SIGTERM stop)"} in [
        {k: o[k] for k in ("level", "msg")} for o in err]
    assert {"msg": f"control socket {sock}", "socket": sock} in [{k: o[k] for k in ("msg", "socket")}
                                                                   for o in out if "socket" in o]
    last = [o for o in out if "forwarded" in o][-1]  # at the end, after the packets
    assert (last["forwarded"], last["dropped"]) == (200, 0), last
    assert out[-1]["msg"] == "detached in0; left the groups"


def test_sighup_says_what_it_drops_and_applies_the_interval(chain, sock, tmp_path):
    """The file is the rule set: a rule added with `rule add` and not in the
    file goes at the next SIGHUP, with a line naming it; a changed interval
    applies, unless --interval fixed it on the command line."""
    cfg = tmp_path / "relay.toml"
    write_config(cfg, RULE_A)
    relay = start_relay(chain, "--config", str(cfg), "--socket", sock)
    assert cli(chain, sock, "rule", "add", RULE_B).returncode == 0
    cfg.write_text(cfg.read_text().replace("interval = 1", "interval = 0.5"))
    relay.popen.send_signal(signal.SIGHUP)
    assert relay.wait_for("reloaded") == f"reloaded {cfg}: 0 added, 1 removed, 0 changed"
    assert rule_list(chain, sock) == [{"id": 0, "rule": RULE_A}]
    stderr = stop_cleanly(relay)
    assert f"removed 1 rule(s) added with `mcr-xdp rule add`: {RULE_B}" in stderr, stderr
    assert "interval now 0.5 s (was 1)" in stderr, stderr

    fixed = start_relay(chain, "--config", str(cfg), "--socket", sock, "--interval", "2")
    cfg.write_text(cfg.read_text().replace("interval = 0.5", "interval = 3"))
    fixed.popen.send_signal(signal.SIGHUP)
    fixed.wait_for("reloaded")
    assert "interval 3 s in the file: --interval 2 is kept" in stop_cleanly(fixed)
