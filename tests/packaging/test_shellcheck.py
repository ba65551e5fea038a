"""The shell scripts, the provisioning path of the VMs among them, are
shellcheck-clean at its default severity (style and up)."""

from __future__ import annotations

import subprocess

import pytest

from tests.fixtures.pkgtools import ROOT, require

SCRIPTS = sorted([*ROOT.glob("scripts/*.sh"), *ROOT.glob("vagrant/*.sh")])
# The Debian package's maintainer scripts (sh, `set -e`: dpkg's convention)
# and its bash completion (sourced into an interactive shell: no set at all).
PACKAGE_SCRIPTS = sorted([*ROOT.glob("debian/*.postinst"), *ROOT.glob("debian/*.prerm"), *ROOT.glob("debian/*.postrm"),
                          ROOT / "packaging" / "mcr-xdp.bash-completion"])


def test_there_are_scripts():
    assert ROOT / "scripts" / "setup.sh" in SCRIPTS
    assert ROOT / "scripts" / "vm-test.sh" in SCRIPTS
    assert len(PACKAGE_SCRIPTS) == 4


@pytest.mark.parametrize("script", SCRIPTS + PACKAGE_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck_clean(script):
    shellcheck = require("shellcheck", "shellcheck")
    run = subprocess.run([shellcheck, "--format=gcc", "--external-sources", str(script)],
                         cwd=script.parent, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"shellcheck findings in {script.name}:\n{run.stdout}{run.stderr}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_strict_mode(script):
    """Every script stops at the first failing command."""
    assert "set -euo pipefail" in script.read_text(), f"{script.name} lacks `set -euo pipefail`"
