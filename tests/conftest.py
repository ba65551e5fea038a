"""Shared test policy and fixtures.

Tests marked `root` need root, bcc and a kernel with BPF/XDP. Where those are
missing they skip with the reason, except under CI (CI=true), where such a
skip would hide a broken setup and so fails instead.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

UNDER_CI = os.environ.get("CI", "").lower() == "true"


def skip_or_fail(reason: str) -> None:
    if UNDER_CI:
        pytest.fail(f"{reason} (a skip for a missing feature is a failure under CI=true)", pytrace=False)
    pytest.skip(reason)


def _root_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "needs bcc (python3-bpfcc): run `sudo make setup`"
    if not Path(f"/lib/modules/{platform.release()}/build/include").is_dir():
        return "needs kernel headers: run `sudo make setup`"
    return None


@pytest.fixture(scope="session", autouse=True)
def _no_orphan_namespaces():
    """A test run killed before its finalizers (SIGKILL, a timeout) leaves
    namespaces; sweep those of dead runs before this one starts."""
    if os.geteuid() == 0:
        from mcr_xdp.netns import remove_orphans

        remove_orphans()
    yield


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") or item.get_closest_marker("e2e"):
        reason = _root_missing()
        if reason:
            skip_or_fail(reason)
