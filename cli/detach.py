"""mcr-xdp detach: remove what a killed relay left on an interface."""

from __future__ import annotations

from typing import Annotated

import typer

from mcr_xdp import abi, control, features, loader, pins
from mcr_xdp.control import instance_name
from mcr_xdp.errors import UsageError
from mcr_xdp.links import lookup

from .console import out


def detach(
    interface: Annotated[str, typer.Argument(help="Interface to remove the relay's XDP program from.",
                                             show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Also remove an XDP program that is not mcr-xdp's.")] = False,
) -> None:
    """Remove the XDP program or TC filter a killed relay left on INTERFACE.

    A running relay detaches by itself on Ctrl-C or SIGTERM; this is for the
    program a relay that was killed with SIGKILL left behind. (Userspace-mode
    workers end with their relay: they leave nothing.)
    """
    features.require_root("detach")
    link = lookup([interface])[interface]
    tc = loader.tc_attached(link.ifindex)
    if tc is not None:
        loader.tc_detach(link.ifindex, interface)
        out.print(f"removed the relay's TC filter ({tc.name}) from {interface}", markup=False)
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
    instance = instance_name()
    if pins.remove_if_orphaned(instance):
        out.print(f"removed the killed relay's pinned maps ({pins.pin_dir(instance)})", markup=False)
    if (current is not None or tc is not None) and control.remove_stale():
        out.print("removed its stale control socket", markup=False)
