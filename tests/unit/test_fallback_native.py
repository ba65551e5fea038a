"""The fallback's compiled inner loop (mcr_xdp/fallback/fastpath.c) against
its model, the Python datapath (forward.py), on the XDP program's packet
table: a frame is relayed in C exactly when forward.py would forward it
through an exact rule without stream checks or a policer, with the same
bytes and the same counters; every other frame is left to Python.

Real ring blocks (the TPACKET_V3 layout the kernel writes) are built in
memory, and the copies go out through real sockets (a Unix datagram
socketpair per output: sendmmsg() is the same call on every socket
family), so this needs neither root nor a network device.
"""

from __future__ import annotations

import ctypes
import os
import random
import socket
import struct
import threading
import time
from dataclasses import replace

import pytest

from mcr_xdp import abi, encode
from mcr_xdp.fallback import counters as cnt
from mcr_xdp.fallback import native
from mcr_xdp.fallback.forward import DROP_NO_NEIGH, DROP_NO_OUTPUT, REDIRECT, REDIRECT_MULTI, Table, entry_message
from mcr_xdp.fallback.packet import TP_STATUS_CSUMNOTREADY, TP_STATUS_USER
from mcr_xdp.rules import parse_rule
from tests.fixtures import xdp_table
from tests.fixtures.packets import Udp4, Udp6
from tests.fixtures.policy import skip_or_fail
from tests.unit.test_fallback_forward import CASES, LO, message, partial, untag

VERDICTS = (REDIRECT, REDIRECT_MULTI, DROP_NO_OUTPUT, DROP_NO_NEIGH)
HEAD = 64  # where a frame's data starts after its tpacket3_hdr (tp_mac)
FIRST = 48  # offset_to_first_pkt: past the block descriptor


@pytest.fixture(scope="module")
def lib():
    found = native.load()
    if found is None:
        skip_or_fail("the userspace inner loop is not built (no C compiler: make setup installs clang)")
    return found


