"""Runs a Plan: builds the namespace chain once, then for every block,
relay, layout, payload size and rate measures `repeats` runs, and returns
plain dicts (JSON-ready). Everything it creates is removed on the way out,
also on Ctrl-C, SIGTERM and errors."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import time
from contextlib import ExitStack

from mcr_xdp import libbpf
from mcr_xdp.lab.netns import Chain, unique_prefix
from mcr_xdp.lab.proc import Proc, venv_bin

from . import nsutil
from .livegen import GenConfig, LiveGen
from .plan import NOISE_LIMIT, Block, Plan, rate_pps
from .relays import IN_GROUP, IN_PORT, NotAvailable, Relay, TracedBareRedirect, all_relays
from .sink import Sink

GEN_CPU, RELAY_CPU = 0, 1
SINK_IN_SOFTIRQ = -1  # sink_cpu value: the sink's NAPI stays in the softirq the relay raises
DRAIN = 0.2  # seconds to let queued frames reach the sink after a run
SLICE = 0.2  # seconds a swapped block counts one program's turn
SETTLE = 0.02  # seconds after a swap before its slice is counted (frames of the last program in flight)
SETTLE_GEN = 0.1  # ... after a generator swap (a BPF_PROG_TEST_RUN call's ~24 ms set-up, then steady state)
WARMUP = 0.2  # seconds the generator runs before a timed window opens
NS_PREFIX = "mcrb"


_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"bench: {time.monotonic() - _T0:6.1f}s {msg}", flush=True)


class Runner:
    def __init__(self, plan: Plan, relays: list[str] | None = None, sizes: list[int] | None = None,
                 batch: int = 64, sink_cpu: int = SINK_IN_SOFTIRQ, socket_check: bool = True):
        self.plan = plan
        self.only_relays = set(relays) if relays else None
        self.only_sizes = set(sizes) if sizes else None
        self.batch = batch
        self.sink_cpu = sink_cpu
        self.socket_check = socket_check
        self.topo: Chain | None = None
        self.sink: Sink | None = None
        self.gens: dict[tuple[int, int], LiveGen] = {}
        self.relays = {r.key: r for r in all_relays(RELAY_CPU)}
        self.napi_pids: list[int] = []
        self.ceilings: dict[tuple[str, int], float] = {}  # (layout, size) -> flat-out pps
        self.results: list[dict] = []
        self.layout = "default"

    # -- setup -------------------------------------------------------------

    def _build(self, stack: ExitStack) -> None:
        self.topo = Chain(unique_prefix(NS_PREFIX), outputs=self.plan.max_outputs)
        stack.callback(self._teardown)
        self.topo.build()
        self.sink = Sink()
        for sink in self.topo.sink:
            self.sink.attach(sink.ns, sink.name)
        log(f"chain {self.topo.src.ns} -> {self.topo.relay_in.ns} -> "
            f"{', '.join(s.ns for s in self.topo.sink)} built")

    def _teardown(self) -> None:
        for relay in self.relays.values():
            try:
                relay.stop()
            except Exception as exc:  # keep tearing down
                log(f"stopping {relay.key}: {exc}")
        for gen in self.gens.values():
            gen.close()
        self.gens.clear()
        if self.sink is not None:
            self.sink.close()
            self.sink = None
        if self.topo is not None:
            kill_namespace_processes(self.topo.namespaces)
            self.topo.close()
            self.topo = None

    def gen(self, size: int, streams: int, rtp: bool = False) -> LiveGen:
        key = (size, streams, rtp)
        if key not in self.gens:
            ns = self.topo.src.ns
            cfg = GenConfig(ns=ns, ifindex=nsutil.ifindex(ns, self.topo.src.name),
                            src_mac=nsutil.mac(ns, self.topo.src.name), saddr=self.topo.src.ip,
                            group=IN_GROUP, port=IN_PORT, size=size, streams=streams, rtp=rtp)
            self.gens[key] = gen = LiveGen(cfg, batch=self.batch, cpu=GEN_CPU)
            check_frames(gen)
        return self.gens[key]

    def set_layout(self, layout: str) -> None:
        if layout == self.layout:
            return
        topo = self.topo
        sinks = [(s.ns, s.name) for s in topo.sink]
        if layout == "threaded":
            self.napi_pids = nsutil.set_threaded(topo.relay_in.ns, topo.IN, RELAY_CPU)
            if self.sink_cpu >= 0:  # else the sink stays in the softirq the relay raises
                for ns, dev in sinks:
                    nsutil.set_threaded(ns, dev, self.sink_cpu)
        else:
            nsutil.set_threaded(topo.relay_in.ns, topo.IN, None)
            for ns, dev in sinks:
                nsutil.set_threaded(ns, dev, None)
            self.napi_pids = []
        self.layout = layout

    def layouts(self, block: Block):
        """block's layouts, each set while the caller runs under it; the
        default again after the last, or when the caller's loop ends early
        (CPython closes the generator as the loop unwinds)."""
        try:
            for layout in block.layouts:
                self.set_layout(layout)
                yield layout
        finally:
            self.set_layout("default")

    # -- measuring ---------------------------------------------------------

    def measure(self, relay: Relay, gen: LiveGen, rate: float | None, seconds: float, exact: int = 0) -> dict:
        """One run; a run during which other processes used more than
        NOISE_LIMIT of a CPU is repeated (up to plan.retries times) and the
        quietest attempt kept: others share this machine."""
        attempts = []
        for _ in range(1 + (0 if exact else self.plan.retries)):
            run = self._measure_once(relay, gen, rate, seconds, exact)
            attempts.append(run)
            if run["other_cpu"] <= NOISE_LIMIT:
                break
            log(f"  noisy run (other processes used {run['other_cpu']:.2f} CPU): measuring again")
        best = min(attempts, key=lambda r: r["other_cpu"])
        if len(attempts) > 1:
            best = {**best, "noisy_attempts": [a for a in attempts if a is not best]}
        return best

    def _measure_once(self, relay: Relay, gen: LiveGen, rate: float | None, seconds: float, exact: int) -> dict:
        """Timed runs count over a window of steady state (the generator
        runs WARMUP seconds first); exact runs send exactly `exact` frames
        and count everything that arrives."""
        counter = relay.own_counter() or (lambda: self.sink.count()[0])
        # Only relays that forward in processes of their own have a process
        # CPU worth reporting; mcr-xdp's XDP/TC control plane idles meanwhile.
        pids = [p for pid in relay.pids() for p in nsutil.children_pids(pid)] if relay.userspace else []
        # Kernel threads doing the chain's work: deferred softirqs, cpumap
        # steering, threaded NAPI (ours: the other namespaces' devices are idle).
        helpers = nsutil.kthreads("ksoftirqd/", "cpumap/", "napi/")

        def snap():
            return (time.monotonic(), gen.sent(), counter(), nsutil.cpu_busy(),
                    sum(nsutil.proc_cpu(p) for p in pids), sum(nsutil.proc_cpu(p) for p in self.napi_pids),
                    nsutil.thread_cpu(gen.tid), sum(nsutil.proc_cpu(p) for p in helpers), self._drops(relay))

        if exact:
            a = snap()
            gen.start(rate, limit=exact)
            try:
                done = gen.wait_sent(a[1] + exact, timeout=exact / rate * 1.5 + 30)
                b = snap()
            finally:
                gen.stop()
            if not done:
                log(f"warning: the generator sent only {gen.sent() - a[1]} of {exact} frames")
        else:
            gen.start(rate)
            try:
                time.sleep(WARMUP)
                a = snap()
                time.sleep(seconds)
                b = snap()
            finally:
                gen.stop()
        time.sleep(DRAIN)
        took = b[0] - a[0]
        sent = (gen.sent() if exact else b[1]) - a[1]
        delivered = (counter() if exact else b[2]) - a[2]
        expected = sent * relay.outputs if relay.own_counter() is None else sent
        busy = {str(c): round((b[3][c] - a[3][c]) / took, 3) for c in b[3]}
        ours = (b[4] - a[4]) + (b[6] - a[6]) + (b[7] - a[7])  # napi threads are among the helpers
        return {
            "sent": sent,
            "delivered": delivered,
            "expected": expected,
            "seconds": round(took, 4),
            "offered_pps": sent / took,
            "delivered_pps": delivered / took / (relay.outputs if relay.own_counter() is None else 1),
            "loss": max(0.0, 1 - delivered / expected) if expected else 0.0,
            "cpu_busy": busy,
            "relay_process_cpu": round((b[4] - a[4]) / took, 3) if pids else None,
            "relay_napi_cpu": round((b[5] - a[5]) / took, 3) if self.napi_pids else None,
            "generator_cpu": round((b[6] - a[6]) / took, 3),
            # CPU used by everything else on the machine (other developers' jobs).
            "other_cpu": round(max(0.0, sum(busy.values()) - ours / took), 3),
            "loadavg": float(open("/proc/loadavg").read().split()[0]),
            # Where frames were dropped on the way, by the kernel's own counters (report: "where lost").
            "drops": {k: b[8][k] - a[8][k] for k in b[8]},
        }

    def _drops(self, relay: Relay) -> dict[str, int]:
        """Frames the chain's veths dropped so far: at the relay's input
        (its backlog), at its outputs (their peer's ring full) and at the
        sinks."""
        topo = self.topo
        outs = [nsutil.link_drops(o.ns, o.name) for o in topo.relay_out[:relay.outputs]]
        sinks = [nsutil.link_drops(s.ns, s.name) for s in topo.sink[:relay.outputs]]
        return {"input rx": nsutil.link_drops(topo.relay_in.ns, topo.IN)[0],
                "output tx": sum(tx for _rx, tx in outs), "sink rx": sum(rx for rx, _tx in sinks)}

    def sizes(self, block: Block) -> list[int]:
        """The block's payload sizes this run measures (--sizes)."""
        return [s for s in block.sizes if self.only_sizes is None or s in self.only_sizes]

    def run_block(self, block: Block) -> None:
        if block.swap and block.swap_streams:
            self.run_swapped_streams(block)
            return
        if block.swap:
            self.run_swapped(block)
            return
        if block.interleave:
            self.run_interleaved(block)
            return
        sizes = self.sizes(block)
        for key in block.relays:
            if self.only_relays is not None and key not in self.only_relays:
                continue
            relay = self.relays[key]
            base = {"block": block.name, "relay": key, "label": relay.label, "streams": block.streams,
                    "outputs": block.outputs, "exact": block.exact}
            reason = relay.unavailable()
            if reason is None:
                try:
                    log(f"[{block.name}] starting {relay.label} ({block.streams} stream(s), {block.outputs} output(s))")
                    relay.start(self.topo, block.streams, block.outputs)
                except NotAvailable as exc:
                    reason = str(exc)
            if reason is not None:
                log(f"[{block.name}] {relay.label}: not available: {reason}")
                self.results.append({**base, "status": "n/a", "reason": reason})
                continue
            try:
                if block.socket_check and self.socket_check and relay.own_counter() is None:
                    self.results.append({**base, **self.integrity_check(relay)})
                for layout in self.layouts(block):
                    for size in sizes:
                        gen = self.gen(size, block.streams, relay.rtp)
                        for rate in block.rates:
                            self.results.append({**base, **self.point(relay, gen, layout, size, rate, block)})
            finally:
                relay.stop()

    def run_interleaved(self, block: Block) -> None:
        """Every repetition runs each relay once (once per stream count
        when the block has them), started and stopped in turn; each run is
        then paired with the first turn's of the same repetition."""
        sizes = self.sizes(block)
        keys = []
        for key in block.relays:
            if self.only_relays is not None and key not in self.only_relays:
                continue
            relay = self.relays[key]
            reason = relay.unavailable()
            if reason is not None:
                self.results.append({"block": block.name, "relay": key, "label": relay.label, "streams": block.streams,
                                     "outputs": block.outputs, "exact": 0, "status": "n/a", "reason": reason})
                continue
            keys.append(key)
        # Turns: (row key, relay key, streams); a relay per stream count
        # when the block has them.
        if block.stream_counts:
            turns = [(f"{key}@{n}", key, n) for key in keys for n in block.stream_counts]
        else:
            turns = [(key, key, block.streams) for key in keys]
        if len(turns) < 2:
            return
        repeats = block.repeats or self.plan.repeats
        for layout in self.layouts(block):
            for size in sizes:
                for rate in block.rates:
                    pps = rate_pps(rate, self.ceilings.get((layout, size)))
                    runs: dict[str, list[dict]] = {turn: [] for turn, _, _ in turns}
                    for rep in range(repeats):
                        for turn, key, streams in turns:
                            relay = self.relays[key]
                            relay.start(self.topo, streams, block.outputs)
                            try:
                                runs[turn].append(self.measure(relay, self.gen(size, streams, relay.rtp),
                                                               pps, self.plan.seconds))
                            finally:
                                relay.stop()
                        got = ", ".join(f"{turn} {runs[turn][-1]['delivered_pps'] / 1e3:.1f} kpps"
                                        for turn, _, _ in turns)
                        log(f"[{block.name}] {layout} {size} B {rate}: repetition {rep + 1}/{repeats}: {got}")
                    self._paired(block, turns, runs, layout, size, rate, pps)

    def run_swapped_streams(self, block: Block) -> None:
        """One relay with as many rules as the largest of block.swap_streams;
        generators of each stream count take turns while it runs, ABBA
        against the first count."""
        key = block.relays[0]
        relay = self.relays[key]
        streams = max(block.swap_streams)
        base = {"block": block.name, "outputs": block.outputs, "exact": 0, "relay": key, "label": relay.label}
        if self.only_relays is not None and key not in self.only_relays:
            return
        reason = relay.unavailable()
        with ExitStack() as stack:
            if reason is None:
                try:
                    relay.start(self.topo, streams, block.outputs)
                    stack.callback(relay.stop)
                except NotAvailable as exc:
                    reason = str(exc)
            if reason is not None:
                log(f"[{block.name}] {relay.label}: not available: {reason}")
                self.results.append({**base, "streams": streams, "status": "n/a", "reason": reason})
                return
            ref, *others = (f"{key}@{n}" for n in block.swap_streams)
            label = {f"{key}@{n}": f"{relay.label}, {n} stream{'s' if n > 1 else ''} ({streams} rules)"
                     for n in block.swap_streams}
            for layout in self.layouts(block):
                for size in self.sizes(block):
                    gens = {f"{key}@{n}": self.gen(size, n, relay.rtp) for n in block.swap_streams}
                    swap = _GenSwapper(gens, rate_pps("flat", None))
                    try:
                        point = {**base, "streams": streams, "layout": layout, "size": size, "rate": "flat",
                                 "offered_target_pps": None, "method": "swapped-streams", "slice": SLICE}
                        ratios, _ = self._swap_groups(block, swap, ref, others, SETTLE_GEN, f"{layout} {size} B")
                    finally:
                        swap.restore()
                    for other in others:
                        self.results.append({**point, "relay": f"{other}/{ref}",
                                             "label": f"{label[other]} / {label[ref]}", "status": "paired",
                                             "ratios": ratios[other], "summary": paired_summary(ratios[other])})

    def _swap_groups(self, block: Block, swap, ref: str, others: list[str], settle: float,
                     where: str) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """block.repeats ABBA groups of each of others against ref: per
        other, a paired ratio a group; and per key, the delivered rate of
        each of its slices."""
        ratios: dict[str, list[float]] = {k: [] for k in others}
        slices: dict[str, list[float]] = {k: [] for k in (ref, *others)}
        groups = block.repeats or self.plan.repeats
        for g in range(groups):
            for key in others:
                got = [self._slice(swap, k, settle) for k in (ref, key, key, ref)]
                slices[ref] += [got[0], got[3]]
                slices[key] += got[1:3]
                ratios[key].append((got[1] + got[2]) / (got[0] + got[3]) if got[0] + got[3] else 0.0)
            if (g + 1) % 10 == 0 or g + 1 == groups:
                now = ", ".join(f"{k} {statistics.median(r):.3f}" for k, r in ratios.items())
                log(f"[{block.name}] {where}: {g + 1}/{groups} groups, paired medians: {now}")
        return ratios, slices

    def run_swapped(self, block: Block) -> None:
        """Every relay started once (at most one attaching itself, the rest
        loaded only), plus a second copy of the first as the control; the
        generator runs throughout while their input programs take turns by
        XDP_FLAGS_REPLACE, ABBA against the first relay."""
        sizes = self.sizes(block)
        keys = [k for k in block.relays if self.only_relays is None or k in self.only_relays]
        base = {"block": block.name, "streams": block.streams, "outputs": block.outputs, "exact": 0}
        arms: dict[str, Relay] = {}
        with ExitStack() as stack:
            # The one that attaches itself first; the others do not replace it.
            for key in sorted(keys, key=lambda k: not self.relays[k].attaches_itself):
                relay = self.relays[key]
                reason = relay.unavailable() or (None if relay.swappable else "not one native XDP program: "
                                                 "cannot take turns by program swap")
                if reason is None and relay.attaches_itself and any(a.attaches_itself for a in arms.values()):
                    reason = "a second relay that attaches its own program cannot take turns"
                if reason is None:
                    try:
                        relay.start(self.topo, block.streams, block.outputs, attach=False)
                        stack.callback(relay.stop)
                        if relay.xdp_program() is None:
                            reason = "its input program could not be found"
                    except NotAvailable as exc:
                        reason = str(exc)
                if reason is not None:
                    log(f"[{block.name}] {relay.label}: not available: {reason}")
                    self.results.append({**base, "relay": key, "label": relay.label, "status": "n/a",
                                         "reason": reason})
                    continue
                arms[key] = relay
            ref = next((k for k in keys if k in arms), None)
            if ref is None or arms[ref].attaches_itself:
                log(f"[{block.name}] no reference the benchmark loads itself: nothing to pair with")
                return
            control = type(arms[ref])()  # the reference's program loaded twice: what the method sees of nothing
            control.start(self.topo, block.streams, block.outputs, attach=False)
            stack.callback(control.stop)
            turns = {ref: arms[ref], f"{ref}#2": control, **{k: r for k, r in arms.items() if k != ref}}
            swap = _Swapper(self.topo.relay_in.ns, nsutil.ifindex(self.topo.relay_in.ns, self.topo.IN), turns,
                            next((k for k, r in turns.items() if r.attach_input), None))
            stack.callback(swap.restore)
            for layout in self.layouts(block):
                for size in sizes:
                    for rate in block.rates:
                        self._swapped_point(block, base, turns, swap, layout, size, rate)

    def _swapped_point(self, block: Block, base: dict, turns: dict, swap: _Swapper, layout: str, size: int,
                       rate: str) -> None:
        pps = rate_pps(rate, self.ceilings.get((layout, size)))
        ref, *others = turns
        gen = self.gen(size, block.streams)
        gen.start(pps)
        try:
            time.sleep(WARMUP)
            ratios, slices = self._swap_groups(block, swap, ref, others, SETTLE, f"{layout} {size} B {rate}")
        finally:
            gen.stop()
        point = {**base, "layout": layout, "size": size, "rate": rate, "offered_target_pps": pps,
                 "method": "swapped", "slice": SLICE}
        traced = ratios.get(TracedBareRedirect.key)
        for key in [k for k in others if turns[k].attaches_itself and traced]:
            # It ran without its tracer (McrXdp.untraced; a CLI without the
            # option: with it, in every turn, the reference's too): the
            # traced reference's ratio, group by group, puts that cost in.
            self.results.append({**point, "relay": f"{key}+tracer/{ref}", "label": f"{turns[key].label} with "
                                 f"its loss tracer / {turns[ref].label}", "status": "paired", "derived": True,
                                 "ratios": (both := [a * b for a, b in zip(ratios[key], traced, strict=True)]),
                                 "summary": paired_summary(both)})
        for key in others:
            untraced = " --no-loss-tracer" if turns[key].untraced else ""
            self.results.append({**point, "relay": f"{key}/{ref}", "label": f"{turns[key].label}{untraced} / "
                                 f"{turns[ref].label}" + (" (the control: the same program twice)"
                                                          if key == f"{ref}#2" else ""),
                                 "status": "paired", "ratios": ratios[key], "summary": paired_summary(ratios[key]),
                                 "delivered_pps": {ref: statistics.median(slices[ref]),
                                                   key: statistics.median(slices[key])}})

    def _slice(self, swap, key: str, settle: float) -> float:
        """Delivered packets per second in one SLICE with key's turn on."""
        swap.to(key)
        time.sleep(settle)
        t0, c0 = time.monotonic(), self.sink.count()[0]
        time.sleep(SLICE)
        t1, c1 = time.monotonic(), self.sink.count()[0]
        return (c1 - c0) / (t1 - t0)

    def _paired(self, block: Block, turns: list[tuple[str, str, int]], runs: dict, layout: str, size: int,
                rate: str, pps) -> None:
        point = {"block": block.name, "outputs": block.outputs, "exact": 0,
                 "layout": layout, "size": size, "rate": rate, "offered_target_pps": pps}

        def label(key: str, streams: int) -> str:
            rules = f", {streams} rule{'s' if streams > 1 else ''}" if block.stream_counts else ""
            return self.relays[key].label + rules

        for turn, key, streams in turns:
            self.results.append({**point, "streams": streams, "relay": turn, "label": label(key, streams),
                                 "status": "ok", "runs": runs[turn], "summary": summarize(runs[turn])})
        ref, ref_key, ref_streams = turns[0]
        for turn, key, streams in turns[1:]:
            ratios = [a["delivered_pps"] / b["delivered_pps"] if b["delivered_pps"] else 0.0
                      for a, b in zip(runs[turn], runs[ref], strict=True)]
            self.results.append({**point, "streams": streams, "relay": f"{turn}/{ref}",
                                 "label": f"{label(key, streams)} / {label(ref_key, ref_streams)}",
                                 "status": "paired", "ratios": ratios, "summary": paired_summary(ratios)})

    def point(self, relay: Relay, gen: LiveGen, layout: str, size: int, rate: str, block: Block) -> dict:
        ceiling = self.ceilings.get((layout, size))
        try:
            pps = rate_pps(rate, ceiling)
        except ValueError as exc:
            return {"layout": layout, "size": size, "rate": rate, "status": "n/a", "reason": str(exc)}
        runs = [self.measure(relay, gen, pps, self.plan.seconds, block.exact)
                for _ in range(block.repeats or self.plan.repeats)]
        summary = summarize(runs)
        if relay.key == "ceiling" and rate == "flat" and block.streams == 1:
            self.ceilings[(layout, size)] = summary["delivered_pps"]
        log(f"[{block.name}] {relay.label:28} {layout:8} {size:5} B {rate:>7}: "
            f"{summary['delivered_pps'] / 1e3:9.1f} kpps delivered (spread {summary['spread'] * 100:.1f}%), "
            f"loss {summary['loss'] * 100:.2f}%")
        return {"layout": layout, "size": size, "rate": rate, "offered_target_pps": pps, "status": "ok",
                "runs": runs, "summary": summary}

    def integrity_check(self, relay: Relay, count: int = 2000, rate: int = 5000) -> dict:
        """Socket-level run through the relay: mcr-xdp gen in the source
        namespace, a verifying receiver at the sink (the XDP sink stepped
        aside), every packet once and intact."""
        topo = self.topo
        group, port = relay.out_endpoint(0)
        sink = topo.sink[0]
        self.sink.detach()
        procs = []
        try:
            recv = Proc(topo.python(sink.ns, "-m", "mcr_xdp.lab.traffic", "recv", "--group", group, "--port", str(port),
                                    "--iface", sink.name, "--count", str(count), "--idle-timeout", "2"))
            procs.append(recv)
            recv.wait_for("ready")
            send = Proc(topo.popen(topo.src.ns, venv_bin("mcr-xdp"), "gen", "--group", IN_GROUP, "--port",
                                   str(IN_PORT), "--iface", topo.src.name, "--rate", str(rate), "--count",
                                   str(count), "--size", "256", "--json"))
            procs.append(send)
            send.wait_for("sent", timeout=60)
            result = json.loads(recv.wait_for('"received"', timeout=60))
        except Exception as exc:  # the check reports; it never stops the benchmark
            result = {"error": str(exc)}
        finally:
            for proc in procs:
                proc.stop()
            for s in topo.sink:
                self.sink.attach(s.ns, s.name)
        ok = result.get("unique") == count and not result.get("corrupt") and not result.get("duplicates")
        log(f"[integrity] {relay.label}: {'ok' if ok else 'FAILED'} {result}")
        return {"layout": "default", "size": 256, "rate": str(rate), "status": "check", "check": {
            "sent": count, "ok": ok, **result}}

    def run(self) -> list[dict]:
        with ExitStack() as stack:
            self._build(stack)
            for block in self.plan.blocks:
                self.run_block(block)
        return self.results


class _Swapper:
    """Which of some relays' loaded XDP programs runs on one input, changed
    by atomic replace (each relay told when its turn begins and ends);
    restore() leaves the program that was attached at the start (its owner
    detaches it) or none."""

    def __init__(self, ns: str, ifindex: int, relays: dict[str, Relay], attached: str | None):
        self.ns, self.ifindex, self.relays = ns, ifindex, relays
        self.fds = {k: r.xdp_program() for k, r in relays.items()}
        self.first = self.current = attached

    def to(self, key: str | None) -> None:
        if key == self.current:
            return
        if self.current is not None:
            self.relays[self.current].leave()
        with nsutil.netns(self.ns):
            if key is None:
                libbpf.xdp_detach(self.ifindex, libbpf.XDP_FLAGS_DRV_MODE)
            elif self.current is None:
                libbpf.xdp_attach(self.ifindex, self.fds[key], libbpf.XDP_FLAGS_DRV_MODE)
            else:
                libbpf.xdp_swap(self.ifindex, self.fds[key], self.fds[self.current], libbpf.XDP_FLAGS_DRV_MODE)
        self.current = key
        if key is not None:
            self.relays[key].enter()

    def restore(self) -> None:
        self.to(self.first)


class _GenSwapper:
    """Which of some generators runs (at one rate): one at a time, started
    and stopped in turn; restore() stops the running one."""

    def __init__(self, gens: dict, rate: float | None):
        self.gens, self.rate = gens, rate
        self.current: str | None = None

    def to(self, key: str | None) -> None:
        if key == self.current:
            return
        if self.current is not None:
            self.gens[self.current].stop()
        self.current = None
        if key is not None:
            self.gens[key].start(self.rate)
            self.current = key

    def restore(self) -> None:
        self.to(None)


def paired_summary(ratios: list[float]) -> dict:
    """Paired ratios of one relay's runs to the reference's: the median, how
    far they spread (max - min over the median), and the median's 95%
    confidence interval (ci_low, ci_high: median_ci)."""
    med = statistics.median(ratios)
    low, high = median_ci(ratios)
    return {"ratio": med, "min": min(ratios), "max": max(ratios), "n": len(ratios),
            "spread": (max(ratios) - min(ratios)) / med if med else float("inf"), "ci_low": low, "ci_high": high}


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval of the median: order
    statistics k and n + 1 - k, k the largest with P(Binomial(n, 1/2) < k)
    <= (1 - level) / 2 (at least the extremes: k = 1)."""
    ordered = sorted(values)
    n = len(ordered)
    k, below = 1, 0.0  # below: P(X < k), X ~ Binomial(n, 1/2)
    while True:
        below += math.comb(n, k - 1) / 2**n
        if below + math.comb(n, k) / 2**n > (1 - level) / 2 or k >= n // 2:
            break
        k += 1
    return ordered[k - 1], ordered[n - k]


def summarize(runs: list[dict]) -> dict:
    pps = [r["delivered_pps"] for r in runs]
    med = statistics.median(pps)
    return {
        "delivered_pps": med,
        "min_pps": min(pps),
        "max_pps": max(pps),
        "spread": (max(pps) - min(pps)) / med if med else 0.0,
        "offered_pps": statistics.median(r["offered_pps"] for r in runs),
        "loss": statistics.median(r["loss"] for r in runs),
        "loss_max": max(r["loss"] for r in runs),
        "exact_ok": all(r["delivered"] == r["expected"] for r in runs),
        "relay_cpu": _median_or_none([_relay_cpu(r) for r in runs]),
        "cpu_busy": {c: statistics.median(r["cpu_busy"][c] for r in runs) for c in runs[0]["cpu_busy"]},
        "loadavg": max(r["loadavg"] for r in runs),
        "other_cpu": max(r["other_cpu"] for r in runs),
        # The lossiest run's: where its frames were dropped, and how many never arrived in all.
        "drops": max(runs, key=lambda r: r["loss"]).get("drops", {}),
        "missing": max(max(0, r["expected"] - r["delivered"]) for r in runs),
    }


def _relay_cpu(run: dict) -> float | None:
    parts = [run[k] for k in ("relay_process_cpu", "relay_napi_cpu") if run[k] is not None]
    return sum(parts) if parts else None


def _median_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def check_frames(gen: LiveGen) -> None:
    """The generator's frames must be valid IPv4/UDP with correct checksums,
    or every relay that checks them (the host stack) would drop them."""
    import ipaddress
    import struct

    from .livegen import HEADERS, _fold, _words

    for frame in gen.sample(3):
        ip, udp = frame[14:34], frame[34:HEADERS]
        if _fold(_words(ip)) != 0xFFFF:
            raise RuntimeError(f"bench_gen.c wrote a bad IPv4 checksum: {frame[:HEADERS].hex()}")
        pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(frame) - 34)
        if _fold(_words(pseudo + frame[34:])) != 0xFFFF:
            raise RuntimeError(f"bench_gen.c wrote a bad UDP checksum: {frame[:HEADERS].hex()}")
        if not ipaddress.IPv4Address(ip[16:20]).is_multicast or struct.unpack("!H", udp[2:4])[0] != gen.cfg.port:
            raise RuntimeError(f"bench_gen.c wrote the wrong destination: {frame[:HEADERS].hex()}")


def kill_namespace_processes(namespaces: list[str]) -> None:
    """SIGKILL whatever still runs inside the benchmark's namespaces (a
    relay that ignored SIGTERM), so deleting them leaves nothing behind."""
    for ns in namespaces:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in out:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass


def cleanup_stale() -> list[str]:
    """Remove benchmark namespaces left by runs whose process is gone (a
    SIGKILLed run); returns their names."""
    from mcr_xdp.lab.netns import existing_namespaces

    stale = []
    for name in sorted(existing_namespaces()):
        parts = name.split("-")
        if parts[0] != NS_PREFIX or len(parts) < 3 or not parts[1].isdigit():
            continue
        if os.path.exists(f"/proc/{parts[1]}"):
            continue
        kill_namespace_processes([name])
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        stale.append(name)
    return stale
