"""Load the datapath, attach it to interfaces, detach it.

The datapath is the object built ahead of time from the C in bpf/
(mcr_xdp/objfile.py), loaded through libbpf, or without one the same C
compiled by bcc at start. XDP attach, detach and query go through libbpf
so errors come back as errnos; the TC program is attached as a clsact
ingress filter through netlink (pyroute2).
"""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path

from . import abi, libbpf, objfile
from .errors import AttachError, BusyError
from .features import require_toolchain
from .maps import Maps, possible_cpus
from .modes import Mode
from .objfile import bpf_dir, datapath_text

MAP_NAMES = (
    abi.MAP_RULES,
    abi.MAP_FAST_INDEX,
    abi.MAP_FAST_RULES,
    abi.MAP_RANGES,
    abi.MAP_TX_PORTS,
    abi.MAP_TX_DIRECT,
    abi.MAP_VERDICTS,
    abi.MAP_RULE_STATS,
    abi.MAP_OUTPUT_STATS,
    abi.MAP_FANOUT,
    abi.MAP_CONFIG,
    abi.MAP_EGRESS_RR,
    abi.MAP_STEER,
    abi.MAP_CPUMAP,
    abi.MAP_HEALTH,
    abi.MAP_POLICE,
    abi.MAP_OWN_MACS,
    abi.MAP_MAC_FILTER,
    abi.MAP_MERGE,
)

# The counter maps a relay started again takes over from the killed one
# (bpf/maps.h MCR_COUNTERS), the stream health state, the policers and the
# merged streams' windows.
ADOPTED_MAPS = (abi.MAP_VERDICTS, abi.MAP_RULE_STATS, abi.MAP_OUTPUT_STATS, abi.MAP_HEALTH, abi.MAP_POLICE,
                abi.MAP_MERGE)

# How the kernel says an XDP program is attached; the relay's own modes
# are two of them (offload and several at once are someone else's).
_ATTACHED_KIND = {
    libbpf.XDP_ATTACHED_DRV: "native",
    libbpf.XDP_ATTACHED_SKB: "generic",
    libbpf.XDP_ATTACHED_HW: "offload",
    libbpf.XDP_ATTACHED_MULTI: "multi",
}
_KIND_MODE = {"native": Mode.XDP_NATIVE, "generic": Mode.XDP_GENERIC}
_MODE_FLAGS = {Mode.XDP_NATIVE: libbpf.XDP_FLAGS_DRV_MODE, Mode.XDP_GENERIC: libbpf.XDP_FLAGS_SKB_MODE}


