"""mcr-xdp demo: relay a stream across a throw-away namespace chain."""

from __future__ import annotations

import json
import re
import signal

import typer

from mcr_xdp.errors import McrError

from .console import out

IN_GROUP, IN_PORT = "239.1.1.1", 5001
OUT_GROUP, OUT_PORT = "239.2.2.2", 5002


class DemoFailed(McrError):
    pass


def demo(
    count: int = typer.Option(5000, "--count", min=1, max=10_000_000, help="Packets to send."),
    rate: float = typer.Option(2000, "--rate", min=1, help="Packets per second."),
    size: int = typer.Option(256, "--size", min=20, max=1472, help="UDP payload bytes."),
) -> None:
    """Relay a stream across throw-away namespaces and check every packet.

    Builds src -> relay -> sink namespaces, relays a bounded stream with XDP
    (239.1.1.1:5001 rewritten to 239.2.2.2:5002), checks every packet
    arrived once and intact, and removes everything again.
    """
    from mcr_xdp import features
    from mcr_xdp.lab.netns import Chain, unique_prefix
    from mcr_xdp.lab.proc import Proc, venv_bin

    features.require_root("the demo")
    topo = Chain(unique_prefix("mcr-demo"))
    procs: list[Proc] = []
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        topo.build()
        out.print(f"[bold]topology[/]: {topo.src.ns} ({topo.src.name}) -> {topo.relay_in.ns} "
                  f"({topo.IN} => {topo.OUT}) -> {topo.sink[0].ns} ({topo.sink[0].name})")
        rule = f"{IN_GROUP}:{IN_PORT}={topo.OUT}/{OUT_GROUP}:{OUT_PORT}"
        out.print(f"[bold]relay[/]: mcr-xdp attach {topo.IN} --rule {rule}")
        relay = Proc(topo.popen(topo.relay_in.ns, venv_bin("mcr-xdp"), "attach", topo.IN, "--rule", rule,
                                "--interval", "1"),
                     on_line=lambda line: out.print(f"  [dim]relay |[/] {line}", highlight=False))
        procs.append(relay)
        relay.wait_for("relaying", timeout=60)
        sink_ns, src_ns = topo.sink[0].ns, topo.src.ns
        recv = Proc(topo.python(sink_ns, "-m", "mcr_xdp.lab.traffic", "recv", "--group", OUT_GROUP, "--port",
                                str(OUT_PORT), "--iface", topo.sink[0].name, "--count", str(count)))
        procs.append(recv)
        recv.wait_for("ready")
        errors_before = topo.snmp(sink_ns)["InCsumErrors"]
        out.print(f"[bold]send[/]: {count} packets of {size} B at {rate:g} pps to {IN_GROUP}:{IN_PORT}")
        send = Proc(topo.python(src_ns, "-m", "mcr_xdp.lab.traffic", "send", "--group", IN_GROUP, "--port",
                                str(IN_PORT), "--iface", topo.src.name, "--count", str(count), "--rate",
                                str(rate), "--size", str(size)))
        procs.append(send)
        send.wait_for("sent", timeout=count / rate + 60)
        result = json.loads(recv.wait_for('"received"', timeout=60))
        csum_errors = topo.snmp(sink_ns)["InCsumErrors"] - errors_before
        relay.stop()
        _report(count, result, csum_errors, relay.lines)
    finally:
        for proc in reversed(procs):
            proc.stop()
        topo.close()
        signal.signal(signal.SIGTERM, previous)
    out.print("removed the demo namespaces")


def _raise_interrupt(*_) -> None:
    raise KeyboardInterrupt


def _report(count: int, result: dict, csum_errors: int, relay_lines: list[str]) -> None:
    forwarded = [int(m[1]) for line in relay_lines if (m := re.match(r"forwarded (\d+)", line))]
    dest = f"{OUT_GROUP}:{OUT_PORT}"
    checks = [
        ("sent by the source", count, True),
        ("forwarded by XDP", forwarded[-1] if forwarded else "?", bool(forwarded) and forwarded[-1] == count),
        (f"received at the sink on {dest}", got := result["destinations"].get(dest, 0), got == count),
        ("missing", result["missing"], result["missing"] == 0),
        ("duplicates", result["duplicates"], result["duplicates"] == 0),
        ("corrupt payloads", result["corrupt"], result["corrupt"] == 0),
        ("UDP checksum errors at the sink", csum_errors, csum_errors == 0),
    ]
    from rich.table import Table

    table = Table(title="demo result", title_justify="left")
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("ok")
    for name, value, ok in checks:
        table.add_row(name, str(value), "[green]yes[/]" if ok else "[red]NO[/]")
    out.print(table)
    if not all(ok for _, _, ok in checks):
        raise DemoFailed("the stream did not arrive intact; see the table above")
    out.print(f"[green]every packet arrived once, intact, rewritten to {dest}[/]")