def block(frames: list[bytes], status: int = 0) -> bytearray:
    """A TPACKET_V3 block as the kernel hands it over, holding frames."""
    size = FIRST + sum(HEAD + -(-len(f) // 16) * 16 for f in frames)
    buf = bytearray(size)
    struct.pack_into("=IIIII", buf, 0, 1, 0, TP_STATUS_USER, len(frames), FIRST)
    off = FIRST
    for i, frame in enumerate(frames):
        step = HEAD + -(-len(frame) // 16) * 16
        # tp_next_offset, (sec, nsec), snaplen, len, status, mac
        struct.pack_into("=I8xIIIH", buf, off, step if i + 1 < len(frames) else 0, len(frame), len(frame),
                         status, HEAD)
        buf[off + HEAD: off + HEAD + len(frame)] = frame
        off += step
    return buf


class Output:
    """A socketpair standing for an output: the relay sends on `tx`; a
    thread reads the other end (a Unix datagram queue holds only 10)."""

    def __init__(self):
        self.tx, self._rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.got: list[bytes] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            data = self._rx.recv(65536)
            if not data:
                return
            self.got.append(data)

    def take(self, n: int) -> list[bytes]:
        """The datagrams that arrived, once n have (or 5 s passed), and
        any more a moment later."""
        deadline = time.monotonic() + 5
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(0.01)
        got, self.got = self.got, []
        return got

    def close(self) -> None:
        self.tx.close()
        self._rx.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self._rx.close()


class Rig:
    """A Fast with its counter block and one Output per output ifindex."""

    def __init__(self, lib, outputs=(LO,)):
        self.counters = bytearray(cnt.BLOCK)
        self.c = memoryview(self.counters).cast("Q")
        self.fast = native.Fast(lib, self.counters, VERDICTS)
        self.pairs = {ifindex: Output() for ifindex in outputs}
        self.table = Table()

    def fds(self) -> dict[int, int]:
        return {ifindex: out.tx.fileno() for ifindex, out in self.pairs.items()}

    def put(self, msg: dict) -> None:
        entry = self.table.put(msg)
        self.fast.delete(msg["id"])
        if entry.host_mask is None:
            self.fast.put(entry, msg, self.fds())
        self.fast.own_macs(self.table.own_macs)

    def run(self, frames: list[bytes], status: int = 0, ifindex: int = LO) -> list[int]:
        """The indexes of the frames left to Python."""
        buf = block(frames, status)
        holder = (ctypes.c_char * len(buf)).from_buffer(buf)
        left = self.fast.block(ctypes.addressof(holder), ifindex)
        del holder
        offsets = []
        off = FIRST
        for frame in frames:
            offsets.append(off)
            off += HEAD + -(-len(frame) // 16) * 16
        return [offsets.index(o) for o in left]

    def sent(self, n: int = 1, ifindex: int = LO) -> list[bytes]:
        return self.pairs[ifindex].take(n)

    def close(self) -> None:
        self.fast.close()
        self.c.release()
        for out in self.pairs.values():
            out.close()


@pytest.fixture
def rig(lib):
    r = Rig(lib)
    for rule_id, (text, _slot) in xdp_table.RULES.items():
        r.put(message(rule_id, text))
    yield r
    r.close()


def compiled(table: Table, verdict: int, entry) -> bool:
    """Whether fastpath.c relays what forward.py decided: a forward through
    an exact rule without stream checks or a policer."""
    return (verdict in (REDIRECT, REDIRECT_MULTI) and entry.host_mask is None and entry.stream is None
            and entry.bucket is None)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.desc)
def test_same_as_python(rig, case):
    frame = untag(case.frame)
    verdict, entry, sends = rig.table.handle(frame, LO)
    left = rig.run([frame])
    if compiled(rig.table, verdict, entry):
        assert left == []
        assert rig.sent(len(sends)) == [bytes(buf) for _, buf in sends]
        r = entry.counter
        assert (rig.c[verdict << 1], rig.c[(verdict << 1) + 1]) == (1, len(frame))
        assert list(rig.c[r:r + 4]) == [1, len(frame), 1, 0]
        assert (rig.c[sends[0][0].counter], rig.c[sends[0][0].counter + 1]) == (1, len(frame))
    else:
        assert left == [0]
        assert rig.sent(0) == [] and not any(rig.c[:cnt.RULES])


def test_the_table_is_mostly_compiled(rig):
    """Not a vacuous pass: most of the table's forwards are C's."""
    forwards = [c for c in CASES if rig.table.handle(untag(c.frame), LO)[0] in (REDIRECT, REDIRECT_MULTI)]
    done = [c for c in forwards if not rig.run([untag(c.frame)])]
    assert len(done) >= 10 and len(done) >= len(forwards) // 2


@pytest.mark.parametrize("pkt", [
    xdp_table.IN,
    replace(xdp_table.IN, payload=bytes(range(256)) * 5 + b"odd"),
    replace(xdp_table.IN, options=xdp_table.options(7)),
    xdp_table.IN6,
    replace(xdp_table.IN6, payload=b"x" * 999),
], ids=["IPv4", "IPv4 1283-byte payload", "IPv4 options", "IPv6", "IPv6 odd length"])
def test_partial_checksum_is_completed(rig, pkt):
    frame = partial(pkt.build())
    _, _, sends = rig.table.handle(frame, LO, partial=True)
    assert rig.run([frame], status=TP_STATUS_CSUMNOTREADY) == []
    assert rig.sent() == [bytes(sends[0][1])]


def test_fanout_order_and_sockets(lib):
    """Three outputs on two interfaces, a block of 600 frames (more than one
    chunk): each interface gets its copies in order, counted once each."""
    rig = Rig(lib, outputs=(LO, LO + 1))
    try:
        msg = message(3, "239.1.1.1:5001=a/239.3.3.1:6001,b/239.3.3.2:6002,a/239.3.3.3:6003")
        msg["outputs"][1]["ifindex"] = LO + 1
        rig.put(msg)
        frames = [replace(Udp4(), payload=i.to_bytes(4, "big") * 8).build() for i in range(600)]
        assert rig.run(frames) == []
        on_a, on_b = rig.sent(1200, LO), rig.sent(600, LO + 1)
        expected = [[bytes(b) for _, b in rig.table.handle(f, LO)[2]] for f in frames]
        assert on_a == [x for e in expected for x in (e[0], e[2])]
        assert on_b == [e[1] for e in expected]
        n = len(frames[0])
        assert (rig.c[REDIRECT_MULTI << 1], rig.c[(REDIRECT_MULTI << 1) + 1]) == (600, 600 * n)
        assert [rig.c[cnt.output_base(3, i)] for i in range(3)] == [600, 600, 600]
        assert list(rig.c[cnt.rule_base(3):cnt.rule_base(3) + 4]) == [600, 600 * n, 600, 0]
    finally:
        rig.close()


def test_lost_copies_and_unresolved_receivers(lib):
    """A copy whose send fails is not counted as sent; a frame none of whose
    copies went out is DROP_NO_OUTPUT; unicast receivers without a next-hop
    MAC are counted as DROP_NO_NEIGH, as in Python."""
    rig = Rig(lib)
    try:
        rig.put(message(1, "239.1.1.1:5001=out/239.2.2.2:5002"))
        rig.pairs[LO].close()  # the socket is closed: every send fails (EBADF)
        frame = Udp4().build()
        assert rig.run([frame, frame]) == []
        assert rig.c[DROP_NO_OUTPUT << 1] == 2 and rig.c[REDIRECT << 1] == 0
        assert list(rig.c[cnt.rule_base(1):cnt.rule_base(1) + 4]) == [2, 2 * len(frame), 0, 2]
        assert rig.c[cnt.output_base(1, 0)] == 0
        rig.pairs[LO] = Output()
        msg = message(18, "239.1.1.18:5001=out/10.0.2.9:6000,out/239.9.9.9:5009")
        rig.put(msg)
        frame = replace(Udp4(), dst="239.1.1.18").build()
        assert rig.run([frame]) == []
        assert len(rig.sent()) == 1
        assert (rig.c[DROP_NO_NEIGH << 1], rig.c[(DROP_NO_NEIGH << 1) + 1]) == (1, len(frame))
    finally:
        rig.close()


def test_rule_changes(rig):
    """Replaced and deleted rules, SSM before any source, and the loop guard
    (a frame from the relay's own output MAC goes to Python, which drops it)."""
    ssm = replace(Udp4(), src="203.0.113.9").build()
    rig.run([ssm])
    assert rig.sent()[0][30:34] == bytes([239, 5, 5, 5])  # rule 5, not rule 1
    rig.fast.delete(5)
    rig.run([ssm])
    assert rig.sent()[0][30:34] == bytes([239, 130, 2, 2])  # rule 1 now
    rig.put(message(1, "239.1.1.1:5001=out/239.4.4.4:5004"))
    rig.run([Udp4().build()])
    assert rig.sent()[0][30:34] == bytes([239, 4, 4, 4])
    rig.fast.delete(1)
    assert rig.run([Udp4().build()]) == [0]
    own = replace(Udp4(), dst="239.1.1.2", eth_src=xdp_table.OUT_MAC).build()
    assert rig.run([own]) == [0] and rig.table.handle(own, LO)[0] == abi.Verdict.DROP_LOOP
    assert rig.run([Udp6().build()], ifindex=LO + 1) == [0]  # another input: no rule


def test_slow_rules_are_left_to_python(lib):
    """;health= and ;police= keep their state in Python: their frames are
    deferred, every one, in order."""
    rig = Rig(lib)
    try:
        rule = parse_rule("239.1.1.1:5001=out/239.2.2.2:5002;police=1000pps", "in")
        outs = [encode.output_value(rule, rule.outputs[0], ifindex=LO, slot=0, src_mac=xdp_table.OUT_MAC)]
        rig.put(entry_message(1, LO, rule, outs, encode.police_value(rule.police)))
        frames = [Udp4().build()] * 3 + [replace(Udp4(), dst="239.1.1.2").build()]
        assert rig.run(frames) == [0, 1, 2, 3]  # 3: no rule at all
    finally:
        rig.close()


def test_abi_and_digest():
    """The library checks its layout against ctypes', and its name follows
    its source: an edited source never loads an old library."""
    lib = native.load()
    if lib is None:
        skip_or_fail("the userspace inner loop is not built")
    assert lib.mcr_fast_abi() == ctypes.sizeof(native.Rule) << 16 | ctypes.sizeof(native.Out)
    assert native.library_path().name == f"fastpath-{native.digest()}.so"


FUZZ_FRAMES = int(os.environ.get("MCR_FUZZ_FRAMES", "100000")) // 5
FUZZ_SEED = int(os.environ.get("MCR_FUZZ_SEED", "20261203"))


def test_fuzzed_frames_match_the_model(rig):
    """The XDP fuzzer's mutated frames (tests/bpf/test_fuzz.py: bytes
    flipped, lengths lying, headers cut short, padding), some with a partial
    checksum, in blocks of up to 64: the C relays exactly the frames the
    model forwards through a plain exact rule, with the model's bytes, in
    order; it never crashes and never sends anything else."""
    from tests.bpf.test_fuzz import SEEDS, mutate

    rng = random.Random(FUZZ_SEED)
    relayed = 0
    for start in range(0, FUZZ_FRAMES, 64):
        frames, status, want = [], [], []
        for _ in range(min(64, FUZZ_FRAMES - start)):
            frame = untag(mutate(rng, rng.choice(SEEDS)))
            if frame is None or len(frame) < 14:
                continue
            partial_sum = rng.random() < 0.1
            verdict, entry, sends = rig.table.handle(frame, LO, partial_sum)
            frames.append(frame)
            status.append(partial_sum)
            want.append([bytes(b) for _, b in sends] if entry is not None and compiled(rig.table, verdict, entry)
                        else None)
        # One block per status: the kernel marks each frame, the helper a block.
        for flag in (False, True):
            picked = [i for i, s in enumerate(status) if s == flag]
            if not picked:
                continue
            left = rig.run([frames[i] for i in picked], status=TP_STATUS_CSUMNOTREADY if flag else 0)
            expected = [picked[k] for k in range(len(picked)) if want[picked[k]] is None]
            assert [picked[k] for k in left] == expected, f"seed {FUZZ_SEED}, block at {start}"
            copies = [c for i in picked if want[i] is not None for c in want[i]]
            assert rig.sent(len(copies)) == copies, f"seed {FUZZ_SEED}, block at {start}"
            relayed += len(picked) - len(left)
    assert relayed > FUZZ_FRAMES // 10  # the mutations leave plenty for the C to relay
