"""Where output goes: results on stdout, diagnostics on stderr.

The rich consoles are made on first use: importing rich.console costs tens
of milliseconds that a command printing one plain line need not pay.

log: the lines of a running relay and every command's error line, each
with its level (mcr_xdp.logs); `attach --log-format` sets its format.
"""

import sys

from mcr_xdp.logs import Log


class _Console:
    def __init__(self, **options):
        self._options = options
        self._console = None

    def print(self, *objects, markup: bool | None = None, **kwargs) -> None:
        if markup is False and not kwargs and all(isinstance(o, str) for o in objects):
            # Plain text needs no rich (nor its emoji codes): a line as is.
            print(*objects, file=sys.stderr if self._options.get("stderr") else sys.stdout, flush=True)
            return
        self.console.print(*objects, markup=markup, **kwargs)

    @property
    def console(self):
        """The rich Console itself (for rich.live.Live and the like)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False, soft_wrap=True, **self._options)
        return self._console

    def __getattr__(self, name):
        return getattr(self.console, name)


out = _Console()
err = _Console(stderr=True)
log = Log()


def run(command, *args, **kwargs) -> int:
    """Call a command; an McrError becomes one line on stderr and its exit
    code (the one place where errors become exit codes), Ctrl-C 130."""
    from mcr_xdp.errors import McrError

    try:
        command(*args, **kwargs)
    except McrError as exc:
        log.error(str(exc), exit_code=exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        log.warning("interrupted", exit_code=130)
        return 130
    return 0
