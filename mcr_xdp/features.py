"""Kernel and setup probes. Each raises a typed error naming what is
missing and what fixes it; the relay calls them before it changes anything."""

from __future__ import annotations

import errno
import os
import platform
import re
from pathlib import Path

from . import libbpf
from .errors import NotSupported, PrivilegeError, SetupError

# The oldest kernel the datapath is written for: devmap entries that carry
# a program (5.8) and BPF_F_BROADCAST redirects (5.15).
MIN_KERNEL = (5, 15)



def kernel_version(release: str | None = None) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return (int(m[1]), int(m[2])) if m else (0, 0)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise PrivilegeError(f"{what} needs root (CAP_BPF and CAP_NET_ADMIN): run it with sudo")


def require_kernel() -> None:
    version = kernel_version()
    if version < MIN_KERNEL:
        raise NotSupported(
            "XDP devmap broadcast", "%d.%d" % MIN_KERNEL, f"running {platform.release()}"
        )
    try:
        fd = libbpf.devmap_create("mcr_probe", 1, 8)
    except OSError as exc:
        if exc.errno == errno.EPERM:
            raise PrivilegeError("creating BPF maps was refused: the relay needs CAP_BPF, CAP_NET_ADMIN "
                                 "and CAP_PERFMON (or root)") from None
        raise NotSupported("devmap entries with programs", "5.8", exc.strerror) from None
    os.close(fd)


def headers_dir() -> Path:
    return Path("/lib/modules") / platform.release() / "build"


def require_toolchain() -> None:
    """bcc and the kernel headers it compiles against."""
    try:
        import bcc  # noqa: F401
    except ImportError:
        raise SetupError(
            "bcc is not importable (Debian package python3-bpfcc): run `sudo make setup` "
            "and use the project's venv (.venv/bin/mcr-xdp)"
        ) from None
    if not (headers_dir() / "include").is_dir():
        raise SetupError(f"kernel headers are missing at {headers_dir()}: run `sudo make setup`")
