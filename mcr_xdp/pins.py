"""Pinned maps: a running relay's counters stay readable without it.

The relay pins its datapath maps under /sys/fs/bpf/mcr-xdp/INSTANCE/ and
writes /run/mcr-xdp/INSTANCE.state.json naming its rules, inputs and
programs (bpffs holds only BPF objects), and removes both when it stops. A relay killed with SIGKILL leaves its XDP program attached and
forwarding with the rules it had; `mcr-xdp stats` then reads these pins,
and `mcr-xdp detach` removes the program and the pins.

Inside `ip netns exec` /sys is a fresh mount without bpffs: the relay
mounts one there, private to that mount namespace, so the pins go with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from . import libbpf
from .errors import McrError
from .maps import Maps

BPFFS = Path("/sys/fs/bpf")
ROOT = BPFFS / "mcr-xdp"
STATE_DIR = Path("/run/mcr-xdp")
BPFFS_MAGIC = 0xCAFE4A11


def is_bpffs(path: Path) -> bool:
    try:
        out = subprocess.run(["stat", "-f", "-c", "%t", str(path)], capture_output=True, text=True)
    except OSError:
        return False
    return out.returncode == 0 and int(out.stdout.strip() or "0", 16) == BPFFS_MAGIC


def ensure_bpffs() -> None:
    if not is_bpffs(BPFFS):
        proc = subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise McrError(f"bpffs is not mounted at {BPFFS} and mounting it failed: {proc.stderr.strip()}")


def pin_dir(instance: str) -> Path:
    return ROOT / instance


def pin(instance: str, map_fds: dict[str, int], state: dict) -> Path:
    """Pin every map and write the state; replaces a stale pin directory of
    the same instance (its relay is gone: the caller checked its inputs)."""
    ensure_bpffs()
    directory = pin_dir(instance)
    remove(instance)
    directory.mkdir(parents=True, mode=0o700)
    for name, fd in map_fds.items():
        libbpf.obj_pin(fd, str(directory / name))
    write_state(instance, state)
    return directory


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
        ROOT.rmdir()  # only if no other instance is left
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
    it left none."""
    from . import loader, stats
    from .links import counters
    from .rules import parse_rule

    state = read_state(instance)
    if state is None:
        return None
    rules = {int(i): parse_rule(text) for i, text in state["rules"].items()}
    maps = PinnedMaps(instance, loader.MAP_NAMES)
    try:
        names = [*state["inputs"], *(o.iface for r in rules.values() for o in r.outputs)]
        snap = stats.collect(maps, rules, links=counters(names))
    finally:
        maps.close()
    interfaces = []
    for name, info in state["inputs"].items():
        current = loader.attached(info["ifindex"])
        still = current is not None and current.prog_id == info["prog_id"]
        interfaces.append({"name": name, "ifindex": info["ifindex"], "prog_id": info["prog_id"],
                           "mode": f"xdp-{info['mode']}" + ("" if still else " (detached)"),
                           "rules": sum(1 for r in rules.values() if r.iface == name), "joins": 0})
    status = {
        "uptime": 0, "interfaces": interfaces, "cpus": maps.ncpus,
        "rules": [{"id": i, "rule": str(r)} for i, r in sorted(rules.items())],
        "notices": [f"the relay (pid {state['pid']}) is gone: counters from its pinned maps in {pin_dir(instance)}; "
                    "its XDP program still forwards with these rules, without group joins; "
                    "`mcr-xdp detach IFACE` removes it"],
        "pinned": str(pin_dir(instance)),
    }
    return snap, status


def remove_if_orphaned(instance: str) -> bool:
    """Remove the pins of a relay none of whose programs is attached any
    more (after `mcr-xdp detach`). Returns whether they were removed."""
    from . import loader

    state = read_state(instance)
    if state is None:
        return False
    for info in state["inputs"].values():
        current = loader.attached(info["ifindex"])
        if current is not None and current.prog_id == info["prog_id"]:
            return False
    return remove(instance)
