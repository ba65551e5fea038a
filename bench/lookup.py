"""python -m bench lookup: what the pieces of the datapath's per-packet work
cost, in ns, through BPF_PROG_TEST_RUN (no interfaces, no traffic).

Each program of bench/bpf/bench_lookup.c does one thing (a rule lookup with the
relay's 40-byte key, the same lookup behind a 12- or 8-byte key, one or
three per-CPU counter updates); the real mcr_relay runs on a frame that
matches a rule and on one that matches none. The kernel times a run of
`repeat` iterations and reports the mean; preemption is excluded from
that time (bpf_test_timer stops across a reschedule), so the figures
hold on a busy machine better than the traffic benchmarks do. Each is the
median of `rounds` runs, less the empty program's run time.
"""

from __future__ import annotations

import ctypes
import statistics
import struct
import time

from mcr_xdp import abi, encode, libbpf, loader
from mcr_xdp.csum import checksum
from mcr_xdp.errors import AttachError
from mcr_xdp.maps import fast_bucket
from mcr_xdp.rules import parse_rule

from .sources import include_flags, source

IFINDEX = 3  # as BL_IFINDEX in bench_lookup.c: the rule keys' input, a constant in the programs
LO = 1  # the context's ingress interface: the kernel refuses (ENODEV) one this namespace lacks
GROUP, PORT = "239.1.1.1", 5001  # BL_GROUP, BL_PORT
SHORT = 250  # runs per call of a program that rewrites its frame (TTL 255 down to 6)

PROGRAMS = {
    "bl_key40": "rule lookup, relay.c's 40-byte key",
    "bl_key12": "rule lookup, 12-byte key (ifindex, group, port)",
    "bl_key8": "rule lookup, 8-byte key (group, port, 16-bit ifindex)",
    "bl_count1": "one per-CPU counter update",
    "bl_count3": "three per-CPU counter updates",
}


def frame(group: str = GROUP, port: int = PORT, size: int = 64, ttl: int = 64, payload: bytes | None = None) -> bytes:
    """An Ethernet/IPv4/UDP frame of size bytes to group:port, with the IPv4
    header checksum the datapath verifies (no UDP checksum: zero stays).
    payload: the UDP payload (size follows from it)."""
    a, b, c, d = (int(x) for x in group.split("."))
    payload = bytes(size - 42) if payload is None else payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, ttl, 17, 0,
                     bytes((192, 0, 2, 1)), bytes((a, b, c, d)))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0)
    eth = bytes((0x01, 0x00, 0x5E, b & 0x7F, c, d)) + bytes.fromhex("020000000001") + b"\x08\x00"
    return eth + ip + udp + payload


def _time(prog_fd: int, data: bytes, ifindex: int, repeat: int, rounds: int, expect: int) -> float:
    ctx = libbpf.XdpMd(data=0, data_end=len(data), ingress_ifindex=ifindex, rx_queue_index=0)
    runs = []
    for _ in range(rounds):
        action, _, ns = libbpf.test_run(prog_fd, data, ctx, repeat=repeat)
        if action != expect:
            raise AttachError(f"benchmark program returned {action}, expected {expect}: it measured the wrong path")
        runs.append(ns)
    return float(statistics.median(runs))


def _fill(table, n: int, key_of) -> None:
    """n entries; entry 0 is the key the programs look up."""
    for i in range(n):
        table[key_of(table.Key(), i)] = table.Leaf()


def _key40(k, i):
    k.ifindex, k.port, k.family = IFINDEX, 0x8913, 4
    k.group[0], k.group[1], k.group[2], k.group[3] = 239, 1 + i // 250, 1, 1 + i % 250
    return k


