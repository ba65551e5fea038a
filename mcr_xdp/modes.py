"""How an input relays: the one Mode type every module uses, and the
ladder of modes `--mode auto` tries, fastest first.

A mode's value is its one spelling everywhere: `--mode`, the config file,
status, the pinned state of a killed relay. `--xdp-mode` (XdpMode) is an
older option spelling, turned into modes by ladder() and nowhere else.
"""

from __future__ import annotations

import enum
import os

from .errors import UsageError


class Mode(str, enum.Enum):
    """How an input interface relays."""

    AUTO = "auto"  # the ladder, as an option value only: no input runs in it
    XDP_NATIVE = "xdp-native"
    XDP_GENERIC = "xdp-generic"
    TC = "tc"
    USERSPACE = "userspace"

    @property
    def is_xdp(self) -> bool:
        return self in (Mode.XDP_NATIVE, Mode.XDP_GENERIC)

    @property
    def is_bpf(self) -> bool:
        return self in BPF_MODES


class XdpMode(str, enum.Enum):
    """--xdp-mode, the older spelling of the XDP choices of --mode."""

    AUTO = "auto"
    NATIVE = "native"
    GENERIC = "generic"


LADDER = (Mode.XDP_NATIVE, Mode.XDP_GENERIC, Mode.TC, Mode.USERSPACE)
BPF_MODES = (Mode.XDP_NATIVE, Mode.XDP_GENERIC, Mode.TC)

# For tests: modes named here (comma-separated) fail to load as if the
# kernel refused them, so the ladder's fall-through can be exercised.
FAIL_MODES_ENV = "MCR_XDP_FAIL_MODES"


def failing_modes() -> set[str]:
    return {m.strip() for m in os.environ.get(FAIL_MODES_ENV, "").split(",") if m.strip()}


def ladder(mode: Mode | None, xdp_mode: XdpMode | None = None) -> tuple[Mode, ...]:
    """The modes to try, in order. --mode wins; --xdp-mode native|generic is
    an alias for xdp-native|xdp-generic; auto (either) is the whole ladder."""
    if mode is not None and xdp_mode not in (None, XdpMode.AUTO):
        alias = Mode(f"xdp-{xdp_mode.value}")
        if mode not in (Mode.AUTO, alias):
            raise UsageError(f"--mode {mode.value} and --xdp-mode {xdp_mode.value} disagree: give one of them")
        return (alias,)
    if mode is None or mode == Mode.AUTO:
        if xdp_mode in (None, XdpMode.AUTO):
            return LADDER
        return (Mode(f"xdp-{xdp_mode.value}"),)
    return (mode,)
