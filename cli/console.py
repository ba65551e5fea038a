"""Where output goes: results on stdout, diagnostics on stderr.

The rich consoles are made on first use: importing rich.console costs tens
of milliseconds that a command printing one plain line need not pay.
"""


class _Console:
    def __init__(self, **options):
        self._options = options
        self._console = None

    def __getattr__(self, name):
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False, soft_wrap=True, **self._options)
        return getattr(self._console, name)


out = _Console()
err = _Console(stderr=True)
