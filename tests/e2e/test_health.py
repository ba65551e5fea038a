"""Stream health end to end: an RTP stream with known gaps, and a real
MPEG-TS stream from ffmpeg, through rules with ;health=, read back from
`stats --json` (and `status`, Prometheus) while every packet is still
relayed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from mcr_xdp import health
from tests.fixtures.policy import skip_or_fail
from tests.fixtures.relay import relay_cli, result, send, start_receiver, start_relay

pytestmark = pytest.mark.e2e

MODES = {"xdp-native": ("--mode", "xdp-native"), "xdp-generic": ("--mode", "xdp-generic"), "tc": ("--mode", "tc")}
COUNT = 100_000
# 37 gaps of 1 to 4 packets, spread over the stream; one across the 16-bit
# wrap of the RTP sequence number (65,535 -> 0).
GAPS = [(1000 + i * 2600, 1 + i % 4) for i in range(37)]
GAPS[25] = (65534, 3)
SKIP = ",".join(f"{start}-{start + n - 1}" for start, n in GAPS)
MISSING = sum(n for _, n in GAPS)


def _health_of(chain, group: str = "239.1.1.1") -> dict:
    """The health of the rule for group, from `stats --json`."""
    stats = json.loads(relay_cli(chain, "stats", "--json").stdout)
    return next(r for r in stats["rules"] if f"/{group}:" in r["rule"])["health"]


@pytest.mark.parametrize("mode", MODES)
def test_rtp_gaps_are_counted_exactly(chain, mode):
    start_relay(chain, chain.IN, "--rule", "239.1.1.1:5001=out0/239.2.2.2:5002;health=rtp", *MODES[mode])
    receiver = start_receiver(chain, "239.2.2.2", 5002, COUNT - MISSING, idle=2.0)
    sent = send(chain, "239.1.1.1", 5001, COUNT, rate=25_000, extra=("--rtp", "--skip", SKIP))
    assert sent["sent"] == COUNT - MISSING
    got = result(receiver)
    assert (got["unique"], got["duplicates"], got["corrupt"]) == (COUNT - MISSING, 0, 0), got  # all relayed
    h = _health_of(chain)
    assert (h["kind"], h["received"], h["lost"], h["duplicates"], h["reordered"], h["ssrc_changes"], h["invalid"]) \
        == ("rtp", COUNT - MISSING, MISSING, 0, 0, 0, 0), h
    assert h["ssrc"] == 0x6D637278
    if mode == "tc":  # the same numbers everywhere they are shown
        status = json.loads(relay_cli(chain, "status", "--json").stdout)
        rule = f"{chain.IN}/239.1.1.1:5001=out0/239.2.2.2:5002;health=rtp"
        assert [(s["rule"], s["lost"]) for s in status["health"]] == [(rule, MISSING)]
        shown = relay_cli(chain, "status").stdout
        assert "stream health" in shown and str(MISSING) in shown


def test_userspace_mode_checks_the_same(chain):
    """The workers keep the datapath's state (mcr_xdp.fallback.streams): the
    same numbers, in the same places."""
    count, gaps = 20_000, [(1000 + i * 1500, 1 + i % 4) for i in range(11)]
    skip = ",".join(f"{start}-{start + n - 1}" for start, n in gaps)
    missing = sum(n for _, n in gaps)
    start_relay(chain, chain.IN, "--rule", "239.1.1.1:5001=out0/239.2.2.2:5002;health=rtp",
                "--mode", "userspace", "--workers", "2")
    receiver = start_receiver(chain, "239.2.2.2", 5002, count - missing, idle=2.0)
    send(chain, "239.1.1.1", 5001, count, rate=10_000, extra=("--rtp", "--skip", skip))
    assert result(receiver)["unique"] == count - missing
    h = _health_of(chain)
    assert (h["received"], h["lost"], h["duplicates"], h["ssrc"]) == (count - missing, missing, 0, 0x6D637278), h
    status = json.loads(relay_cli(chain, "status", "--json").stdout)
    assert [s["lost"] for s in status["health"]] == [missing]
    assert not any("health" in n for n in status["notices"]), status["notices"]


def _ts_file(tmp_path) -> bytes:
    """Four seconds of a test picture and tone as MPEG-TS (mpeg2video, mp2),
    made by ffmpeg."""
    path = tmp_path / "test.ts"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
                    "-f", "lavfi", "-i", "sine=frequency=1000", "-t", "4", "-c:v", "mpeg2video", "-b:v", "1M",
                    "-c:a", "mp2", "-f", "mpegts", str(path)], check=True, timeout=120)
    return path.read_bytes()


def _removable(data: bytes, every: int) -> list[int]:
    """Indexes of TS packets whose removal is exactly one continuity error:
    with payload, not the null PID, not their PID's first, and the next
    packet of their PID carries payload with the next counter (no
    discontinuity, no repeat); at least `every` packets apart."""
    packets = [data[i:i + 188] for i in range(0, len(data) - len(data) % 188, 188)]
    pids = [((p[1] & 0x1F) << 8) | p[2] for p in packets]
    chosen, kept, last = [], set(), -every
    for i, p in enumerate(packets):
        afc, cc = (p[3] >> 4) & 3, p[3] & 0xF
        if pids[i] == 0x1FFF or not afc & 1 or i - last < every or i in kept or pids[i] not in pids[:i]:
            continue
        j = next((j for j in range(i + 1, len(packets)) if pids[j] == pids[i]), None)
        if j is None or (packets[j][3] >> 4) & 3 != 1 or packets[j][3] & 0xF != (cc + 1) & 0xF:
            continue
        chosen.append(i)
        kept.add(j)  # the packet that sees the gap stays
        last = i
    return chosen


SEND_TS = """
import socket, struct, sys, time
data = open(sys.argv[1], "rb").read()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 16)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("10.200.1.1"))
for n, i in enumerate(range(0, len(data), 1316)):
    s.sendto(data[i:i + 1316], ("239.1.1.3", 5003))
    if n % 50 == 49:
        time.sleep(0.005)
