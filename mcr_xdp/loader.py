"""Compile the datapath with bcc, attach it to interfaces, detach it.

bcc compiles the C in bpf/ at run time; attach, detach and query go through
libbpf so errors come back as errnos instead of bcc's stderr messages.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
from pathlib import Path

from . import abi, libbpf
from .errors import AttachError, BusyError, SetupError
from .features import require_toolchain
from .maps import Maps

MAP_NAMES = (
    abi.MAP_RULES,
    abi.MAP_TX_PORTS,
    abi.MAP_VERDICTS,
    abi.MAP_RULE_STATS,
    abi.MAP_OUTPUT_STATS,
    abi.MAP_FANOUT,
    abi.MAP_CONFIG,
    abi.MAP_EGRESS_RR,
)


class XdpMode(str, enum.Enum):
    AUTO = "auto"
    NATIVE = "native"
    GENERIC = "generic"


_ATTACHED_MODE = {
    libbpf.XDP_ATTACHED_DRV: "native",
    libbpf.XDP_ATTACHED_SKB: "generic",
    libbpf.XDP_ATTACHED_HW: "offload",
    libbpf.XDP_ATTACHED_MULTI: "multi",
}
_MODE_FLAGS = {"native": libbpf.XDP_FLAGS_DRV_MODE, "generic": libbpf.XDP_FLAGS_SKB_MODE}


def bpf_dir() -> Path:
    """Where the datapath sources are: mcr_xdp/bpf/ in an installed wheel
    (package data), bpf/ beside the package in a source checkout (editable
    installs map only top-level packages)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "bpf", here.parent / "bpf"):
        if (candidate / "relay.c").is_file():
            return candidate
    raise SetupError(f"the datapath sources (bpf/relay.c) are not installed beside {here}: reinstall mcr-xdp")


class Datapath:
    """One compiled and loaded copy of bpf/relay.c: its program and maps."""

    def __init__(self, cflags: tuple[str, ...] = ()):
        require_toolchain()
        from bcc import BPF, BPFAttachType

        src = bpf_dir() / "relay.c"
        try:
            self._bpf = BPF(src_file=str(src).encode(), cflags=[f"-I{src.parent}", *cflags])
            self.prog_fd = self._bpf.load_func(abi.PROG_RELAY.encode(), BPF.XDP).fd
            # Every output of a fan-out rule carries the egress program.
            self.egress_fd = self._bpf.load_func(abi.PROG_EGRESS.encode(), BPF.XDP,
                                                 attach_type=BPFAttachType.XDP_DEVMAP).fd
        except Exception as exc:  # bcc raises bare Exception for compile and load errors
            raise AttachError(f"could not compile or load the XDP program: {exc}") from None
        self.prog_id = libbpf.prog_id(self.prog_fd)
        self.maps = Maps({name: self._bpf[name.encode()].map_fd for name in MAP_NAMES})
        self.maps.set_config(ssm_rules=0)

    def load_func(self, name: str) -> int:
        """The fd of another XDP program of the same object (tests: the
        egress twins compiled with -DMCR_TEST_TWINS)."""
        from bcc import BPF

        return self._bpf.load_func(name.encode(), BPF.XDP).fd

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None


@dataclasses.dataclass(frozen=True)
class Attachment:
    ifindex: int
    ifname: str
    mode: str  # "native" or "generic"
    prog_id: int
    notice: str = ""  # why the mode differs from the one asked for


@dataclasses.dataclass(frozen=True)
class Attached:
    """What an interface carries now."""

    prog_id: int
    mode: str
    name: str


def attached(ifindex: int) -> Attached | None:
    q = libbpf.xdp_query(ifindex)
    if not q.prog_id and not (q.drv_prog_id or q.skb_prog_id or q.hw_prog_id):
        return None
    prog_id = q.prog_id or q.drv_prog_id or q.skb_prog_id or q.hw_prog_id
    return Attached(prog_id, _ATTACHED_MODE.get(q.attach_mode, "unknown"), libbpf.prog_name(prog_id))


def attach(ifindex: int, ifname: str, prog_fd: int, mode: XdpMode) -> Attachment:
    """Attach prog_fd to an interface that has no XDP program yet."""
    current = attached(ifindex)
    if current is not None:
        raise BusyError(
            f"{ifname} already has an XDP program (id {current.prog_id}, {current.name or 'unnamed'}, "
            f"{current.mode}); a relay may be running there: stop it or run `mcr-xdp detach {ifname}`"
        )
    prog_id = libbpf.prog_id(prog_fd)
    tries = ["native", "generic"] if mode == XdpMode.AUTO else [mode.value]
    notice = ""
    for i, name in enumerate(tries):
        try:
            libbpf.xdp_attach(ifindex, prog_fd, libbpf.XDP_FLAGS_UPDATE_IF_NOEXIST | _MODE_FLAGS[name])
        except OSError as exc:
            if exc.errno == errno.EBUSY or exc.errno == errno.EEXIST:
                raise BusyError(f"{ifname} already has an XDP program") from None
            if i + 1 < len(tries):
                notice = f"native XDP is not available on {ifname} ({exc.strerror}): using generic XDP, which is slower"
                continue
            raise AttachError(f"cannot attach {name} XDP to {ifname}: {exc.strerror}") from None
        return Attachment(ifindex, ifname, name, prog_id, notice)
    raise AssertionError("unreachable")


def detach(ifindex: int, ifname: str, only_prog_id: int | None = None) -> Attached | None:
    """Remove the XDP program of an interface; with only_prog_id, only if it
    is that program. Returns what was removed."""
    current = attached(ifindex)
    if current is None or (only_prog_id is not None and current.prog_id != only_prog_id):
        return None
    flags = _MODE_FLAGS.get(current.mode, 0)
    try:
        libbpf.xdp_detach(ifindex, flags)
    except OSError as exc:
        raise AttachError(f"cannot detach XDP from {ifname}: {exc.strerror}") from None
    return current
