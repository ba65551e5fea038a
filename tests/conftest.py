"""Shared test policy and fixtures.

Tests marked `root` need root, bcc and a kernel with BPF/XDP. Where those are
missing they skip with the reason, except under CI (CI=true), where such a
skip would hide a broken setup and so fails instead (tests/fixtures/policy.py).
"""

from __future__ import annotations

import os

import pytest

from tests.fixtures.policy import root_missing, skip_or_fail


@pytest.fixture(scope="session", autouse=True)
def _no_orphan_namespaces():
    """A test run killed before its finalizers (SIGKILL, a timeout) leaves
    namespaces; sweep those of dead runs before this one starts."""
    if os.geteuid() == 0:
        from mcr_xdp.lab.netns import remove_orphans

        remove_orphans()
    yield


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") or item.get_closest_marker("e2e"):
        reason = root_missing()
        if reason:
            skip_or_fail(reason)
