"""mcr-xdp attach: run a relay in the foreground."""

from __future__ import annotations

import signal
import socket
import time
from typing import Annotated

import typer

from mcr_xdp import config as config_mod, control, stats
from mcr_xdp.control import ControlServer
from mcr_xdp.errors import McrError
from mcr_xdp.fallback import FANOUT_MODES
from mcr_xdp.loader import Mode, XdpMode
from mcr_xdp.maps import parse_cpu_list
from mcr_xdp.metrics import MetricsServer, exposition
from mcr_xdp.relay import Relay, RelayConfig
from mcr_xdp.rules import parse_rule
from mcr_xdp.service import Service

from . import render
from .console import err, out
from .options import SocketOpt
from .tui import LiveView, require_terminal

RULE_HELP = (
    "[INPUT/][SOURCE@]GROUP:PORT=OUT[,OUT...], OUT = IFACE (keep group and port) or IFACE/GROUP:PORT; "
    "IPv6 in brackets: [ff3e::1]:5001. INPUT/ is needed with several input interfaces. Repeatable."
)
SHOWN_RULES = 20


def attach(
    interfaces: Annotated[list[str] | None, typer.Argument(help="Input interfaces the multicast arrives on.",
                                                           show_default=False)] = None,
    rule: Annotated[list[str], typer.Option("--rule", "-r", help=RULE_HELP, show_default=False)] = [],  # noqa: B006
    config: Annotated[str | None, typer.Option("--config", "-c", help="TOML config file (inputs, rules, "
                                               "options); SIGHUP re-reads it.")] = None,
    mode: Annotated[Mode | None, typer.Option("--mode", show_default="auto", help=(
        "How to relay: xdp-native, xdp-generic, tc (clsact + bpf_clone_redirect), userspace (PACKET_FANOUT "
        "workers), or auto: the first of those, in that order, that works on each input."))] = None,
    xdp_mode: Annotated[XdpMode | None, typer.Option("--xdp-mode", show_default="auto",
                                                     help="Alias: native = --mode xdp-native, generic = "
                                                     "--mode xdp-generic, auto = --mode auto.")] = None,
    steer_cpus: Annotated[str | None, typer.Option("--steer-cpus", metavar="LIST", help=(
        "XDP: hash each flow (source, group, port) to one of these CPUs (e.g. 0,1 or 0-3), which forwards "
        "it (cpumap); a stream never reorders. Off by default."), show_default=False)] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, show_default="one per CPU",
                                                help="Userspace mode: worker processes.")] = None,
    fanout: Annotated[str | None, typer.Option("--fanout", show_default="hash", help=(
        "Userspace mode: how PACKET_FANOUT spreads packets over the workers: hash (per flow, keeps order), "
        "cpu (by receiving CPU), lb (round robin, may reorder a stream)."))] = None,
    interval: Annotated[float | None, typer.Option("--interval", min=0.2, show_default="5",
                                                   help="Seconds between counter lines.")] = None,
    socket_path: SocketOpt = None,
    tui: Annotated[bool, typer.Option("--tui", help="Show the live stats view instead of counter lines; "
                                      "q or Ctrl-C detaches.")] = False,
    metrics_addr: Annotated[str | None, typer.Option("--metrics-addr", metavar="HOST:PORT",
                                                     help="Serve Prometheus metrics at http://HOST:PORT/metrics.",
                                                     show_default=False)] = None,
) -> None:
    """Attach the relay to the input interfaces and relay until Ctrl-C or SIGTERM.

    Each input runs in the fastest mode that works there (--mode auto: native
    XDP, generic XDP, TC, userspace); the first lines say which, and why.

    Rules can change at runtime (mcr-xdp rule, SIGHUP with --config).

    Example: mcr-xdp attach eth0 --rule 239.1.1.1:5001=eth1/239.2.2.2:5002
    """
    if tui:
        require_terminal("--tui")
    file_cfg = config_mod.load(config) if config else None
    inputs = list(dict.fromkeys([*(interfaces or []), *(file_cfg.interfaces if file_cfg else [])]))
    if not inputs:
        raise typer.BadParameter("name at least one input interface (or give --config)", param_hint="INTERFACES")
    default = inputs[0] if len(inputs) == 1 else None
    rules = [*(file_cfg.rules if file_cfg else []), *(parse_rule(text, default) for text in rule)]
    if not rules:
        raise typer.BadParameter("give at least one --rule (or --config with rules)", param_hint="--rule")
    fanout = fanout or (file_cfg.fanout if file_cfg else None) or "hash"
    if fanout not in FANOUT_MODES:
        raise typer.BadParameter(f"{fanout!r} is not one of {', '.join(FANOUT_MODES)}", param_hint="--fanout")
    try:
        cpus = parse_cpu_list(steer_cpus) if steer_cpus else ()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--steer-cpus") from None
    if file_cfg is not None:
        mode = mode or file_cfg.mode
        cpus = cpus or file_cfg.steer_cpus
        workers = workers or file_cfg.workers
    xdp = xdp_mode or (file_cfg.xdp_mode if file_cfg and mode is None else None) or XdpMode.AUTO
    interval = interval or (file_cfg.interval if file_cfg else None) or 5.0
    path = socket_path or (file_cfg.control_socket if file_cfg else None) or control.default_path()

    relay = Relay(RelayConfig(interfaces=inputs, rules=rules, xdp_mode=xdp, mode=mode, steer_cpus=cpus,
                              workers=workers, fanout=fanout))
    service = Service(relay, config)
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in watched}
    old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    server = metrics = None
    try:
        relay.start()
        server = ControlServer(path, service.handle)
        server.add_reader(wake_r, "signal")
        if metrics_addr:
            metrics = MetricsServer(metrics_addr, lambda: exposition(relay.snapshot(), service.status()))
            server.add_reader(metrics.sock, metrics.serve)
        _announce(relay, path)
        if metrics is not None:
            out.print(f"metrics at http://{metrics.address[0]}:{metrics.address[1]}/metrics", markup=False)
        if tui:
            with LiveView(handle_sigterm=False) as view:
                if view.stdin is not None:
                    server.add_reader(view.stdin, "key")
                _loop(relay, service, server, wake_r, interval, view)
        else:
            _loop(relay, service, server, wake_r, interval)
    finally:
        if metrics is not None:
            metrics.close()
        if server is not None:
            server.close()
        relay.stop()
        signal.set_wakeup_fd(old_wakeup)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        wake_r.close()
        wake_w.close()
    out.print(f"detached {', '.join(inputs)}; left the groups", markup=False)