class Datapath:
    """One loaded copy of the datapath (DATAPATH_SOURCES): its programs and
    maps. The XDP ingress and egress programs load at once; the cpumap and
    TC programs when first asked for.

    It is the object built ahead of time (objfile: clang + libbpf, built
    now if clang is there and the sources changed), or, without one, the
    sources compiled by bcc (~3 s more). cflags (tests' variants) and
    MCR_XDP_DATAPATH=bcc ask for bcc."""

    def __init__(self, cflags: tuple[str, ...] = (), adopt: Path | None = None, image: bytes | None = None,
                 preload: tuple[str, ...] = ()):
        """adopt: a killed relay's pin directory (same ABI version) whose
        counter maps (ADOPTED_MAPS) this datapath uses instead of new ones;
        image: an object to load instead of this checkout's (`python -m
        bench ab` loads another revision's); preload: programs otherwise
        loaded on first use (PROG_TC, PROG_RELAY_GENERIC) that the caller
        will use, verified beside the ingress and egress programs (a TC
        datapath is ready ~0.5 s sooner on two CPUs: docs/architecture.md).
        bcc loads them on first use."""
        self._tc_fds: dict[str, int] = {}  # clsact programs loaded so far, by name
        self._cpu_fd: int | None = None
        self._generic_fd: int | None = None
        self.steer_cpus: tuple[int, ...] = ()
        self._bpf = None  # bcc's object
        self._objects: list = []  # libbpf's: the first has the maps, later ones a program each
        if image is None and not cflags and os.environ.get("MCR_XDP_DATAPATH") != "bcc":
            image = objfile.image("datapath")
        if image is not None:
            self._load_object(image, adopt, preload)
        else:
            self._compile(cflags, adopt)
        self.compiler = "bcc" if self._bpf is not None else "object"
        self.prog_id = libbpf.prog_id(self.prog_fd)
        self.maps.set_config(ssm_rules=0)

    def _load_object(self, image: bytes, adopt: Path | None, preload: tuple[str, ...] = ()) -> None:
        from concurrent.futures import ThreadPoolExecutor

        reuse = {}
        try:
            for name in ADOPTED_MAPS if adopt is not None else ():
                reuse[name] = _check_fd(libbpf.lib().bpf_obj_get(str(adopt / name).encode()), f"{adopt / name}")
            # The maps first, then the programs on them, each its own load:
            # the verifier checks a privileged loader's programs in
            # parallel (1.0 s of verifying in ~0.5 s on two CPUs).
            first = objfile.Object(image, set(), max_entries={abi.MAP_CPUMAP: possible_cpus()}, reuse=reuse)
        finally:
            for fd in reuse.values():
                os.close(fd)  # the object holds its own
        self._image = image
        self._objects.append(first)
        self.maps = Maps({name: first.map_fd(name) for name in MAP_NAMES})
        # The rest (generic XDP's, TC's) when an input needs them, or now if preloaded.
        names = (abi.PROG_RELAY, abi.PROG_EGRESS, *preload)
        try:
            with ThreadPoolExecutor(len(names), thread_name_prefix="mcr-verify") as pool:
                loads = [pool.submit(self._load_program, name) for name in names]
            fds = [load.result() for load in loads[:2]]
        except BaseException:
            self.close()
            raise
        # Every output (devmap entry) carries the egress program.
        self.prog_fd, self.egress_fd = fds
        for name, load in zip(preload, loads[2:]):
            if load.exception() is not None:
                continue  # loaded again on first use, which says why it can't
            if name == abi.PROG_RELAY_GENERIC:
                self._generic_fd = load.result()
            else:  # PROG_TC, PROG_TC_COMPANION: _tc_program's
                self._tc_fds[name] = load.result()

    def _load_program(self, name: str) -> int:
        """One program of the object, on the maps of the first load."""
        first = self._objects[0]
        obj = objfile.Object(self._image, {name}, reuse={m: first.map_fd(m) for m in first.map_names()})
        self._objects.append(obj)
        return obj.prog_fd(name)

    def _compile(self, cflags: tuple[str, ...], adopt: Path | None) -> None:
        require_toolchain()
        from bcc import BPF, BPFAttachType

        directory = bpf_dir()
        if adopt is not None:
            cflags = (*cflags, f'-DMCR_ADOPT_DIR="{adopt}"')
        try:
            # A cpumap may not have more entries than the kernel has CPUs.
            self._bpf = BPF(text=datapath_text(directory).encode(),
                            cflags=[f"-I{directory}", f"-DMCR_NR_CPUS={possible_cpus()}", *cflags])
            self.prog_fd = self._bpf.load_func(abi.PROG_RELAY.encode(), BPF.XDP).fd
            self.egress_fd = self._bpf.load_func(abi.PROG_EGRESS.encode(), BPF.XDP,
                                                 attach_type=BPFAttachType.XDP_DEVMAP).fd
        except Exception as exc:  # bcc raises bare Exception for compile and load errors
            raise AttachError(f"could not compile or load the XDP program: {exc}") from None
        self.maps = Maps({name: self._bpf[name.encode()].map_fd for name in MAP_NAMES})

    @property
    def generic_fd(self) -> int:
        """Generic XDP's ingress program, loaded on first use: the egress
        program sees no metadata on the skb path (struct mcr_meta)."""
        if self._generic_fd is None:
            if self._bpf is None:
                self._generic_fd = self._load_program(abi.PROG_RELAY_GENERIC)
            else:
                from bcc import BPF

                try:
                    self._generic_fd = self._bpf.load_func(abi.PROG_RELAY_GENERIC.encode(), BPF.XDP).fd
                except Exception as exc:  # bcc: bare Exception when the verifier refuses
                    raise AttachError(f"could not load the generic XDP program: {_first_line(exc)}") from None
        return self._generic_fd

    @property
    def generic_prog_id(self) -> int:
        return libbpf.prog_id(self.generic_fd)

    def xdp_fd(self, mode: Mode) -> int:
        """The ingress program for an XDP mode."""
        return self.generic_fd if mode == Mode.XDP_GENERIC else self.prog_fd

    def load_func(self, name: str) -> int:
        """The fd of another XDP program of the same object (tests: the
        egress twins compiled with -DMCR_TEST_TWINS, by bcc)."""
        from bcc import BPF

        return self._bpf.load_func(name.encode(), BPF.XDP).fd

    def _tc_program(self, name: str, what: str) -> int:
        """A clsact program of the object, loaded on first use."""
        if name not in self._tc_fds:
            if self._bpf is None:
                try:
                    self._tc_fds[name] = self._load_program(name)
                except AttachError as exc:  # the verifier's last lines included
                    raise AttachError(f"could not load the {what}: {exc}") from None
                return self._tc_fds[name]
            from bcc import BPF

            try:
                self._tc_fds[name] = self._bpf.load_func(name.encode(), BPF.SCHED_CLS).fd
            except Exception as exc:  # bcc: bare Exception when the verifier refuses
                raise AttachError(f"could not load the {what}: {_first_line(exc)}") from None
        return self._tc_fds[name]

    @property
    def tc_fd(self) -> int:
        """The clsact ingress program (tc_relay.c), loaded on first use."""
        return self._tc_program(abi.PROG_TC, "TC program")

    @property
    def tc_companion_fd(self) -> int:
        """The TC program beside native XDP (MCR_RULE_VIA_TC rules)."""
        return self._tc_program(abi.PROG_TC_COMPANION, "TC companion program")

    @property
    def cpu_fd(self) -> int:
        """The cpumap program (steering), loaded on first use."""
        if self._cpu_fd is None and self._bpf is None:
            try:
                self._cpu_fd = self._load_program(abi.PROG_CPU)
            except AttachError as exc:  # the verifier's last lines included
                raise AttachError(f"could not load the cpumap program: {exc}") from None
        if self._cpu_fd is None:
            from bcc import BPF, BPFAttachType

            try:
                self._cpu_fd = self._bpf.load_func(abi.PROG_CPU.encode(), BPF.XDP,
                                                   attach_type=BPFAttachType.XDP_CPUMAP).fd
            except Exception as exc:  # bcc: bare Exception when the verifier refuses
                raise AttachError(f"could not load the cpumap program: {_first_line(exc)}") from None
        return self._cpu_fd

    def set_steering(self, cpus: list[int] | tuple[int, ...]) -> None:
        """Hash flows over these CPUs (empty: forward on the receiving CPU).
        Entries go in before the count that makes them reachable."""
        cpus = tuple(cpus)
        if cpus:
            self.maps.set_steering(cpus, self.cpu_fd)
        self.steer_cpus = cpus
        self.maps.set_steer_count(len(cpus))

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
        for obj in reversed(self._objects):
            obj.close()
        self._objects.clear()


