"""`make lint` is clean: ruff over the Python (pyproject.toml's settings) and
shellcheck over every shell script, as a developer runs it."""

from __future__ import annotations

import subprocess

from tests.fixtures.pkgtools import ROOT, require


def test_make_lint_is_clean():
    require("shellcheck", "shellcheck")
    require("make", "make")
    run = subprocess.run(["make", "-s", "lint"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"make lint:\n{run.stdout}{run.stderr}"
    assert "All checks passed!" in run.stdout  # ruff ran, not a target that does nothing
