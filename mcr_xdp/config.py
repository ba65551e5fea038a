"""The relay's TOML configuration file.

    xdp_mode = "auto"                       # optional: auto, native, generic
    mode = "auto"                           # optional: auto, xdp-native, xdp-generic, tc, userspace
    steer_cpus = "0-3"                      # optional: XDP CPU steering
    workers = 2                             # optional: userspace mode workers
    fanout = "hash"                         # optional: userspace mode: hash, cpu, lb
    control_socket = "/run/mcr-xdp/mcr-xdp.sock"   # optional
    interval = 5                            # optional: seconds between counter lines
    loss_tracer = true                      # optional: false stops counting losses after redirect

    [inputs.eth0]
    rules = [
        "239.1.1.1:5001=eth1/239.2.2.2:5002",
        "10.0.0.5@232.1.1.1:5001=eth1,eth2",
    ]
    join = "rule"                           # optional: "rule" joins each rule's group; "none" joins none

Errors name the file, the line and the key.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from .errors import McrError, UsageError
from .maps import parse_cpu_list
from .modes import Mode, XdpMode
from .rules import Rule, parse_rules

TOP_KEYS = {"xdp_mode", "mode", "steer_cpus", "workers", "fanout", "control_socket", "interval", "loss_tracer",
            "inputs"}
INPUT_KEYS = {"rules", "join"}
JOIN_VALUES = ("rule", "none")


class ConfigError(UsageError):
    pass


@dataclasses.dataclass
class FileConfig:
    path: str
    interfaces: list[str]
    rules: list[Rule]
    xdp_mode: XdpMode | None = None
    mode: Mode | None = None
    steer_cpus: tuple[int, ...] = ()
    workers: int | None = None
    fanout: str | None = None
    control_socket: str | None = None
    interval: float | None = None
    loss_tracer: bool | None = None
    no_join: frozenset[str] = frozenset()  # inputs with join = "none"


def _line_of(lines: list[str], pattern: str, start: int = 1) -> int:
    """The first line (1-based), from line `start` on, that matches; 0 if none."""
    rx = re.compile(pattern)
    return next((i + 1 for i, line in enumerate(lines) if i + 1 >= start and rx.search(line)), 0)


def _key(name: str) -> str:
    """A key as `name = ...`, a table `[name...]` or a dotted `name.x = ...`."""
    return rf"^\s*(\[\[?\s*)?{re.escape(name)}\s*[=.\]]"


def load(path: str | Path) -> FileConfig:
    path = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")  # TOML is UTF-8, whatever the locale
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x}): TOML files are UTF-8") from None
    lines = text.splitlines()

    def fail(line: int, key: str, msg: str):
        where = f"{path}:{line}" if line else path
        raise ConfigError(f"{where}: {key}: {msg}")

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        line = m[1] if m else len(lines) or 1  # "at end of document"
        raise ConfigError(f"{path}:{line}: {exc}") from None

    for key in data:
        if key not in TOP_KEYS:
            fail(_line_of(lines, _key(key)), key, f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    cfg = FileConfig(path=path, interfaces=[], rules=[])
    if "xdp_mode" in data:
        try:
            cfg.xdp_mode = XdpMode(data["xdp_mode"])
        except ValueError:
            fail(_line_of(lines, r"^\s*xdp_mode\s*="), "xdp_mode",
                 f"{data['xdp_mode']!r} is not one of auto, native, generic")
    if "mode" in data:
        try:
            cfg.mode = Mode(data["mode"])
        except ValueError:
            fail(_line_of(lines, _key("mode")), "mode",
                 f"{data['mode']!r} is not one of {', '.join(m.value for m in Mode)}")
    if "steer_cpus" in data:
        try:
            value = data["steer_cpus"]
            cfg.steer_cpus = parse_cpu_list(",".join(map(str, value)) if isinstance(value, list) else str(value))
        except ValueError as exc:
            fail(_line_of(lines, _key("steer_cpus")), "steer_cpus", str(exc))
    if "workers" in data:
        if not isinstance(data["workers"], int) or isinstance(data["workers"], bool) or data["workers"] < 1:
            fail(_line_of(lines, _key("workers")), "workers", "must be a whole number of at least 1")
        cfg.workers = data["workers"]
    if "fanout" in data:
        from .fallback import FANOUT_MODES

        if data["fanout"] not in FANOUT_MODES:
            fail(_line_of(lines, _key("fanout")), "fanout",
                 f"{data['fanout']!r} is not one of {', '.join(FANOUT_MODES)}")
        cfg.fanout = data["fanout"]
    if "control_socket" in data:
        if not isinstance(data["control_socket"], str) or not data["control_socket"].startswith("/"):
            fail(_line_of(lines, r"^\s*control_socket\s*="), "control_socket", "must be an absolute path")
        cfg.control_socket = data["control_socket"]
    if "interval" in data:
        if not isinstance(data["interval"], (int, float)) or data["interval"] <= 0:
            fail(_line_of(lines, r"^\s*interval\s*="), "interval", "must be a positive number of seconds")
        cfg.interval = float(data["interval"])
    if "loss_tracer" in data:
        if not isinstance(data["loss_tracer"], bool):
            fail(_line_of(lines, _key("loss_tracer")), "loss_tracer", "must be true or false")
        cfg.loss_tracer = data["loss_tracer"]
    inputs = data.get("inputs", {})
    if not isinstance(inputs, dict) or not inputs:
        fail(_line_of(lines, _key("inputs")), "inputs", "needs at least one [inputs.IFACE] table with rules")
    for iface, table in inputs.items():
        key = f"inputs.{iface}"
        # [inputs.IFACE], else the line of inputs = { IFACE = {...} }
        header = _line_of(lines, rf"^\s*\[\s*inputs\.{re.escape(iface)}\s*\]") or _line_of(lines, _key("inputs"))
        if not isinstance(table, dict):
            fail(header, key, "must be a table: [inputs.IFACE] with rules = [...]")
        for k in table:
            if k not in INPUT_KEYS:
                fail(_line_of(lines, _key(k), header) or header, f"{key}.{k}",
                     f"unknown key (known: {', '.join(sorted(INPUT_KEYS))})")
        join = table.get("join", "rule")
        if join not in JOIN_VALUES:
            fail(_line_of(lines, _key("join"), header) or header, f"{key}.join",
                 f"{join!r} is not one of {', '.join(map(repr, JOIN_VALUES))}")
        if join == "none":
            cfg.no_join |= {iface}
        rules = table.get("rules", [])
        if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
            fail(_line_of(lines, _key("rules"), header) or header, f"{key}.rules", "must be a list of rule strings")
        cfg.interfaces.append(iface)
        for i, text_rule in enumerate(rules):
            try:
                cfg.rules.extend(parse_rules(text_rule, iface))
            except McrError as exc:
                quoted = rf"""(["']){re.escape(text_rule)}\1"""  # in this table, either TOML quote
                fail(_line_of(lines, quoted, header) or header, f"{key}.rules[{i}]", str(exc))
    return cfg
