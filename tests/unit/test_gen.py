"""mcr-xdp gen without the network: option checks, what run() reports on
success, interruption and kernel refusals, and the CLI's output and exit
codes (the sender is replaced by a fake; tests/e2e/test_gen_e2e.py sends for
real)."""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
import time

import pytest
from typer.testing import CliRunner

from mcr_xdp import gen
from mcr_xdp.errors import InterfaceError, UsageError
from mcr_xdp.lab import traffic
from mcr_xdp_cli import gen as gen_cli
from mcr_xdp_cli.app import app


def spec(**kw) -> gen.GenSpec:
    return gen.GenSpec(**{"group": "239.1.1.1", "port": 5001, "count": 10, **kw})


class FakeSender:
    """Stands in for traffic.send: records the call, reports progress, and
    optionally fails after some packets."""

    def __init__(self, fail_after: int | None = None, exc: BaseException | None = None,
                 sigint_after: int | None = None):
        self.fail_after, self.exc, self.sigint_after = fail_after, exc, sigint_after
        self.calls = []

    def __call__(self, group, port, count, rate, size, iface, ttl, first_seq, progress=None, stop=None):
        self.calls.append(dict(group=group, port=port, count=count, rate=rate, size=size, iface=iface, ttl=ttl,
                               first_seq=first_seq))
        for i in range(count):
            if stop is not None and stop():
                break
            if self.fail_after is not None and i == self.fail_after:
                raise self.exc
            traffic.payload(first_seq + i, size)
            if i + 1 == self.sigint_after:
                # A real Ctrl-C, delivered after the packet went out and
                # before its progress call: the window that once lost one.
                os.kill(os.getpid(), signal.SIGINT)
            progress(i + 1)
        return 0.01


@pytest.mark.parametrize(
    "kw, error, words",
    [
        ({"group": "10.0.0.1"}, UsageError, "not a multicast group"),
        ({"group": "not-an-ip"}, UsageError, "not an IP address"),
        ({"port": 0}, UsageError, "--port"),
        ({"port": 70000}, UsageError, "--port"),
        ({"count": 0}, UsageError, "--count"),
        ({"rate": -1}, UsageError, "--rate"),
        ({"rate": float("nan")}, UsageError, "--rate"),
        ({"size": traffic.MIN_PAYLOAD - 1}, UsageError, "--size"),
        ({"size": 65508}, UsageError, "--size"),
        ({"group": "ff3e::1", "size": 65488}, UsageError, "--size"),
        ({"ttl": 0}, UsageError, "--ttl"),
        ({"ttl": 256}, UsageError, "--ttl"),
        ({"first_seq": -1}, UsageError, "--first-seq"),
        ({"iface": "no-such-if0"}, InterfaceError, "does not exist"),
    ],
)
def test_validate_rejects(kw, error, words):
    with pytest.raises(error, match=words):
        gen.validate(spec(**kw))


def test_validate_normalises_the_group():
    assert gen.validate(spec(group="FF3E:0::1")).group == "ff3e::1"
    assert gen.validate(spec(size=traffic.MIN_PAYLOAD, ttl=1, rate=0)).size == traffic.MIN_PAYLOAD


def test_run_sends_everything_and_reports():
    sender = FakeSender()
    result = gen.run(spec(count=50, rate=0, size=100, iface="lo", ttl=3, first_seq=7), sender=sender)
    assert sender.calls == [dict(group="239.1.1.1", port=5001, count=50, rate=0, size=100, iface="lo", ttl=3,
                                 first_seq=7)]
    assert (result.sent, result.interrupted, result.last_seq, result.payload_bytes) == (50, False, 56, 5000)
    d = result.as_dict()
    assert d["sent"] == d["requested"] == 50 and d["first_seq"] == 7 and d["last_seq"] == 56


def test_interrupt_keeps_what_was_sent():
    result = gen.run(spec(count=100), sender=FakeSender(fail_after=40, exc=KeyboardInterrupt()))
    assert result.interrupted and result.sent == 40 and result.last_seq == 39


def test_sigint_counts_the_packet_in_flight():
    before = signal.getsignal(signal.SIGINT)
    result = gen.run(spec(count=100), sender=FakeSender(sigint_after=40))
    assert result.interrupted and result.sent == 40 and result.last_seq == 39
    assert signal.getsignal(signal.SIGINT) is before


