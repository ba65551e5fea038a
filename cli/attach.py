"""mcr-xdp attach: run a relay in the foreground."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from mcr_xdp import stats
from mcr_xdp.loader import XdpMode
from mcr_xdp.relay import Relay, RelayConfig
from mcr_xdp.rules import parse_rule

from . import render
from .console import err, out

RULE_HELP = (
    "GROUP:PORT=OUT[,OUT...], OUT = IFACE (keep group and port) or IFACE/GROUP:PORT; "
    "IPv6 in brackets: [ff3e::1]:5001. Repeat for several rules."
)


def attach(
    interface: Annotated[str, typer.Argument(help="Input interface the multicast arrives on.", show_default=False)],
    rule: Annotated[list[str], typer.Option("--rule", "-r", help=RULE_HELP, show_default=False)] = [],  # noqa: B006
    xdp_mode: Annotated[XdpMode, typer.Option("--xdp-mode", help="native, generic, or auto (native, else generic).")] = XdpMode.AUTO,
    interval: Annotated[float, typer.Option("--interval", min=0.2, help="Seconds between counter lines.")] = 5.0,
) -> None:
    """Attach the XDP relay to INTERFACE and relay until Ctrl-C or SIGTERM.

    Example: mcr-xdp attach eth0 --rule 239.1.1.1:5001=eth1/239.2.2.2:5002
    """
    rules = [parse_rule(text, interface) for text in rule]
    if not rules:
        raise typer.BadParameter("give at least one --rule", param_hint="--rule")
    relay = Relay(RelayConfig(interfaces=[interface], rules=rules, xdp_mode=xdp_mode))
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        attachments = relay.start()
        for a in attachments:
            if a.notice:
                err.print(f"mcr-xdp: notice: {a.notice}")
        for line in render.attach_lines(attachments, list(relay.rules.values())):
            out.print(line, markup=False)
        out.print("relaying; Ctrl-C or SIGTERM detaches", markup=False)
        prev = relay.snapshot()
        while not stop.wait(interval):
            cur = relay.snapshot()
            out.print(render.counter_line(cur, stats.rate(prev, cur)), markup=False)
            prev = cur
        out.print(render.counter_line(relay.snapshot(), None), markup=False)
    finally:
        relay.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    out.print(f"detached {interface}; left {len(rules)} group(s)", markup=False)