def _check_fd(fd: int, what: str) -> int:
    if fd < 0:
        raise AttachError(f"cannot open the pinned map {what}: {os.strerror(-fd)}")
    return fd


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclasses.dataclass(frozen=True)
class Attached:
    """What an interface carries now."""

    prog_id: int
    kind: str  # as the kernel attached it: native, generic, offload, multi
    name: str

    @property
    def mode(self) -> Mode | None:
        """The relay mode this attachment is (None: not one of the relay's)."""
        return _KIND_MODE.get(self.kind)


def attached(ifindex: int) -> Attached | None:
    q = libbpf.xdp_query(ifindex)
    if not q.prog_id and not (q.drv_prog_id or q.skb_prog_id or q.hw_prog_id):
        return None
    prog_id = q.prog_id or q.drv_prog_id or q.skb_prog_id or q.hw_prog_id
    return Attached(prog_id, _ATTACHED_KIND.get(q.attach_mode, "unknown"), libbpf.prog_name(prog_id))


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


# -- TC (clsact ingress) ----------------------------------------------------

# The relay's filter on an interface's clsact ingress hook: this priority,
# this name. `tc filter show dev IFACE ingress` shows it as "mcr_tc_relay".
TC_PRIORITY = 0x4D43
TC_HANDLE = ":1"
TC_INGRESS = 0xFFFFFFF2  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
TC_EGRESS = 0xFFFFFFF3


@dataclasses.dataclass(frozen=True)
class TcFilter:
    """A relay TC filter found on an interface."""

    priority: int
    name: str
    qdisc_created: bool = False  # by this relay (removed with the filter if then empty)

    @property
    def mode(self) -> Mode:
        return Mode.TC


def _tc_filters(ipr, ifindex: int, parent: int) -> list:
    return [m for m in ipr.get_filters(index=ifindex, parent=parent) if m.get_attr("TCA_KIND")]


