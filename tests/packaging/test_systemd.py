"""systemd/mcr-xdp@.service: `systemd-analyze verify` is clean, and the
privileges and sandbox keep what the relay needs and no more.

verify checks that ExecStart's binary exists, and the unit names where a
Debian package installs it (/usr/bin/mcr-xdp); the check runs on a copy that
points at this venv's mcr-xdp instead. verify exits 0 on unknown keys and
bad values (it only prints them), so any output at all is a failure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.pkgtools import ROOT, missing, require

UNIT = ROOT / "systemd" / "mcr-xdp@.service"
INSTALLED_BINARY = "/usr/bin/mcr-xdp"
# Measured with `setpriv --bounding-set`: see the comment in the unit.
CAPABILITIES = {"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN"}
MAX_EXPOSURE = 5.0  # `systemd-analyze security`: 4.8 when written; lower is better


def directives(text: str) -> dict[str, list[str]]:
    """Key -> values, in order (systemd keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def venv_binary() -> str:
    candidate = Path(sys.executable).parent / "mcr-xdp"
    found = str(candidate) if candidate.exists() else shutil.which("mcr-xdp")
    if found is None:
        missing("the mcr-xdp console script", "none: `sudo make setup` installs it into .venv")
    return found


@pytest.fixture
def unit_dir(tmp_path) -> Path:
    text = UNIT.read_text()
    exec_start = directives(text)["ExecStart"]
    assert len(exec_start) == 1 and exec_start[0].startswith(INSTALLED_BINARY + " ")
    (tmp_path / UNIT.name).write_text(text.replace(INSTALLED_BINARY, venv_binary()))
    return tmp_path


def verify(path: Path) -> subprocess.CompletedProcess:
    exe = require("systemd-analyze", "systemd")
    return subprocess.run([exe, "verify", str(path)], cwd=path.parent, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ["mcr-xdp@.service", "mcr-xdp@relay.service"])
def test_verify(unit_dir, name):
    """The template, and an instance of it, as `systemctl start mcr-xdp@relay` would load it."""
    run = verify(unit_dir / name)
    out = (run.stdout + run.stderr).strip()
    assert run.returncode == 0 and not out, f"systemd-analyze verify {name}:\n{out}"


def test_verify_catches_mistakes(unit_dir):
    """The check above is not vacuous: verify reports a bad value and an
    unknown key, on its output only."""
    unit = unit_dir / UNIT.name
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=bogus\nNoSuchKey=1"))
    out = verify(unit)
    assert "bogus" in out.stdout + out.stderr and "NoSuchKey" in out.stdout + out.stderr


def test_least_capabilities():
    d = directives(UNIT.read_text())
    assert set(" ".join(d["CapabilityBoundingSet"]).split()) == CAPABILITIES
    assert d.get("AmbientCapabilities", [""]) == [""], "root needs no ambient capabilities"
    assert d["NoNewPrivileges"] == ["yes"]
    assert "User" not in d, "the relay checks for uid 0; its capabilities are bounded instead"


def test_reload_is_sighup():
    d = directives(UNIT.read_text())
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["ExecStart"] == [f"{INSTALLED_BINARY} attach --config /etc/mcr-xdp/%i.toml"]


def test_sandbox_leaves_what_bcc_and_the_relay_need():
    d = directives(UNIT.read_text())
    assert d["ProtectSystem"] == ["strict"]
    assert "/sys/fs/bpf" in " ".join(d["ReadWritePaths"]).split(), "pinned maps live in bpffs"
    assert d["RuntimeDirectory"] == ["mcr-xdp"], "the control socket directory"
    # bcc compiles against /lib/modules/$(uname -r)/build, which these hide.
    assert d.get("ProtectKernelModules", ["no"]) == ["no"]
    assert "/lib/modules" not in " ".join(d.get("InaccessiblePaths", []))
    families = set(" ".join(d["RestrictAddressFamilies"]).split())
    assert {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"} <= families
    assert d.get("PrivateNetwork", ["no"]) == ["no"], "the relay attaches to the host's interfaces"


def test_security_exposure(unit_dir):
    exe = require("systemd-analyze", "systemd")
    run = subprocess.run([exe, "security", "--offline=true", "--no-pager", str(unit_dir / UNIT.name)],
                         capture_output=True, text=True, timeout=60)
    if "--offline" in run.stderr and run.returncode != 0:
        pytest.skip(f"systemd-analyze security --offline is missing here (systemd < 250): {run.stderr.strip()}")
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", run.stdout)
    assert m, run.stdout + run.stderr
    assert float(m[1]) <= MAX_EXPOSURE, f"exposure {m[1]} > {MAX_EXPOSURE}:\n{run.stdout}"
