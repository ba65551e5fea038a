"""The Debian package under a real systemd: a Debian 12 root file system
(mmdebstrap, Debian's packages) booted with `systemd-nspawn --boot`
(scripts/systemd-test.sh), in which systemd_scenario.sh does what an
operator does: apt-get install ./mcr-xdp_*.deb, enable --now an instance,
traffic relayed, reload a changed file, kill -9 the main process (systemd
restarts it, it takes the programs over: nothing lost), upgrade while a
stream flows (handed over: nothing lost), the journal's levels, stop
(nothing left), remove while running, purge (nothing left).

The root file system is cached under .cache/systemd (about 760 MB, built in
under a minute from the Debian mirror, again only when its package list
changes); each boot runs on a throw-away overlay of it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.pkgtools import ROOT, arch, require

STEPS = ["apt-get install", "systemctl enable --now", "systemctl reload", "kill -9", "upgrade", "journalctl -u",
         "systemctl stop", "apt-get remove"]


def upgrade_of(deb: Path) -> tuple[Path, str]:
    """The same package with a higher version: what an upgrade installs."""
    work = deb.parent / "upgrade"
    subprocess.run(["dpkg-deb", "--raw-extract", str(deb), str(work)], check=True)
    control = work / "DEBIAN" / "control"
    version = re.search(r"^Version: (\S+)$", control.read_text(), re.M)[1] + "+upgrade1"
    control.write_text(re.sub(r"^Version: \S+$", f"Version: {version}", control.read_text(), flags=re.M))
    out = deb.parent / f"mcr-xdp_{version}_{arch()}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(work), str(out)], check=True,
                   capture_output=True)
    shutil.rmtree(work)
    return out, version


@pytest.mark.root
def test_the_package_under_systemd(deb):
    require("mmdebstrap", "mmdebstrap")
    require("systemd-nspawn", "systemd-container")
    upgrade, version = upgrade_of(deb)
    shutil.copy(ROOT / "tests" / "packaging" / "systemd_scenario.sh", deb.parent)
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "systemd-test.sh"), "--deb", str(deb), "--",
         "bash", "/deb/systemd_scenario.sh", deb.name, upgrade.name, version],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the script powers the container off and removes what it made
        stdout, stderr = proc.communicate(timeout=120)
        pytest.fail(f"the scenario did not end within 15 minutes:\n{stdout}{stderr}")
    out = stdout + stderr
    passed = [line[4:] for line in stdout.splitlines() if line.startswith("ok: ")]
    assert proc.returncode == 0 and "FAIL" not in stdout, out
    for step in STEPS:
        assert any(line.startswith(step) for line in passed), f"step {step!r} did not pass:\n{out}"
