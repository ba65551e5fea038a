"""The Debian package, built once for the tests that need it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mcr_xdp import __version__
from tests.fixtures.pkgtools import ROOT, arch, require


@pytest.fixture(scope="session")
def deb(tmp_path_factory) -> Path:
    """build/mcr-xdp_VERSION_ARCH.deb as `make deb` builds it (scripts/deb.sh),
    into a directory of its own."""
    require("dpkg-buildpackage", "dpkg-dev")
    out = tmp_path_factory.mktemp("deb")
    run = subprocess.run(["bash", str(ROOT / "scripts" / "deb.sh")], cwd=ROOT, env={**os.environ, "DEB_OUT": str(out)},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    path = Path(run.stdout.strip().splitlines()[-1])
    assert path == out / f"mcr-xdp_{__version__}_{arch()}.deb" and path.is_file()
    return path
