"""Helpers for the packaging checks: where the project is, and the tools
they drive.

A missing tool skips its tests with the reason, except under CI (CI=true),
where scripts/setup.sh should have installed it and a skip would hide that.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNDER_CI = os.environ.get("CI", "").lower() == "true"


def missing(what: str, package: str) -> None:
    """Skip (fail under CI) because what, from Debian package package, is missing."""
    reason = f"needs {what} (Debian package {package}): run `sudo make setup`"
    if UNDER_CI:
        pytest.fail(f"{reason} (a skip for a missing tool is a failure under CI=true)", pytrace=False)
    pytest.skip(reason)


def require(tool: str, package: str) -> str:
    """Path of tool, or skip (fail under CI) naming the package that has it."""
    path = shutil.which(tool)
    if path is None:
        missing(tool, package)
    return path