def _announce(relay: Relay, path: str) -> None:
    for a in relay.attachments.values():
        if a.notice:
            err.print(f"mcr-xdp: notice: {a.notice}", markup=False)
    installed = list(relay.rules.values())
    for line in render.attach_lines(list(relay.attachments.values()), installed[:SHOWN_RULES]):
        out.print(line, markup=False)
    st = relay.status()
    if st.get("steering"):
        out.print(f"steering flows over CPUs {','.join(map(str, st['steering']['cpus']))}", markup=False)
    if st.get("userspace"):
        us = st["userspace"]
        groups = ", ".join(f"{name} group {gid}" for name, gid in us["fanout_groups"].items())
        out.print(f"userspace: {len(us['workers'])} workers, fanout {us['fanout']} ({groups})", markup=False)
    if len(installed) > SHOWN_RULES:
        out.print(f"... and {len(installed) - SHOWN_RULES} more rules (mcr-xdp rule list)", markup=False)
    out.print(f"control socket {path}", markup=False)
    out.print("relaying; Ctrl-C or SIGTERM detaches", markup=False)


def _loop(relay: Relay, service: Service, server: ControlServer, wake, interval: float,
          view: LiveView | None = None) -> None:
    """Serve the control socket and signals; every interval print a counter
    line (or refresh the live view) until SIGINT, SIGTERM or q."""
    prev = relay.snapshot()
    if view is not None:
        view.update(prev, service.status())
    deadline = time.monotonic() + interval
    while True:
        woke = server.poll(max(0.0, deadline - time.monotonic()))
        if "key" in woke and view.quit_pressed():
            break
        if "signal" in woke:
            try:
                signums = wake.recv(64)
            except BlockingIOError:
                signums = b""
            if signal.SIGHUP in signums:
                _reload(service)
            if signal.SIGINT in signums or signal.SIGTERM in signums:
                break
        if time.monotonic() < deadline:
            continue
        deadline += interval
        try:
            relay.refresh_outputs()
        except (McrError, OSError) as exc:  # netlink trouble: keep relaying, try again next time
            err.print(f"mcr-xdp: could not re-check the outputs: {exc}", markup=False)
        cur = relay.snapshot()
        if view is not None:
            view.update(cur, service.status())
        else:
            out.print(render.counter_line(cur, stats.rate(prev, cur)), markup=False)
        prev = cur
    out.print(render.counter_line(relay.snapshot(), None), markup=False)


def _reload(service: Service) -> None:
    try:
        result = service.reload()
    except McrError as exc:
        err.print(f"mcr-xdp: reload failed, rules unchanged: {exc}", markup=False)
        return
    out.print(f"reloaded {service.config_path}: {len(result['added'])} added, {len(result['removed'])} removed, "
              f"{len(result['changed'])} changed", markup=False)
