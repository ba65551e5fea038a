"""mcr-xdp config check: validate a config file without root."""

from __future__ import annotations

import typer

from .console import out

app = typer.Typer(help="Configuration files.", no_args_is_help=True)


@app.command("check")
def check(
    path: str = typer.Argument(..., help="TOML config file.", show_default=False),
    offline: bool = typer.Option(False, "--offline", help="Don't check that the interfaces exist here."),
) -> None:
    """Validate a config file without root.

    Checks syntax, rules, and (unless --offline) that its interfaces exist here.

    Example: mcr-xdp config check /etc/mcr-xdp/relay.toml
    """
    from mcr_xdp import config as config_mod
    from mcr_xdp.links import all_links
    from mcr_xdp.rules import validate

    cfg = config_mod.load(path)
    if offline:
        names = {r.iface for r in cfg.rules} | {o.iface for r in cfg.rules for o in r.outputs}
        validate(cfg.rules, {name: 0 for name in names})
    else:
        links = all_links()
        validate(cfg.rules, {name: link.ifindex for name, link in links.items()},
                 [name for name, link in links.items() if link.loopback])
    out.print(f"{path}: OK, {len(cfg.interfaces)} input interface(s), {len(cfg.rules)} rule(s)", markup=False)
