"""Seamless protection end to end: one RTP stream sent on two legs (two
groups), each leg missing its own bursts and a long silence, both missing
1% at the same places, through a rule `a|b=OUT;merge=rtp`. The output must
carry every packet that came on at least one leg exactly once (in order
when the legs run together), `lost` must be exactly the packets both legs
missed, and the legs' own counts what each brought. The same with one leg
running 15,000 packets behind the other (150 ms at 100 kpps)."""

from __future__ import annotations

import json
import random
import warnings

import pytest

from tests.fixtures.relay import SCALE, relay_cli, result, send, start_receiver, start_relay

pytestmark = pytest.mark.e2e

# Generic XDP runs the same forward() as native (tests/bpf/test_merge.py
# runs its program through the decision table).
MODES = {"xdp-native": ("--mode", "xdp-native"), "tc": ("--mode", "tc"),
         "userspace": ("--mode", "userspace", "--workers", "2")}
COUNT = 30_000
RULE = "239.1.1.1:5001|239.1.1.2:5001=out0/239.2.2.2:5002;merge=rtp"


def _gaps(seed: int = 2022) -> tuple[set[int], set[int], set[int]]:
    """(only leg a misses, only leg b misses, both miss): bursts of 1 to 20
    packets, 5% of the stream on each leg and 1% on both, apart from one
    another, plus a silence of 1,500 packets on each leg at its own time;
    none in the first or last 200 (each leg's own count starts and ends
    with a packet it has)."""
    rng = random.Random(seed)
    taken: set[int] = set()
    sets: list[set[int]] = [set(), set(), set()]

    def burst(target: set[int], length: int) -> None:
        while True:
            start = rng.randrange(200, COUNT - 200 - length)
            span = set(range(start - 1, start + length + 1))  # a packet between any two bursts
            if not span & taken:
                taken.update(span)
                target.update(range(start, start + length))
                return

    burst(sets[0], 1500)
    burst(sets[1], 1500)
    for target, share in ((sets[2], 0.01), (sets[0], 0.05), (sets[1], 0.05)):
        while len(target) < share * COUNT:
            burst(target, rng.randint(1, 20))
    return sets[0], sets[1], sets[2]


def _seqs(seqs: set[int]) -> str:
    return ",".join(str(s) for s in sorted(seqs))


def _relay_legs(chain, mode: str, lag: int, rate: float) -> tuple[dict, dict, dict, tuple[set, set, set]]:
    only_a, only_b, both = _gaps()
    start_relay(chain, chain.IN, "--rule", RULE, *MODES[mode])
    receiver = start_receiver(chain, "239.2.2.2", 5002, COUNT - len(both), idle=2.0)
    sent = send(chain, "239.1.1.1", 5001, COUNT, rate=rate,
                extra=("--dest", "239.1.1.1:5001", "--dest", "239.1.1.2:5001", "--legs", "--lag", str(lag),
                       "--skip", _seqs(only_a | both), "--leg-skip", _seqs(only_b | both)))
    assert sent["legs"] == [COUNT - len(only_a) - len(both), COUNT - len(only_b) - len(both)]
    got = result(receiver)
    stats = json.loads(relay_cli(chain, "stats", "--json").stdout)
    legs = {r["rule"].split("/", 1)[1].split(":")[0]: r for r in stats["rules"]}
    return got, legs, stats, (only_a, only_b, both)


@pytest.mark.parametrize("mode", MODES)
def test_two_legs_missing_different_packets_make_one_whole_stream(chain, mode):
    rate = (10_000 if mode == "userspace" else 20_000) / SCALE
    got, legs, stats, (only_a, only_b, both) = _relay_legs(chain, mode, 0, rate)
    # Every packet one leg brought, once; the output stream whole but for what both lost.
    assert (got["unique"], got["duplicates"], got["corrupt"], got["missing"]) \
        == (COUNT - len(both), 0, 0, len(both)), got
    if mode != "userspace":  # one CPU takes both legs in turn; two workers may race by a packet
        assert got["out_of_order"] == 0, got
    a, b = legs["239.1.1.1"], legs["239.1.1.2"]
    merged = a["merge"]
    assert merged == b["merge"]  # one stream, shown on each leg
    arrivals = 2 * COUNT - len(only_a) - len(only_b) - 2 * len(both)
    assert (merged["legs"], merged["received"], merged["forwarded"], merged["copies"], merged["lost"],
            merged["invalid"], merged["resyncs"]) \
        == (2, arrivals, COUNT - len(both), arrivals - COUNT + len(both), len(both), 0, 0), merged
    # Each leg: what it missed, what it brought first, what it brought late.
    assert (a["health"]["lost"], b["health"]["lost"]) == (len(only_a) + len(both), len(only_b) + len(both))
    assert a["health"]["first_copies"] + b["health"]["first_copies"] == COUNT - len(both)
    assert a["health"]["suppressed"] + b["health"]["suppressed"] == merged["copies"]
    assert a["forwarded"] + b["forwarded"] == COUNT - len(both)
    assert stats["verdicts"]["drop_merged"]["packets"] == merged["copies"]


