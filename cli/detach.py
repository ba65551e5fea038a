"""mcr-xdp detach: remove what a killed relay left on an interface."""

from __future__ import annotations

import typer

from .console import out


def detach(
    interface: str = typer.Argument(..., help="Interface to remove the relay's XDP program from.",
                                    show_default=False),
    force: bool = typer.Option(False, "--force", help=(
        "Also remove an XDP program that is not mcr-xdp's, or one a running relay owns "
        "(that relay stops forwarding there).")),
) -> None:
    """Remove the XDP program or TC filter a killed relay left on INTERFACE.

    A running relay detaches by itself on Ctrl-C or SIGTERM; this is for the
    program a relay that was killed with SIGKILL left behind, and refuses
    while a running relay owns INTERFACE. (Userspace-mode workers end with
    their relay: they leave nothing.)
    """
    from mcr_xdp import abi, control, features, loader, pins
    from mcr_xdp.errors import BusyError, UsageError
    from mcr_xdp.links import lookup

    features.require_root("detach")
    link = lookup([interface])[interface]
    owner = pins.owner(link.ifindex)
    if owner is not None and not force:
        raise BusyError(
            f"{interface} belongs to a running relay (pid {owner['pid']}, control socket "
            f"{owner.get('socket') or 'unknown'}): stop it (Ctrl-C, SIGTERM, systemctl stop), which detaches "
            "cleanly; --force removes its program anyway"
        )
    tc = None
    for prog in (abi.PROG_TC, abi.PROG_TC_COMPANION):  # TC mode, or beside native XDP
        found = loader.tc_attached(link.ifindex, prog)
        if found is not None:
            loader.tc_detach(link.ifindex, interface, prog=prog)
            out.print(f"removed the relay's TC filter ({found.name}) from {interface}", markup=False)
            tc = found
    current = loader.attached(link.ifindex)
    if current is None and tc is None:
        out.print(f"{interface} has no XDP program or relay TC filter; nothing to do", markup=False)
    if current is not None:
        if current.name not in (abi.PROG_RELAY, abi.PROG_RELAY_GENERIC) and not force:
            raise UsageError(
                f"{interface} carries XDP program {current.prog_id} ({current.name or 'unnamed'}), "
                "which is not mcr-xdp's: add --force to remove it anyway"
            )
        loader.detach(link.ifindex, interface, only_prog_id=current.prog_id)
        out.print(f"detached XDP program {current.prog_id} ({current.name}, {current.kind}) from {interface}",
                  markup=False)
    sockets = {control.default_path()} if current is not None or tc is not None else set()
    for instance in pins.instances():  # a killed relay's pins and state, when none of its programs is left
        found = pins.read_state(instance) or {}
        if not pins.alive(found.get("pid")) and pins.remove_if_orphaned(instance):
            out.print(f"removed the killed relay's pinned maps ({pins.shown(instance)})", markup=False)
            sockets.add(found.get("socket") or control.default_path())
    if [path for path in sorted(sockets) if control.remove_stale(path)]:
        out.print("removed its stale control socket", markup=False)
