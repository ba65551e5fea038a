"""mcr-xdp attach: run a relay in the foreground."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, List, Optional

import typer

from mcr_xdp.logs import FORMAT_ENV, Format
from mcr_xdp.modes import Mode, XdpMode

from . import options
from .console import log

if TYPE_CHECKING:
    from mcr_xdp.daemon import Daemon

    from .tui import LiveView

RULE_HELP = (
    "[INPUT/][SOURCE@]GROUP:PORT=OUT[,OUT...][;ttl=N], OUT = IFACE (keep group and port) or IFACE/GROUP:PORT; "
    "IPv6 in brackets: [ff3e::1]:5001. Ranges: GROUP/LEN, PORT *, SOURCE/LEN (e.g. 239.1.0.0/16:*=eth1). "
    "INPUT/ is needed with several input interfaces. Repeatable."
)
SHOWN_RULES = 20


def attach(
    interfaces: Optional[List[str]] = typer.Argument(None, help="Input interfaces the multicast arrives on.",
                                                     show_default=False),
    rule: List[str] = typer.Option([], "--rule", "-r", help=RULE_HELP, show_default=False),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="TOML config file (inputs, rules, "
                                         "options); SIGHUP re-reads it."),
    mode: Optional[Mode] = typer.Option(None, "--mode", show_default="auto", help=(
        "How to relay: xdp-native, xdp-generic, tc (clsact + bpf_clone_redirect), userspace (PACKET_FANOUT "
        "workers), or auto: the first of those, in that order, that works on each input.")),
    xdp_mode: Optional[XdpMode] = typer.Option(None, "--xdp-mode", show_default="auto",
                                               help="Alias: native = --mode xdp-native, generic = "
                                               "--mode xdp-generic, auto = --mode auto."),
    steer_cpus: Optional[str] = typer.Option(None, "--steer-cpus", metavar="LIST", help=(
        "Native XDP: hash each flow (source, group, port) to one of these CPUs (e.g. 0,1 or 0-3), which "
        "forwards it (cpumap); a stream never reorders. Generic XDP forwards on the receiving CPU. Off by "
        "default."), show_default=False),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, show_default="one per CPU",
                                          help="Userspace mode: worker processes."),
    fanout: Optional[str] = typer.Option(None, "--fanout", show_default="hash", help=(
        "Userspace mode: how PACKET_FANOUT spreads packets over the workers: hash (per flow, keeps order), "
        "cpu (by receiving CPU), lb (round robin, may reorder a stream).")),
    interval: Optional[float] = typer.Option(None, "--interval", min=0.2, show_default="5",
                                             help="Seconds between counter lines."),
    join: str = typer.Option("rule", "--join", metavar="rule|none", help=(
        "rule: each input joins the groups of its rules (IGMP/MLD); none: joins nothing (the traffic "
        "arrives unasked: static joins, snooping off). Group ranges never join. The config file sets "
        "it per input.")),
    loss_tracer: Optional[bool] = typer.Option(None, "--loss-tracer/--no-loss-tracer", show_default="on", help=(
        "XDP: count the frames the kernel drops after a redirect (an output down or full) as "
        "lost_after_redirect. Its tracepoint runs at every XDP transmit flush of the machine: 2.5-4.5% of a "
        "core's 64-byte rate on the benchmark. Off, those losses show only in the interfaces' own counters.")),
    socket_path: Optional[str] = options.SOCKET,
    tui: bool = typer.Option(False, "--tui", help="Show the live stats view instead of counter lines; "
                             "q or Ctrl-C detaches."),
    metrics_addr: Optional[str] = typer.Option(None, "--metrics-addr", metavar="HOST:PORT",
                                               help="Serve Prometheus metrics at http://HOST:PORT/metrics.",
                                               show_default=False),
    log_format: Optional[Format] = typer.Option(None, "--log-format", envvar=FORMAT_ENV,
                                                show_default="journal on the journal, else text", help=(
        "text: plain lines (info on stdout, notices, warnings and errors on stderr); journal: each preceded by "
        "its syslog level <N>, which journald keeps as the priority; json: one JSON object a line (ts, level, "
        "msg, fields). Unset: journal on a stream systemd connects to the journal ($JOURNAL_STREAM).")),
    dry_run: bool = typer.Option(False, "--dry-run", help=(
        "Check everything and attach nothing: the rules and options, the interfaces (present, free), root, and "
        "the datapath compiled and loaded into the kernel (the verifier passes it), then unloaded.")),
) -> None:
    """Attach the relay to the input interfaces and relay until Ctrl-C or SIGTERM.

    Each input runs in the fastest mode that works there (--mode auto: native
    XDP, generic XDP, TC, userspace); the first lines say which, and why.

    Rules can change at runtime (mcr-xdp rule, SIGHUP with --config).

    Example: mcr-xdp attach eth0 --rule 239.1.1.1:5001=eth1/239.2.2.2:5002
    """
    # First: the error line of a failing start comes out in this format too.
    log.format = log_format
    if log_format is not None:
        os.environ[FORMAT_ENV] = log_format.value  # for the processes the relay starts (userspace workers)
    # Imported here, not at the top: `mcr-xdp status` and the other commands
    # load this module too, and must not pay for the daemon (pyroute2, bcc).
    from mcr_xdp import config as config_mod
    from mcr_xdp import control
    from mcr_xdp.config import JOIN_VALUES
    from mcr_xdp.daemon import Daemon
    from mcr_xdp.fallback import FANOUT_MODES
    from mcr_xdp.maps import parse_cpu_list
    from mcr_xdp.relay import Relay, RelayConfig
    from mcr_xdp.rules import parse_rules

    from . import render
    from .tui import LiveView, require_terminal

    if tui:
        require_terminal("--tui")
    file_cfg = config_mod.load(config) if config else None
    inputs = list(dict.fromkeys([*(interfaces or []), *(file_cfg.interfaces if file_cfg else [])]))
    if not inputs:
        raise typer.BadParameter("name at least one input interface (or give --config)", param_hint="INTERFACES")
    default = inputs[0] if len(inputs) == 1 else None
    rules = [*(file_cfg.rules if file_cfg else []), *(leg for text in rule for leg in parse_rules(text, default))]
    if not rules:
        raise typer.BadParameter("give at least one --rule (or --config with rules)", param_hint="--rule")
    if join not in JOIN_VALUES:
        raise typer.BadParameter(f"{join!r} is not one of {', '.join(JOIN_VALUES)}", param_hint="--join")
    no_join = (file_cfg.no_join if file_cfg else frozenset()) | (
        frozenset(interfaces or []) if join == "none" else frozenset())
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
    fixed_interval = interval is not None
    interval = interval or (file_cfg.interval if file_cfg else None) or 5.0
    path = socket_path or (file_cfg.control_socket if file_cfg else None) or control.default_path()
    if loss_tracer is None:
        loss_tracer = file_cfg is None or file_cfg.loss_tracer is not False

    relay = Relay(RelayConfig(interfaces=inputs, rules=rules, xdp_mode=xdp, mode=mode, steer_cpus=cpus,
                              workers=workers, fanout=fanout, instance=control.instance_for(path),
                              control_socket=path, no_join=no_join, loss_tracer=loss_tracer))
    if dry_run:
        _dry_run(relay)
        return
    with Daemon(relay, path, config, metrics_addr, interval, fixed_interval) as daemon:
        _announce(daemon)
        if tui:
            with LiveView(handle_sigterm=False) as view:
                if view.stdin is not None:
                    daemon.add_reader(view.stdin, "key")
                daemon.run(ViewReport(daemon, view))
        else:
            daemon.run(LineReport(daemon))
        last = relay.snapshot()
        log.info(render.counter_line(last, None), **render.counter_fields(last, None))
    if daemon.handover:
        left = daemon.left_forwarding
        detached = [name for name in inputs if name not in left]
        if left:
            log.notice(f"left {', '.join(left)} forwarding for the next relay started with the same command to take "
                       "over (SIGQUIT)")
        if detached:
            log.info(f"detached {', '.join(detached)} (userspace: nothing of it outlives the process)")
        log.info("left the groups")
        raise typer.Exit(HANDOVER_EXIT)
    log.info(f"detached {', '.join(inputs)}; left the groups")


# Exit status after SIGQUIT (EX_TEMPFAIL): "start me again". The unit
# restarts on it (RestartForceExitStatus=) without counting a failure.
HANDOVER_EXIT = 75


def _dry_run(relay) -> None:
    result = relay.dry_run()
    for name, i in result["inputs"].items():
        took = "; a killed relay's program is on it: attach would take it over" if i["takes_over"] else ""
        log.info(f"input {name}: free, would try {', '.join(i['modes'])}{took}")
    for rule in result["rules"]:
        log.info(f"rule: {rule}")
    if result["programs"]:
        log.info(f"datapath compiled, every program loaded and verified: {', '.join(result['programs'])}")
    log.info(f"dry run: {len(result['rules'])} rule(s) on {len(result['inputs'])} input(s) valid; nothing attached")


def _announce(daemon: Daemon) -> None:
    from . import render

    st = daemon.service.status()
    # Every notice at start: modes that fell through, interfaces down (they
    # are followed), rules forwarded by TC, counters taken over, ...
    for notice in dict.fromkeys(st["notices"]):
        log.notice(notice)
    for line in render.attach_lines(st, SHOWN_RULES):
        log.info(line)
    if daemon.metrics is not None:
        host, port = daemon.metrics.address
        url = f"http://{host}:{port}/metrics"
        log.info(f"metrics at {url}", metrics=url)
    log.info(f"control socket {daemon.socket_path}", socket=daemon.socket_path)
    log.info("relaying; Ctrl-C or SIGTERM detaches")


class LineReport:
    """A counter line every interval, and the daemon's events, to the log
    (daemon.Reporter)."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def tick(self, prev, cur, status) -> None:
        from . import render

        rates = self.daemon.service.tick_rates  # prev to cur, worked out once by the service
        if prev is not None and rates is not None:
            log.info(render.counter_line(cur, rates), **render.counter_fields(cur, rates))

    def reloaded(self, result, error) -> None:
        path = self.daemon.service.config_path
        if error is not None:
            log.error(f"reload failed, rules unchanged: {error}", config=path)
            return
        log.info(f"reloaded {path}: {len(result['added'])} added, {len(result['removed'])} removed, "
                 f"{len(result['changed'])} changed", config=path,
                 **{k: result[k] for k in ("added", "removed", "changed")})
        if result["runtime_removed"]:
            log.warning(f"the file is the rule set: removed {len(result['runtime_removed'])} rule(s) added "
                        f"with `mcr-xdp rule add`: {', '.join(result['runtime_removed'])}",
                        rules=result["runtime_removed"])

    def event(self, event) -> None:
        log.event(event)

    def wants_quit(self, woke) -> bool:
        return False


class ViewReport(LineReport):
    """The live view, refreshed every interval; q quits."""

    def __init__(self, daemon: Daemon, view: LiveView):
        super().__init__(daemon)
        self.view = view

    def tick(self, prev, cur, status) -> None:
        self.view.update(cur, status)

    def wants_quit(self, woke) -> bool:
        return "key" in woke and self.view.quit_pressed()
