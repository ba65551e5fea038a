"""Pure renderers: snapshot (and rates) in, text or rich renderables out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from mcr_xdp.modes import Mode

if TYPE_CHECKING:  # imported where used: `mcr-xdp status` needs neither
    from mcr_xdp.health import Counts as HealthCounts
    from mcr_xdp.stats import Rates, Snapshot


def si(value: float, unit: str = "") -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f} {prefix}{unit}".rstrip()
    return f"{value:.0f} {unit}".rstrip()


def duration(seconds: float) -> str:
    seconds = int(seconds)
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def rule_list(rules: list[dict]) -> Table:
    """id and rule; with rates (status after the relay's second tick) the
    rule's packets and bits per second too."""
    rated = bool(rules) and all("pps" in r for r in rules)
    table = Table(title=f"{len(rules)} rule(s)", title_justify="left")
    table.add_column("id", justify="right")
    table.add_column("rule")
    if rated:
        table.add_column("pps", justify="right")
        table.add_column("bit/s", justify="right")
    for r in rules:
        rates = (si(r["pps"]), si(r["bps"], "bit/s")) if rated else ()
        table.add_row(str(r["id"]), Text(r["rule"]), *rates)  # Text: "[ff3e::1]" is no markup
    return table


def status(st: dict) -> list:
    head = Text(f"relay up {duration(st['uptime'])}, {len(st['rules'])} rule(s)"
                + (f", pid {st['pid']}" if st.get("pid") else "")
                + (f", config {st['config']}" if st.get("config") else "")
                + (f"; rates over the last {st['rates_seconds']:.1f} s" if st.get("rates_seconds") else ""))
    table = Table(title="interfaces", title_justify="left")
    for col in ("interface", "mode", "program", "rules", "joins"):
        table.add_column(col, justify="right" if col in ("program", "rules", "joins") else "left")
    for i in st["interfaces"]:
        table.add_row(i["name"], mode_text(i), str(i["prog_id"]), str(i["rules"]), str(i["joins"]))
    notices = [Text(f"notice: {n}", style="yellow") for n in dict.fromkeys(st.get("notices", []))]
    hops = [next_hops(st["next_hops"])] if st.get("next_hops") else []
    from mcr_xdp.health import Counts as HealthCounts

    health = health_table([(h["id"], h["rule"], HealthCounts.from_json(h)) for h in st.get("health", [])])
    return [head, *notices, table, rule_list(st["rules"]), *hops, *([health] if health is not None else [])]


def next_hops(hops: list[dict]) -> Table:
    """The unicast receivers and the next hop each is sent through."""
    table = Table(title="unicast receivers", title_justify="left")
    for col in ("rule", "output", "next hop", "MAC"):
        table.add_column(col, justify="right" if col == "rule" else "left")
    for h in hops:
        mac = Text(h["mac"]) if h["mac"] else Text(f"unresolved: {h['why']}", style="yellow")
        table.add_row(str(h["rule"]), Text(h["output"]), Text(h["via"]), mac)
    return table


def mode_text(i: dict) -> str:
    """An input's mode as status lists it; a killed relay's input whose
    program is gone says so."""
    return i["mode"] + ("" if i.get("attached", True) else " (detached)")


def attach_line(i: dict) -> str:
    """What one input (of status's "interfaces") runs, as printed at attach."""
    mode = Mode(i["mode"])
    if mode.is_xdp:
        return f"attached {i['name']}: XDP {mode.value.removeprefix('xdp-')} mode, program id {i['prog_id']}"
    if mode == Mode.TC:
        return f"attached {i['name']}: TC mode (clsact ingress), program id {i['prog_id']}"
    return f"attached {i['name']}: userspace mode (PACKET_FANOUT workers)"


def attach_lines(status: dict, shown_rules: int) -> list[str]:
    rules = status["rules"]
    lines = [attach_line(i) for i in status["interfaces"]]
    lines += [f"rule {r['id']}: {r['rule']}" for r in rules[:shown_rules]]
    if status.get("steering"):
        lines.append(f"steering flows over CPUs {','.join(map(str, status['steering']['cpus']))}")
    if status.get("userspace"):
        us = status["userspace"]
        groups = ", ".join(f"{name} group {gid}" for name, gid in us["fanout_groups"].items())
        loop = "" if us.get("inner_loop", "compiled") == "compiled" else \
            ", relaying in Python (the compiled inner loop is not built: make setup)"
        lines.append(f"userspace: {len(us['workers'])} workers, fanout {us['fanout']} ({groups}){loop}")
    if len(rules) > shown_rules:
        lines.append(f"... and {len(rules) - shown_rules} more rules (mcr-xdp rule list)")
    return lines


def counter_line(snap: Snapshot, rates: Rates | None) -> str:
    line = f"forwarded {snap.forwarded} dropped {snap.dropped} passed {snap.passed}"
    if snap.lost:
        line += f" lost-after-redirect {snap.lost}"
    if rates is not None:
        line += f" | {si(rates.forwarded_pps, 'pps')} forwarded, {si(rates.dropped_pps, 'pps')} dropped"
    return line


def counter_fields(snap: Snapshot, rates: Rates | None) -> dict:
    """The counter line's numbers, for a JSON log line."""
    fields = {"forwarded": snap.forwarded, "dropped": snap.dropped, "passed": snap.passed, "lost": snap.lost}
    if rates is not None:
        fields |= {"forwarded_pps": round(rates.forwarded_pps, 1), "dropped_pps": round(rates.dropped_pps, 1),
                   "passed_pps": round(rates.passed_pps, 1), "lost_pps": round(rates.lost_pps, 1)}
    return fields


# -- live view (TUI) and one-shot stats tables ------------------------------

def _bar(share: float, width: int = 20) -> str:
    full = round(max(0.0, min(1.0, share)) * width)
    return "█" * full + "·" * (width - full)


def header(snap: Snapshot, rates: Rates | None, status: dict) -> Text:
    ifaces = ", ".join(f"{i['name']} ({mode_text(i)}, prog {i['prog_id']})" for i in status.get("interfaces", []))
    text = Text.assemble(
        ("mcr-xdp", "bold"), f"  up {duration(status.get('uptime', 0))}",
        f"  CPUs {status.get('cpus', len(snap.cpus))}", f"  inputs {ifaces or '-'}",
    )
    if rates is not None:
        text.append(f"\nforwarding {si(rates.forwarded_pps, 'pps')}, dropping {si(rates.dropped_pps, 'pps')}, "
                    f"passing {si(rates.passed_pps, 'pps')} to the host")
        if rates.lost_pps:
            text.append(f", losing {si(rates.lost_pps, 'pps')} outside the datapath (see verdicts)", style="bold red")
    for notice in status.get("notices", []):
        text.append(f"\nnotice: {notice}", style="yellow")
    return text


def rules_live(snap: Snapshot, rates: Rates | None) -> Table:
    lost = {n: i.lost_after_redirect for n, i in snap.interfaces.items()}
    lost_rate = rates.interface_lost_pps if rates else {}
    table = Table(title="rules", title_justify="left", expand=True)
    for col, justify in (("id", "right"), ("input -> outputs", "left"), ("pps", "right"), ("bit/s", "right"),
                         ("packets", "right"), ("dropped", "right"), ("lost after redirect", "right")):
        table.add_column(col, justify=justify, overflow="fold")
    for r in snap.rules:
        pps = rates.rule_pps.get(r.rule_id, 0.0) if rates else 0.0
        bps = rates.rule_bps.get(r.rule_id, 0.0) if rates else 0.0
        out_lost = sum(lost.get(o.iface, 0) for o in r.outputs)
        losing = any(lost_rate.get(o.iface, 0) for o in r.outputs)
        style = "red" if losing or (rates and r.dropped and pps and r.forwarded < r.packets) else None
        table.add_row(str(r.rule_id), Text(r.rule), si(pps), si(bps, "bit/s"), str(r.packets), str(r.dropped),
                      str(out_lost), style=style)
        if len(r.outputs) > 1:
            for i, o in enumerate(r.outputs):
                opps = rates.output_pps.get((r.rule_id, i), 0.0) if rates else 0.0
                table.add_row("", Text(f"  -> {o.output}"), si(opps), "", str(o.packets), "",
                              str(lost.get(o.iface, 0)), style="dim" if not lost_rate.get(o.iface) else "red")
    return table


def health_table(rows: list[tuple[int, str, HealthCounts]]) -> Table | None:
    """Stream health of the rules with ;health= as (id, rule, counts); None
    for no such rule. A rule in red has lost packets or continuity."""
    if not rows:
        return None
    table = Table(title="stream health", title_justify="left", expand=True)
    for col, justify in (("id", "right"), ("rule", "left"), ("kind", "left"), ("received", "right"),
                         ("lost", "right"), ("duplicates", "right"), ("reordered", "right"),
                         ("cc errors", "right"), ("ssrc", "right"), ("not of its kind", "right")):
        table.add_column(col, justify=justify, overflow="fold")
    for rule_id, rule, h in rows:
        table.add_row(str(rule_id), Text(rule), h.kind, str(h.received), str(h.lost), str(h.duplicates),
                      str(h.reordered), str(h.cc_errors) if h.kind == "mpegts" else "-",
                      f"{h.ssrc:#010x}" if h.ssrc is not None else "-", str(h.invalid),
                      style="red" if h.lost or h.cc_errors else None)
    return table


def snapshot_health(snap: Snapshot) -> Table | None:
    return health_table([(r.rule_id, r.rule, r.health) for r in snap.rules if r.health is not None])


def merge_table(snap: Snapshot) -> Table | None:
    """Merged streams (;merge=rtp): a row per stream (what went out), then
    a row per leg (what it brought first, its copies dropped, what it
    missed); None without any. A stream in red lost packets on every leg."""
    from mcr_xdp.stats import merged_stream

    legs = [r for r in snap.rules if r.merge is not None]
    if not legs:
        return None
    streams: dict[str, list] = {}
    for r in legs:
        streams.setdefault(merged_stream(r.rule), []).append(r)
    table = Table(title="merged streams", title_justify="left", expand=True)
    for col, justify in (("id", "right"), ("stream / leg", "left"), ("forwarded", "right"), ("copies", "right"),
                         ("lost", "right"), ("reordered", "right"), ("resyncs", "right")):
        table.add_column(col, justify=justify, overflow="fold")
    for name, rows in streams.items():
        m = rows[0].merge
        out = rows[0].rule.split("=", 1)[1]
        table.add_row("", Text(f"{name} -> {out}"), str(m.forwarded), str(m.copies), str(m.lost), str(m.reordered),
                      str(m.resyncs), style="red" if m.lost else "bold")
        for r in rows:
            h = r.health
            table.add_row(str(r.rule_id), Text("  leg " + r.rule.split("|", 1)[0]),
                          str(h.first_copies) if h else "-", str(h.suppressed) if h else "-",
                          str(h.lost) if h else "-", "", "")
    return table


def cpus_table(snap: Snapshot, rates: Rates | None) -> Table:
    table = Table(title="per CPU", title_justify="left")
    for col in ("cpu", "pps", "share", "packets", "forwarded"):
        table.add_column(col, justify="left" if col == "share" else "right")
    total = sum(rates.cpu_pps.values()) if rates else 0.0
    for c in snap.cpus:
        pps = rates.cpu_pps.get(c.cpu, 0.0) if rates else 0.0
        table.add_row(str(c.cpu), si(pps), _bar(pps / total if total else 0.0), str(c.packets), str(c.forwarded))
    return table


def drops_table(snap: Snapshot, rates: Rates | None) -> Table:
    table = Table(title="verdicts (drops in red)", title_justify="left")
    for col in ("verdict", "packets", "pps"):
        table.add_column(col, justify="left" if col == "verdict" else "right")
    for name, (packets, _) in snap.verdicts.items():
        if packets:
            pps = rates.verdict_pps.get(name, 0.0) if rates else 0.0
            table.add_row(name, str(packets), si(pps), style="red" if name.startswith(("drop", "egress")) else None)
    if snap.steering_lost:
        table.add_row("lost in steering queues", str(snap.steering_lost), "", style="bold red")
    for name, i in snap.interfaces.items():
        if i.lost_in_ring:
            table.add_row(f"lost in userspace ring on {name}", str(i.lost_in_ring), "", style="bold red")
        if i.lost_after_redirect:
            table.add_row(f"lost after redirect on {name}", str(i.lost_after_redirect),
                          si(rates.interface_lost_pps.get(name, 0.0) if rates else 0.0), style="bold red")
    return table


def dashboard(snap: Snapshot, rates: Rates | None, status: dict):
    from rich.columns import Columns
    from rich.console import Group

    extra = [t for t in (snapshot_health(snap), merge_table(snap)) if t is not None]
    return Group(header(snap, rates, status), rules_live(snap, rates), *extra,
                 Columns([cpus_table(snap, rates), drops_table(snap, rates)]),
                 Text("q or Ctrl-C quits", style="dim"))
