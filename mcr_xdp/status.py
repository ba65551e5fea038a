"""The relay's status document: what `mcr-xdp status` shows, `stats --json`
carries under "status", and metrics label. Built here only, from a live
relay (Relay.status) or from the pinned state of a killed one
(pins.read_stats), so both read the same."""

from __future__ import annotations

import dataclasses

from . import abi
from .modes import Mode


@dataclasses.dataclass(frozen=True)
class InputStatus:
    name: str
    ifindex: int
    mode: Mode
    prog_id: int
    rules: int = 0
    joins: int = 0
    notice: str = ""
    tried: tuple[tuple[Mode, str], ...] = ()  # (mode, why it was not used)
    attached: bool = True  # False: a killed relay's input whose program is gone


def document(uptime: float, inputs: list[InputStatus], rules: dict, notices: list[str] = (),
             modes_tried: tuple[Mode, ...] = (), parts: list[dict] = (), links: dict[str, str] | None = None) -> dict:
    """rules: id -> rules.Rule; parts: the backends' status (Backend.status),
    whose notices add up and whose other keys fill in the defaults; links:
    every interface of the relay -> "up", "down" or "gone", as last seen."""
    doc = {
        "abi_version": abi.ABI_VERSION,
        "uptime": round(uptime, 1),
        "interfaces": [
            {
                "name": i.name,
                "ifindex": i.ifindex,
                "mode": i.mode.value,
                "attached": i.attached,
                "prog_id": i.prog_id,
                "notice": i.notice,
                "not_used": [{"mode": m.value, "reason": why} for m, why in i.tried],
                "rules": i.rules,
                "joins": i.joins,
            }
            for i in inputs
        ],
        "rules": [{"id": i, "rule": str(r)} for i, r in sorted(rules.items())],
        "links": dict(links or {}),
        "loss_tracer": False,
        "notices": [],
        "pinned": None,
        "cpus": 0,
        "modes_tried": [m.value for m in modes_tried],
        "steering": None,
        "userspace": None,
        "via_tc": [],  # rules whose outputs native XDP can't all reach: {"rule", "input", "outputs"}
        "next_hops": [],  # unicast receivers: {"rule", "output", "via", "mac" (None: unresolved), "why"}
        "health": [],  # rules with ;health=: {"id", "rule"} and health.Counts' fields
    }
    for part in parts:
        for key, value in part.items():
            if key == "notices":
                doc["notices"].extend(value)
            else:
                doc[key] = value
    doc["notices"].extend(n for n in [*notices, *(i.notice for i in inputs)] if n)
    return doc
