"""Pure renderers: snapshot (and rates) in, text or rich renderables out."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from mcr_xdp.loader import Attachment
from mcr_xdp.relay import InstalledRule
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
    table = Table(title=f"{len(rules)} rule(s)", title_justify="left")
    table.add_column("id", justify="right")
    table.add_column("rule")
    for r in rules:
        table.add_row(str(r["id"]), r["rule"])
    return table


def status(st: dict) -> list:
    head = Text(f"relay up {duration(st['uptime'])}, {len(st['rules'])} rule(s)"
                + (f", config {st['config']}" if st.get("config") else ""))
    table = Table(title="interfaces", title_justify="left")
    for col in ("interface", "mode", "program", "rules", "joins"):
        table.add_column(col, justify="right" if col in ("program", "rules", "joins") else "left")
    for i in st["interfaces"]:
        table.add_row(i["name"], i["mode"], str(i["prog_id"]), str(i["rules"]), str(i["joins"]))
    return [head, table, rule_list(st["rules"])]


def attach_lines(attachments: list[Attachment], rules: list[InstalledRule]) -> list[str]:
    lines = [
        f"attached {a.ifname}: XDP {a.mode} mode, program id {a.prog_id}" for a in attachments
    ]
    lines += [f"rule {r.rule_id}: {r.rule}" for r in rules]
    return lines


def counter_line(snap: Snapshot, rates: Rates | None) -> str:
    line = f"forwarded {snap.forwarded} dropped {snap.dropped} passed {snap.passed}"
    if rates is not None:
        line += f" | {si(rates.forwarded_pps, 'pps')} forwarded, {si(rates.dropped_pps, 'pps')} dropped"
    return line


def verdict_table(snap: Snapshot) -> Table:
    table = Table(title="verdicts", title_justify="left")
    table.add_column("verdict")
    table.add_column("packets", justify="right")
    table.add_column("bytes", justify="right")
    for name, (packets, nbytes) in snap.verdicts.items():
        if packets:
            table.add_row(name, str(packets), str(nbytes))
    return table


def rules_table(snap: Snapshot) -> Table:
    table = Table(title="rules", title_justify="left")
    for col in ("id", "rule", "packets", "bytes", "forwarded", "dropped"):
        table.add_column(col, justify="right" if col not in ("rule",) else "left")
    for r in snap.rules:
        table.add_row(str(r.rule_id), r.rule, str(r.packets), str(r.bytes), str(r.forwarded), str(r.dropped))
    return table
