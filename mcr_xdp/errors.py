"""One exception base for everything the relay reports to a user.

The CLI maps these to exit codes in one place (mcr_xdp_cli.app); library code
raises, never prints or exits.
"""


class McrError(Exception):
    """Base of every error meant for the user: the message is one clear line."""

    exit_code = 1


class UsageError(McrError):
    """Bad input from the user: a rule, an interface name, an option."""

    exit_code = 2


class RuleError(UsageError):
    """A rule that cannot be parsed or is not valid on this machine."""


class InterfaceError(UsageError):
    """An interface that does not exist or cannot be used."""


class PrivilegeError(McrError):
    """The operation needs root (CAP_BPF/CAP_NET_ADMIN)."""

    exit_code = 77


class SetupError(McrError):
    """Something `make setup` installs is missing (bcc, kernel headers, bpffs)."""

    exit_code = 3


class NotSupported(McrError):
    """The kernel lacks a feature the relay needs."""

    exit_code = 3

    def __init__(self, feature: str, min_kernel: str, detail: str = ""):
        self.feature = feature
        self.min_kernel = min_kernel
        msg = f"this kernel lacks {feature} (needs Linux {min_kernel} or newer)"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class AttachError(McrError):
    """Loading or attaching the datapath failed."""


class BusyError(McrError):
    """The interface already carries an XDP program."""

    exit_code = 4


class TopologyError(McrError):
    """A throw-away lab (the demo's namespaces, veths and the processes in
    them) could not be built, or a process in it failed to start."""
