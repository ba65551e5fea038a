"""mcr-xdp rule add|del|list: change the running relay's rules."""

from __future__ import annotations

from typing import List, Optional

import typer

from . import options, socket_cmds

app = typer.Typer(help="Add, delete and list the running relay's rules.", no_args_is_help=True)


@app.command("add")
def add(
    rules: List[str] = typer.Argument(..., help="[INPUT/][SOURCE@]GROUP:PORT=OUT[,OUT...]", show_default=False),
    socket_path: Optional[str] = options.SOCKET,
) -> None:
    """Add rules to the running relay (all or none).

    Example: mcr-xdp rule add eth0/239.1.1.2:5001=eth1/239.2.2.3:5002,eth2
    """
    socket_cmds.rule_add(rules, socket_path)


@app.command("del")
def delete(
    rule: str = typer.Argument(..., help="Rule id (from `mcr-xdp rule list`) or the rule's text.",
                               show_default=False),
    socket_path: Optional[str] = options.SOCKET,
) -> None:
    """Delete a rule from the running relay; its traffic is no longer relayed.

    Example: mcr-xdp rule del 3
    """
    socket_cmds.rule_del(rule, socket_path)


@app.command("list")
def list_(socket_path: Optional[str] = options.SOCKET, as_json: bool = options.JSON) -> None:
    """List the running relay's rules with their ids."""
    socket_cmds.rule_list(socket_path, as_json)