@pytest.mark.parametrize("mode", MODES)
def test_a_leg_150_ms_behind(chain, mode):
    """Leg b runs 15,000 packets behind (150 ms at 100 kpps; its copies come
    after every number leg a brought). What a missed, b brings late: sent
    once, counted as reordered at the output; nothing twice."""
    rate = (10_000 if mode == "userspace" else 25_000) / SCALE
    lag = min(15_000, int(0.6 * rate))  # b alone at the end: under a second of copies (no resync)
    got, legs, _, (only_a, only_b, both) = _relay_legs(chain, mode, lag, rate)
    assert (got["unique"], got["duplicates"], got["missing"]) == (COUNT - len(both), 0, len(both)), got
    merged = legs["239.1.1.1"]["merge"]
    assert (merged["lost"], merged["reordered"], merged["resyncs"]) == (len(both), len(only_a), 0), merged
    assert legs["239.1.1.2"]["health"]["first_copies"] == len(only_a)


TWO_INPUT_MODES = {m: MODES[m] for m in ("xdp-native", "userspace")}


@pytest.mark.parametrize("mode", TWO_INPUT_MODES)
@pytest.mark.parametrize("chain", [{"inputs": 2}], indirect=True)
def test_legs_on_two_inputs_at_once(chain, mode):
    """The realistic case: each leg arrives on its own network and input,
    from its own sender, both at once (two receive queues, two CPUs or two
    workers deciding at the same moment); beside them a plain rule's
    stream shares the output (30 kpps through out0 in all)."""
    from mcr_xdp.lab.proc import Proc

    only_a, only_b, both = _gaps(seed=7)
    ins = [chain.relay_ins[i].name for i in range(2)]
    start_relay(chain, *ins, "--rule", f"{ins[0]}/239.1.1.1:5001|{ins[1]}/239.1.1.2:5001=out0/239.2.2.2:5002;merge=rtp",
                "--rule", f"{ins[0]}/239.1.1.9:5009=out0/239.2.2.9:5009", *TWO_INPUT_MODES[mode])
    receiver = start_receiver(chain, "239.2.2.2", 5002, COUNT - len(both), idle=2.0)
    plain_receiver = start_receiver(chain, "239.2.2.9", 5009, COUNT, idle=2.0)
    rate = 10_000 / SCALE
    senders = []
    for i, group, extra in ((0, "239.1.1.1", ("--port", "5001", "--rtp", "--skip", _seqs(only_a | both))),
                            (1, "239.1.1.2", ("--port", "5001", "--rtp", "--skip", _seqs(only_b | both))),
                            (0, "239.1.1.9", ("--port", "5009"))):
        senders.append(Proc(chain.python(chain.srcs[i].ns, "-m", "mcr_xdp.lab.traffic", "send", "--group", group,
                                         "--iface", chain.srcs[i].name, "--count", str(COUNT), "--rate", str(rate),
                                         *extra)))
        chain.procs.append(senders[-1])
    for proc in senders:
        proc.wait_for('"sent"', timeout=(COUNT / rate + 60) * SCALE)
    got, plain = result(receiver), result(plain_receiver)
    stats = json.loads(relay_cli(chain, "stats", "--json").stdout)
    merged = next(r["merge"] for r in stats["rules"] if r["merge"] is not None)
    ring = {name: stats["interfaces"][name]["lost_in_ring"] for name in ins}
    if not any(ring.values()):
        assert (got["unique"], got["duplicates"], got["missing"]) == (COUNT - len(both), 0, len(both)), (got, stats)
        assert (plain["unique"], plain["duplicates"], plain["corrupt"]) == (COUNT, 0, 0), plain
        assert (merged["forwarded"], merged["lost"], merged["resyncs"]) == (COUNT - len(both), len(both), 0), merged
        return
    # Userspace: workers the scheduler kept off both vCPUs for over half a
    # second (their rings hold 0.5 s; three senders, two receivers and two
    # workers taking the merge's state lock a packet share the two CPUs)
    # lose frames in their rings, and the relay counts every one. Seen on
    # a slower machine of this kind in about half the runs (1,700-8,000
    # frames); never with native XDP. What the merge itself does must
    # still hold exactly.
    warnings.warn(f"{mode}: frames lost in the workers' rings, counted by the relay: {ring}", stacklevel=1)
    assert (got["duplicates"], got["corrupt"], plain["duplicates"], plain["corrupt"]) == (0, 0, 0, 0), (got, plain)
    assert len(both) <= got["missing"] <= len(both) + sum(ring.values()), (got, ring)
    assert plain["missing"] <= ring[ins[0]], (plain, ring)
    assert (merged["forwarded"], merged["resyncs"]) == (got["unique"], 0), (merged, got)
    assert len(both) <= merged["lost"] <= len(both) + sum(ring.values()), (merged, ring)