def tc_attached(ifindex: int, prog: str = abi.PROG_TC) -> TcFilter | None:
    """The relay's TC filter on ifindex, if any (a relay's, or one a killed
    relay left); prog: the TC program (PROG_TC_COMPANION: the one beside
    native XDP)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            filters = _tc_filters(ipr, ifindex, TC_INGRESS)
        except NetlinkError:
            return None  # no clsact qdisc
    for msg in filters:
        opts = msg.get_attr("TCA_OPTIONS")
        name = opts.get_attr("TCA_BPF_NAME") if opts is not None else None
        if msg.get_attr("TCA_KIND") == "bpf" and name and name.startswith(prog):
            return TcFilter(msg["info"] >> 16, name)
    return None


def tc_attach(ifindex: int, ifname: str, prog_fd: int, replace: TcFilter | None = None,
              prog: str = abi.PROG_TC) -> bool:
    """Attach the TC program to ifindex's clsact ingress hook, creating the
    clsact qdisc if the interface has none. Returns whether the qdisc was
    created (then tc_detach removes it too). With replace (the filter a
    killed relay left), the program under that filter is swapped in one
    step: the kernel's cls_bpf replaces it in place (same priority, same
    handle), no frame meets neither program."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    if replace is not None:
        with IPRoute() as ipr:
            try:
                ipr.tc("replace-filter", "bpf", ifindex, TC_HANDLE, fd=prog_fd, name=prog, parent=TC_INGRESS,
                       classid=1, direct_action=True, prio=replace.priority)
            except NetlinkError as exc:
                raise AttachError(f"cannot replace the TC filter on {ifname}: {os.strerror(exc.code)}") from None
        return False
    if tc_attached(ifindex, prog) is not None:
        raise BusyError(f"{ifname} already has the relay's TC filter; a relay may be running there: "
                        f"stop it or run `mcr-xdp detach {ifname}`")
    with IPRoute() as ipr:
        created = False
        try:
            ipr.tc("add", "clsact", ifindex)
            created = True
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise AttachError(f"cannot add a clsact qdisc to {ifname}: {os.strerror(exc.code)}") from None
        try:
            ipr.tc("add-filter", "bpf", ifindex, TC_HANDLE, fd=prog_fd, name=prog, parent=TC_INGRESS,
                   classid=1, direct_action=True, prio=TC_PRIORITY)
        except NetlinkError as exc:
            if created:
                _del_clsact(ipr, ifindex)
            raise AttachError(f"cannot attach the TC program to {ifname}: {os.strerror(exc.code)}") from None
    return created


def _del_clsact(ipr, ifindex: int) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ipr.tc("del", "clsact", ifindex)
    except NetlinkError:
        pass


def tc_detach(ifindex: int, ifname: str, remove_qdisc: bool | None = None, prog: str = abi.PROG_TC) -> TcFilter | None:
    """Remove the relay's TC filter from ifindex; then the clsact qdisc too
    if nothing else uses it (remove_qdisc None), or as told. Returns what
    was removed."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    found = tc_attached(ifindex, prog)
    if found is None:
        return None
    with IPRoute() as ipr:
        try:
            ipr.tc("del-filter", "bpf", ifindex, 0, parent=TC_INGRESS, prio=found.priority)
        except NetlinkError as exc:
            if exc.code != errno.ENOENT:
                raise AttachError(f"cannot remove the TC filter from {ifname}: {os.strerror(exc.code)}") from None
        if remove_qdisc is None:
            try:
                remove_qdisc = not (_tc_filters(ipr, ifindex, TC_INGRESS) or _tc_filters(ipr, ifindex, TC_EGRESS))
            except NetlinkError:
                remove_qdisc = False
        if remove_qdisc:
            _del_clsact(ipr, ifindex)
    return dataclasses.replace(found, qdisc_created=bool(remove_qdisc))


def xdp_attach(ifindex: int, ifname: str, prog_fd: int, mode: Mode, replace: Attached | None = None) -> None:
    """Attach prog_fd in one XDP mode, nothing else; with replace (what the
    interface carries, in the same mode), swap it for prog_fd in one step."""
    try:
        if replace is not None:
            libbpf.xdp_replace(ifindex, prog_fd, replace.prog_id, _MODE_FLAGS[mode])
            return
        libbpf.xdp_attach(ifindex, prog_fd, libbpf.XDP_FLAGS_UPDATE_IF_NOEXIST | _MODE_FLAGS[mode])
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.EEXIST):
            raise BusyError(f"{ifname} already has an XDP program") from None
        raise AttachError(f"{ifname} refused {mode.value.removeprefix('xdp-')} XDP: {exc.strerror}") from None