def test_sigint_stops_a_slow_pace_promptly():
    """A real sender paced at one packet per 10 s stops within a pacing
    slice of Ctrl-C, with the one packet it sent counted."""
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        t0 = time.perf_counter()
        result = gen.run(spec(count=3, rate=0.1, iface="lo"))
        took = time.perf_counter() - t0
    finally:
        timer.cancel()
    assert result.interrupted and result.sent == 1 and took < 2


@pytest.mark.parametrize(
    "code, iface, hint",
    [
        (errno.ENOBUFS, None, "lower --rate"),
        (errno.ENETUNREACH, None, "give --iface"),
        (errno.ENETUNREACH, "lo", "no route for the group's family"),
        (errno.EMSGSIZE, None, "lower --size"),
    ],
)
def test_kernel_refusal_becomes_send_error(code, iface, hint):
    sender = FakeSender(fail_after=3, exc=OSError(code, "refused"))
    with pytest.raises(gen.SendError, match="after 3 packet") as info:
        gen.run(spec(iface=iface), sender=sender)
    assert hint in str(info.value)
    assert info.value.exit_code == 1


def test_ipv6_endpoint_is_bracketed():
    assert gen.endpoint("ff3e::1", 5001) == "[ff3e::1]:5001"
    assert gen.endpoint("239.1.1.1", 5001) == "239.1.1.1:5001"


def test_pps_counts_intervals():
    r = gen.GenResult(spec(count=11), sent=11, seconds=1.0)
    assert r.pps == 10.0
    assert gen.GenResult(spec(count=1), sent=1, seconds=0.0).pps == 0.0


# -- CLI ---------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def fake(monkeypatch):
    sender = FakeSender()
    monkeypatch.setattr(gen.traffic, "send", sender)
    monkeypatch.setattr(gen, "run", lambda s, sender=sender, _run=gen.run: _run(s, sender=sender))
    return sender


def test_cli_summary(fake):
    res = runner.invoke(app, ["gen", "--group", "239.1.1.1", "--port", "5001", "--count", "25", "--size", "64",
                              "--rate", "0"])
    assert res.exit_code == 0, res.output
    assert "sent 25 of 25 packets" in res.stdout and "239.1.1.1:5001" in res.stdout
    assert "sequence 0..24" in res.stdout
    assert fake.calls[0]["count"] == 25


def test_cli_json(fake):
    res = runner.invoke(app, ["gen", "-g", "239.1.1.1", "-p", "5001", "-n", "5", "--first-seq", "10", "--json"])
    assert res.exit_code == 0, res.output
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("{")][0]
    d = json.loads(line)
    assert d["sent"] == 5 and d["first_seq"] == 10 and d["last_seq"] == 14 and not d["interrupted"]


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["-g", "10.1.1.1", "-p", "5001"], 2, "not a multicast group"),
        (["-g", "239.1.1.1", "-p", "5001", "--iface", "no-such-if0"], 2, "does not exist"),
        (["-g", "239.1.1.1", "-p", "5001", "--size", "4"], 2, "--size"),
    ],
)
def test_cli_errors(fake, args, code, words):
    res = runner.invoke(app, ["gen", *args])
    assert res.exit_code == code
    assert "mcr-xdp: error:" in res.output and words in res.output
    assert fake.calls == []


def test_cli_interrupt_prints_summary_and_exits_130(monkeypatch):
    sender = FakeSender(fail_after=4, exc=KeyboardInterrupt())
    monkeypatch.setattr(gen, "run", lambda s, _run=gen.run: _run(s, sender=sender))
    res = runner.invoke(app, ["gen", "-g", "239.1.1.1", "-p", "5001", "-n", "100"])
    assert res.exit_code == 130
    assert "interrupted: sent 4 of 100" in res.stdout


def test_summary_text():
    r = gen.GenResult(gen.validate(spec(group="ff3e::1", count=3, iface="lo")), sent=0, seconds=0.0,
                      interrupted=True)
    assert gen_cli.summary(r).startswith("interrupted: sent 0 of 3 packets")
    assert "[ff3e::1]:5001 via lo" in gen_cli.summary(r) and "nothing sent" in gen_cli.summary(r)
