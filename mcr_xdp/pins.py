"""Pinned maps: a running relay's counters stay readable without it.

The relay pins its datapath maps under /sys/fs/bpf/mcr-xdp/INSTANCE/ and
writes /run/mcr-xdp/INSTANCE.state.json naming its rules, inputs and
programs (bpffs holds only BPF objects), and removes both when it stops.
A relay killed with SIGKILL leaves its program attached and forwarding with
the rules it had; `mcr-xdp stats` then reads these pins (refused when
another datapath ABI version wrote them), and `mcr-xdp detach` removes the
program and the pins.

Inside `ip netns exec` /sys is a fresh mount without bpffs (the command
runs in a mount namespace of its own). The pins go to the bpffs of the
mount namespace the command came from instead, reached through
/proc/PID/root of a process there (PID 1, else the nearest ancestor in
another mount namespace), held by an open directory fd: a later command,
in the network namespace or not, finds them there. Only when no such
bpffs is reachable does the relay mount one of its own, and its pins go
with it (a status notice says so).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

from . import abi, libbpf
from .errors import McrError
from .maps import Maps
from .modes import Mode

BPFFS = Path("/sys/fs/bpf")
STATE_DIR = Path("/run/mcr-xdp")
BPFFS_MAGIC = 0xCAFE4A11
STATE_VERSION = 3  # the state file's own layout (3: rules with their indexes, next_id); the maps' is abi.ABI_VERSION


class AbiMismatch(McrError):
    """Pins written by a datapath of another ABI version: their maps' layout
    is not the one this mcr-xdp reads."""


def is_bpffs(path: Path) -> bool:
    try:
        out = subprocess.run(["stat", "-f", "-c", "%t", str(path)], capture_output=True, text=True)
    except OSError:
        return False
    return out.returncode == 0 and int(out.stdout.strip() or "0", 16) == BPFFS_MAGIC


@dataclasses.dataclass(frozen=True)
class Bpffs:
    """The bpffs the pins go to: path (/sys/fs/bpf, or /proc/self/fd/N for
    another mount namespace's), and what it is, in words."""

    path: Path
    where: str
    private: bool = False  # mounted by this process in its own mount namespace: gone with it


_bpffs: Bpffs | None = None


def bpffs(mount: bool = False) -> Bpffs | None:
    """The bpffs shared with later commands (see the module text), found
    once per process. With mount, a bpffs is mounted at /sys/fs/bpf when
    none is found (private if this mount namespace is), else None."""
    global _bpffs
    if _bpffs is None:
        _bpffs = _find_bpffs()
    if _bpffs is None and mount:
        proc = subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise McrError(f"bpffs is not mounted at {BPFFS} and mounting it failed: {proc.stderr.strip()}")
        private = bool(_hosts())
        _bpffs = Bpffs(BPFFS, f"{BPFFS} (mounted here{', private to this mount namespace' if private else ''})",
                       private)
    return _bpffs


def _find_bpffs() -> Bpffs | None:
    if is_bpffs(BPFFS):
        return Bpffs(BPFFS, str(BPFFS))
    for pid in _hosts():
        candidate = Path(f"/proc/{pid}/root") / BPFFS.relative_to("/")
        if not is_bpffs(candidate):
            continue
        try:
            fd = os.open(candidate, os.O_PATH | os.O_DIRECTORY)  # held: the process may end, the mount stays
        except OSError:
            continue
        return Bpffs(Path(f"/proc/self/fd/{fd}"), f"{BPFFS} of the mount namespace of pid {pid}")
    return None


def _hosts() -> list[int]:
    """Processes whose mount namespace is not this one's and readable: PID 1,
    then this process's ancestors, nearest first (`ip netns exec` runs its
    command in a mount namespace of its own, whose parent is in the one it
    came from). [] when this process is in PID 1's mount namespace."""
    def mount_ns(pid) -> int | None:
        try:
            return os.stat(f"/proc/{pid}/ns/mnt").st_ino
        except OSError:
            return None

    mine = mount_ns("self")
    found, pid = [], os.getppid()
    if mount_ns(1) not in (None, mine):
        found.append(1)
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        if mount_ns(pid) not in (None, mine):
            found.append(pid)
            break
        pid = _parent(pid)
    return found


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def pin_root() -> Path | None:
    """bpffs/mcr-xdp, or None without a bpffs."""
    found = bpffs()
    return None if found is None else found.path / "mcr-xdp"


def pin_dir(instance: str) -> Path:
    """Where instance's pins are (or would be), as this process reaches
    them: the path never exists without a bpffs."""
    root = pin_root()
    return (root if root is not None else BPFFS / "mcr-xdp") / instance


def shown(instance: str) -> str:
    """instance's pin directory as an operator finds it (in the mount
    namespace whose bpffs holds it)."""
    return str(BPFFS / "mcr-xdp" / instance)


def pin(instance: str, map_fds: dict[str, int], state: dict) -> str:
    """Pin every map and write the state; replaces a stale pin directory of
    the same instance (its relay is gone: the caller checked its inputs).
    Returns where, as shown()."""
    bpffs(mount=True)
    directory = pin_dir(instance)
    remove(instance)
    directory.mkdir(parents=True, mode=0o700)
    for name, fd in map_fds.items():
        libbpf.obj_pin(fd, str(directory / name))
    write_state(instance, state)
    return shown(instance)


def make_state(pid: int, started: float, inputs: dict, rules: dict, next_id: int, socket: str | None = None) -> dict:
    """The state a relay writes beside its pins. inputs: name -> (ifindex,
    prog_id, Mode); rules: id -> (index, rules.Rule); next_id: the lowest id
    never given out (relay.RuleIds); socket: its control socket."""
    return {
        "version": STATE_VERSION,
        "abi_version": abi.ABI_VERSION,
        "pid": pid,
        "socket": socket,
        "started": started,
        "inputs": {name: {"ifindex": ifindex, "prog_id": prog_id, "mode": mode.value}
                   for name, (ifindex, prog_id, mode) in inputs.items()},
        "rules": {str(i): {"rule": str(r), "index": index} for i, (index, r) in rules.items()},
        "next_id": next_id,
    }


def state_rules(found: dict) -> dict[int, tuple[int, str]]:
    """A state's rules: id -> (index, rule text). A relay before version 3
    of the state gave each rule its index as id. An entry that can't be
    read, or whose index is out of range or given twice, is left out."""
    entries = found.get("rules")
    rules, seen = {}, set()
    for i, entry in entries.items() if isinstance(entries, dict) else ():
        try:
            rule_id = int(i)
            text, index = (entry, rule_id) if isinstance(entry, str) else (entry["rule"], entry["index"])
        except (KeyError, TypeError, ValueError):
            continue
        if isinstance(text, str) and type(index) is int and rule_id >= 0 and 0 <= index < abi.MAX_RULES \
                and index not in seen:
            seen.add(index)
            rules[rule_id] = (index, text)
    return rules


def next_id(found: dict) -> int:
    """The lowest rule id the relay that wrote found never gave out, as far
    as found tells."""
    written = found.get("next_id")
    return max(max(state_rules(found), default=-1) + 1, written if type(written) is int else 0)


def check_abi(found: dict, where: str) -> None:
    """Refuse pins (or a datapath) of another ABI version: reading their maps
    with this layout would show wrong numbers."""
    version = found.get("abi_version")
    if version != abi.ABI_VERSION:
        raise AbiMismatch(
            f"the pinned maps in {where} are of datapath ABI version {version if version is not None else 'unknown'}"
            f" (an older or newer mcr-xdp); this mcr-xdp reads version {abi.ABI_VERSION}: read them with the "
            "mcr-xdp that pinned them, or `mcr-xdp detach IFACE` to remove that relay's program and pins")


def still_attached(info: dict) -> bool:
    """Whether a killed relay's input (its state entry) still carries the
    relay's program."""
    from . import loader

    try:
        mode = Mode(info.get("mode"))
    except ValueError:
        return False
    if mode.is_xdp:
        current = loader.attached(info["ifindex"])
        return current is not None and current.prog_id == info["prog_id"]
    if mode == Mode.TC:  # the kernel's filter dump through pyroute2 names no program id: the name must do
        return loader.tc_attached(info["ifindex"]) is not None
    return False  # userspace workers end with their relay


def state_path(instance: str) -> Path:
    return STATE_DIR / f"{instance}.state.json"


def write_state(instance: str, state: dict) -> None:
    """Rules and programs as they are now (rewritten on every rule change)."""
    path = state_path(instance)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def remove(instance: str) -> bool:
    directory = pin_dir(instance)
    state_path(instance).unlink(missing_ok=True)
    if not directory.exists():
        return False
    shutil.rmtree(directory, ignore_errors=True)
    try:
        directory.parent.rmdir()  # only if no other instance is left
    except OSError:
        pass
    return True


def read_state(instance: str) -> dict | None:
    try:
        return json.loads(state_path(instance).read_text())
    except (OSError, ValueError):
        return None


class PinnedMaps(Maps):
    """The Maps of a relay that is gone, opened from its pins."""

    def __init__(self, instance: str, names):
        directory = pin_dir(instance)
        fds = {}
        try:
            for name in names:
                fds[name] = libbpf.obj_get(str(directory / name))
        except OSError as exc:
            for fd in fds.values():
                os.close(fd)
            raise McrError(f"cannot open the pinned maps in {directory}: {exc.strerror}") from None
        super().__init__(fds)

    def close(self) -> None:
        for fd in self._fd.values():
            os.close(fd)
        self._fd = {}


def read_stats(instance: str):
    """(Snapshot, status) of a relay that is gone, from its pins; None if
    it left none. AbiMismatch if another version of the datapath wrote them."""
    from . import loader, stats
    from .links import counters
    from .rules import parse_rule
    from .status import InputStatus, document

    found = read_state(instance)
    if found is None or not pin_dir(instance).is_dir():
        return None  # no relay, or one that could not pin (userspace only, no bpffs)
    check_abi(found, shown(instance))
    placed = {i: (index, parse_rule(text)) for i, (index, text) in state_rules(found).items()}
    rules = {i: rule for i, (_, rule) in placed.items()}
    maps = PinnedMaps(instance, loader.MAP_NAMES)
    try:
        maps.output_slots = maps.read_output_slots()
        maps.merge_keys = maps.read_merge_keys()
        names = [*found["inputs"], *(o.iface for r in rules.values() for o in r.outputs)]
        snap = stats.collect([maps], placed, links=counters(names))
    finally:
        maps.close()
    inputs = [InputStatus(name, info["ifindex"], Mode(info["mode"]), info["prog_id"],
                          rules=sum(1 for r in rules.values() if r.iface == name), attached=still_attached(info))
              for name, info in found["inputs"].items()]
    gone = (f"the relay (pid {found['pid']}) is gone: counters from its pinned maps in {shown(instance)}; "
            "its program still forwards with these rules, without group joins; "
            "`mcr-xdp detach IFACE` removes it")
    return snap, document(0, inputs, rules, notices=[gone],
                          parts=[{"cpus": maps.ncpus, "pinned": shown(instance)}])


def instances() -> list[str]:
    """The instances of this network namespace that left a state file (a
    running relay's, or a killed one's)."""
    from .control import in_this_namespace

    try:
        names = [p.name.removesuffix(".state.json") for p in STATE_DIR.glob("*.state.json")]
    except OSError:
        return []
    return sorted(n for n in names if in_this_namespace(n))


def owner(ifindex: int) -> dict | None:
    """The state of a live relay of this namespace with ifindex among its
    inputs, or None."""
    for instance in instances():
        found = read_state(instance)
        if found is not None and alive(found.get("pid")) and \
                any(info.get("ifindex") == ifindex for info in found.get("inputs", {}).values()):
            return found
    return None


def left_behind(instance: str) -> dict | None:
    """The state a killed relay of instance left (its pid is no running
    mcr-xdp), with "instance" added; None if there is none."""
    found = read_state(instance)
    if found is None or not isinstance(found, dict) or alive(found.get("pid")):
        return None
    return {**found, "instance": instance}


def alive(pid) -> bool:
    """pid is a running mcr-xdp (not a process that reused a dead relay's pid)."""
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, TypeError, ValueError):
        return False
    return b"mcr-xdp" in cmdline or b"mcr_xdp" in cmdline


def sweep(keep: str) -> list[str]:
    """Remove what killed relays of this network namespace left and nothing
    uses any more (a state file, pins), but keep's (the caller's own
    instance); returns the instances removed."""
    removed = []
    for instance in instances():
        found = left_behind(instance) if instance != keep else None
        if found is not None and _orphaned(found):
            remove(instance)
            removed.append(instance)
    return removed


def _orphaned(found: dict) -> bool:
    """None of the programs of the relay whose state this is is attached."""
    return not any(still_attached(info) for info in found.get("inputs", {}).values())


def remove_if_orphaned(instance: str) -> bool:
    """Remove the pins of a relay none of whose programs is attached any
    more (after `mcr-xdp detach`). Returns whether they were removed."""
    found = read_state(instance)
    if found is None or not _orphaned(found):
        return False
    return remove(instance)