print(n + 1)
"""


def test_a_real_mpegts_stream(chain, tmp_path):
    """ffmpeg's own RTP/MPEG-TS stream: no loss, no continuity error; the
    same file with TS packets cut out: exactly one error per cut."""
    if shutil.which("ffmpeg") is None:
        skip_or_fail("needs ffmpeg (make setup installs it)", "tool")
    data = _ts_file(tmp_path)
    model = health.Tracker("mpegts")
    for i in range(0, len(data), 1316):
        model.datagram(data[i:i + 1316])
    assert model.counts().cc_errors == 0  # ffmpeg's file is continuous
    start_relay(chain, chain.IN, "--rule", "239.1.1.2:5002=out0;health=mpegts",
                "--rule", "239.1.1.3:5003=out0;health=mpegts", "--mode", "xdp-native")

    ff = chain.exec(chain.src.ns, "ffmpeg", "-loglevel", "error", "-re", "-i", str(tmp_path / "test.ts"), "-c", "copy",
                    "-f", "rtp_mpegts", "rtp://239.1.1.2:5002?ttl=16&localaddr=10.200.1.1&pkt_size=1328",
                    check=False)
    assert ff.returncode == 0, ff.stderr
    h = _health_of(chain, "239.1.1.2")
    assert h["received"] > 100 and h["ts_packets"] >= 7 * (h["received"] - 1), h
    assert (h["lost"], h["duplicates"], h["reordered"], h["cc_errors"], h["invalid"]) == (0, 0, 0, 0, 0), h
    assert h["ssrc"] is not None

    cut = _removable(data, every=97)[:41]
    cut_set = set(cut)
    damaged = b"".join(data[i * 188:(i + 1) * 188] for i in range(len(data) // 188) if i not in cut_set)
    (tmp_path / "damaged.ts").write_bytes(damaged)
    model = health.Tracker("mpegts")
    for i in range(0, len(damaged), 1316):
        model.datagram(damaged[i:i + 1316])
    assert model.counts().cc_errors == len(cut) > 20
    sent = chain.exec(chain.src.ns, sys.executable, "-c", SEND_TS, str(tmp_path / "damaged.ts"))
    h = _health_of(chain, "239.1.1.3")
    assert h["received"] == int(sent.stdout), h
    assert (h["ts_packets"], h["cc_errors"], h["invalid"], h["ssrc"]) == (len(damaged) // 188, len(cut), 0, None), h
