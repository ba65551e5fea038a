"""The mcr-xdp commands under typer: each lives in its own module, wired
up here. mcr_xdp_cli.app.main runs this app (or a plain socket command
without it)."""

from __future__ import annotations

import functools

import typer

from mcr_xdp import __version__

from . import attach, config_cmd, demo, detach, gen, rule, stats, status
from .console import run

app = typer.Typer(
    name="mcr-xdp",
    help="Multicast relay whose forwarding runs in the kernel (XDP).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        print(f"mcr-xdp {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version_: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=_print_version,
                                  help="Print the version and exit."),
) -> None:
    """Multicast relay whose forwarding runs in the kernel (XDP)."""


def reports_errors(command):
    """McrError becomes one line on stderr and its exit code (console.run);
    typer itself handles usage errors (exit 2) and help."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        code = run(command, *args, **kwargs)
        if code:
            raise typer.Exit(code)

    return wrapper


for name, command in (
    ("attach", attach.attach),
    ("detach", detach.detach),
    ("status", status.status),
    ("stats", stats.stats_cmd),
    ("demo", demo.demo),
    ("gen", gen.gen),
):
    app.command(name)(reports_errors(command))
for name, sub in (("rule", rule.app), ("config", config_cmd.app)):
    for info in sub.registered_commands:
        info.callback = reports_errors(info.callback)
    app.add_typer(sub, name=name)


@app.command("version")
def version() -> None:
    """Print the version."""
    print(__version__)