def _key_small(k, i):
    """struct bl_key12 or bl_key8: the same fields, other widths."""
    k.ifindex, k.port = IFINDEX, 0x8913
    k.group = int.from_bytes(bytes((239, 1 + i // 250, 1, 1 + i % 250)), "little")
    return k


def micro(rules: int, repeat: int, rounds: int) -> dict:
    from bcc import BPF

    try:
        bpf = BPF(src_file=str(source("bench_lookup.c")).encode(), cflags=include_flags())
    except Exception as exc:  # bcc raises bare Exception
        raise AttachError(f"could not compile bench_lookup.c: {exc}") from None
    try:
        _fill(bpf[b"bl_rules40"], rules, _key40)
        _fill(bpf[b"bl_rules12"], rules, _key_small)
        _fill(bpf[b"bl_rules8"], rules, _key_small)
        data = frame()
        fds = {name: bpf.load_func(name.encode(), BPF.XDP).fd for name in ("bl_empty", *PROGRAMS)}
        empty = _time(fds["bl_empty"], data, LO, repeat, rounds, libbpf.XDP_DROP)
        out = {"empty_ns": empty,
               "empty_short_ns": _time(fds["bl_empty"], data, LO, SHORT, repeat // SHORT, libbpf.XDP_DROP)}
        for name in PROGRAMS:
            out[name] = _time(fds[name], data, LO, repeat, rounds, libbpf.XDP_DROP) - empty
        return out
    finally:
        bpf.cleanup()


MERGE_KEY = 1  # the merged stream's window, for a rule with ;merge=rtp


def _install(dp, texts: list[str]) -> None:
    for i, text in enumerate(texts):
        rule = parse_rule(text, "in")
        out = encode.output_value(rule, rule.outputs[0], ifindex=LO, slot=1, src_mac=bytes.fromhex("0200000000aa"))
        if rule.health_kind is not None:
            dp.maps.start_health(i)
        if rule.merge is not None:
            dp.maps.start_merge(MERGE_KEY)
        if rule.police is not None:
            dp.maps.set_police(i, encode.police_value(rule.police))
        dp.maps.put_rule(encode.rule_key(rule, LO),
                         encode.rule_value(rule, i, [out], merge=MERGE_KEY if rule.merge else 0))
    dp.maps.set_port(1, LO, dp.egress_fd)
    dp.maps.set_direct(1, LO)  # as for an output no fan-out rule uses
    dp.maps.set_config(**encode.rule_kinds(parse_rule(text, "in") for text in texts))


def _exact_rules(rules: int) -> list[str]:
    groups = (f"239.{1 + i // 250}.1.{1 + i % 250}" for i in range(rules))
    return [f"{group}:{PORT}=out/{group}:{PORT}" for group in groups]


def _range_rules(rules: int) -> list[str]:
    """rules /24 ranges for PORT, one any-port /16: every lookup a frame
    without a rule can make."""
    return [*(f"239.{100 + i // 250}.{i % 250}.0/24:{PORT}=out" for i in range(rules - 1)), "239.99.0.0/16:*=out"]


def relay(rules: int, repeat: int, rounds: int, empty: float, empty_short: float) -> dict:
    """The real ingress program with `rules` exact rules: a frame of rule 0
    (parse, lookup, rewrite, redirect, three counters: relay.c's
    fast_forward), the same frame with rule 0's copy hidden from the fast
    path (forward(): the hash lookup, the metadata), and a multicast frame
    no rule matches (parse, lookup, one counter). Then with `rules` range
    rules besides: a frame of a /24 (the exact lookup misses, the trie
    finds it; rewrite with the host bits kept) and the frame without a rule
    (two trie lookups more).

    The kernel repeats a run on the same buffer, so a forwarded frame is
    seen again as rewritten: each rule rewrites to its own group and port
    (the same work as any rewrite: the deltas are precomputed), and the TTL,
    which drops by one a run, starts at 255 for SHORT runs a call."""
    out = {}
    for tag, texts, hit_group in (("", _exact_rules(rules), GROUP),
                                  ("_ranges", [*_exact_rules(rules), *_range_rules(rules)], "239.100.7.9")):
        dp = loader.Datapath()
        try:
            _install(dp, texts)
            hit = _time(dp.prog_fd, frame(hit_group, ttl=255), LO, SHORT, repeat // SHORT, libbpf.XDP_REDIRECT)
            miss = _time(dp.prog_fd, frame("239.250.250.250"), LO, repeat, rounds, libbpf.XDP_PASS)
            if not tag:
                _hide_copy(dp, texts[0])
                out["mcr_relay_forward_hashed"] = _time(dp.prog_fd, frame(hit_group, ttl=255), LO, SHORT,
                                                        repeat // SHORT, libbpf.XDP_REDIRECT) - empty_short
        finally:
            dp.close()
        key = "mcr_relay_range_forward" if tag else "mcr_relay_forward"
        out[key], out[f"mcr_relay_no_rule{tag}"] = hit - empty_short, miss - empty
    return out


def _hide_copy(dp, text: str) -> None:
    """The rule's bucket of the fast path says "look in mcr_rules", as for
    a rule past the fast path's copies."""
    bucket = ctypes.c_uint32(fast_bucket(encode.rule_key(parse_rule(text, "in"), LO)))
    libbpf.map_update(dp.maps.fds[abi.MAP_FAST_INDEX], bucket, ctypes.c_uint32(abi.FAST_HASH))


RTP_PAYLOAD = struct.pack("!BBHII", 0x80, 96, 1, 90, 0x6D637278) + bytes(10)  # a 64-byte frame
TS_PAYLOAD = struct.pack("!BBHII", 0x80, 33, 1, 90, 0x6D637278) + b"".join(  # 7 TS packets, 5 PIDs
    struct.pack("!BHB", 0x47, 0x100 + i % 5, 0x10 | i) + bytes(184) for i in range(7))


def health(rules: int, repeat: int, empty_short: float) -> dict:
    """What a rule's options add: rule 0's frame with an RTP header (64
    bytes), and with seven TS packets behind one (1,370 bytes), through a
    rule without the option and one with it. The same buffer runs again and
    again, so after the first run each RTP packet is a duplicate and each
    TS packet a repeat: the same lookups, lock and bit tests as a new one;
    a merge leg drops that copy (the work of a first copy but the redirect).
    A policer at 1 Gpps never drops; the loop guard looks up the source MAC
    of every multicast frame once the relay has outputs."""
    out = {}
    redirect, drop = libbpf.XDP_REDIRECT, libbpf.XDP_DROP
    cases = (("rtp", RTP_PAYLOAD, "", "", redirect),
             ("rtp", RTP_PAYLOAD, ";health=rtp", "_health", redirect),
             ("rtp", RTP_PAYLOAD, ";merge=rtp", "_merge", drop),
             ("rtp", RTP_PAYLOAD, ";police=1gpps", "_police", redirect),
             ("rtp", RTP_PAYLOAD, "", "_loop_guard", redirect),
             ("mpegts", TS_PAYLOAD, "", "", redirect),
             ("mpegts", TS_PAYLOAD, ";health=mpegts", "_health", redirect))
    dp = loader.Datapath()  # one datapath: each case writes rule 0 again (the key stays)
    try:
        for kind, payload, option, tag, expect in cases:
            texts = _exact_rules(rules)
            texts[0] += option
            _install(dp, texts[:1] if out else texts)  # all rules once, then rule 0 again
            # another output's MAC: the run's own rewrite sends from ...aa
            dp.maps.set_own_macs(frozenset({bytes.fromhex("0200000000bb")}) if tag == "_loop_guard" else frozenset())
            ns = _time(dp.prog_fd, frame(GROUP, ttl=255, payload=payload), LO, SHORT, repeat // SHORT,
                       expect) - empty_short
            out[f"mcr_relay_{kind}_frame{tag}"] = ns
    finally:
        dp.close()
    return out


def measure(rules: int = 1000, repeat: int = 1_000_000, rounds: int = 5) -> dict:
    started = time.time()
    res = micro(rules, repeat, rounds)
    res.update(relay(rules, repeat, rounds, res["empty_ns"], res["empty_short_ns"]))
    res.update(health(rules, repeat, res["empty_short_ns"]))
    return {"rules": rules, "repeat": repeat, "rounds": rounds, "started": started, "ns": res}


def render(doc: dict) -> str:
    ns = doc["ns"]
    rows = [("mcr_relay, a frame of a rule (whole program)", ns["mcr_relay_forward"]),
            *((what, ns[key]) for what, key in (
                ("... of a rule without a copy in the fast path (the hash, forward())", "mcr_relay_forward_hashed"),
            ) if key in ns),
            ("mcr_relay, multicast without a rule (whole program)", ns["mcr_relay_no_rule"]),
            *((what, ns[key]) for what, key in (
                (f"mcr_relay, a frame of a /24 range rule, {doc['rules']} ranges besides", "mcr_relay_range_forward"),
                ("mcr_relay, multicast without a rule, with those ranges (two trie lookups)",
                 "mcr_relay_no_rule_ranges")) if key in ns),
            *((what, ns[key]) for what, key in (
                ("mcr_relay, a 64-byte RTP frame of a rule", "mcr_relay_rtp_frame"),
                ("... of a rule with ;health=rtp", "mcr_relay_rtp_frame_health"),
                ("... of a merge leg (;merge=rtp: its own health and the stream's window; a copy, dropped)",
                 "mcr_relay_rtp_frame_merge"),
                ("... of a rule with ;police=1gpps", "mcr_relay_rtp_frame_police"),
                ("... with the loop guard on (the relay's output MACs known)", "mcr_relay_rtp_frame_loop_guard"),
                ("mcr_relay, RTP + 7 TS packets (1,370 bytes) of a rule", "mcr_relay_mpegts_frame"),
                ("... of a rule with ;health=mpegts", "mcr_relay_mpegts_frame_health")) if key in ns),
            *((PROGRAMS[name], ns[name]) for name in PROGRAMS)]
    lines = [f"ns per packet over an empty XDP program ({ns['empty_ns']:.0f} ns), {doc['rules']} rules, "
             f"median of {doc['rounds']} x {doc['repeat']:,} runs", "",
             "| what | ns |", "| --- | ---: |"]
    lines += [f"| {what} | {value:.1f} |" for what, value in rows]
    return "\n".join(lines)
