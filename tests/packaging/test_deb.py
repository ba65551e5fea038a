"""`make deb`: the Debian package builds with Debian's tooling and holds
what an operator expects (the command, the unit, man pages, completion, a
commented example), depends on Debian's packages (nothing vendored), and
lintian finds nothing to complain about. Its man pages and completion know
every command and option the CLI has. tests/packaging/test_systemd_boot.py
installs it under a real systemd.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import typer.main

from mcr_xdp import __version__
from mcr_xdp.fallback import native
from mcr_xdp_cli.app import app
from tests.fixtures.pkgtools import ROOT, arch, require

DEBIAN_DEPENDS = {"python3-bpfcc", "python3-pyroute2", "python3-rich", "python3-typer", "libbpf1", "iproute2", "kmod"}
FILES = {
    "./usr/bin/mcr-xdp",
    "./lib/systemd/system/mcr-xdp@.service",
    "./etc/mcr-xdp/relay.toml.example",
    "./usr/share/man/man8/mcr-xdp.8.gz",
    "./usr/share/man/man5/mcr-xdp.toml.5.gz",
    "./usr/share/bash-completion/completions/mcr-xdp",
    "./usr/lib/python3/dist-packages/mcr_xdp/bpf/relay.c",
    "./usr/lib/python3/dist-packages/mcr_xdp_cli/app.py",
    # The userspace workers' inner loop, built for the sources the package holds.
    "./usr/lib/python3/dist-packages/mcr_xdp/fallback/fastpath.c",
}
# Built for the sources the package holds (dh_python3 adds the interpreter's tag to its name).
INNER_LOOP = re.compile(rf"\./usr/lib/python3/dist-packages/mcr_xdp/fallback/build/"
                        rf"fastpath-{native.digest()}\.[\w.-]*so")


def commands() -> dict[str, set[str]]:
    """Command path ("rule add") -> its options, from the typer app."""
    found = {}

    def walk(command, path):
        subs = getattr(command, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            found[" ".join(path)] = {o for p in command.params if p.param_type_name == "option" for o in p.opts}

    walk(typer.main.get_command(app), [])
    return found


def test_versions_agree():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    changelog = re.match(r"mcr-xdp \(([^)]+)\)", (ROOT / "debian" / "changelog").read_text())[1]
    man = re.search(r'"mcr-xdp ([^"]+)"', (ROOT / "packaging" / "mcr-xdp.8").read_text())[1]
    assert pyproject == changelog == man == __version__


def test_contents(deb):
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True).stdout
    paths = {line.split()[-1] for line in listing.splitlines()}
    assert FILES <= paths, FILES - paths
    assert [p for p in paths if INNER_LOOP.fullmatch(p)], sorted(p for p in paths if "fallback/" in p)
    assert not [p for p in paths if "__pycache__" in p or p.endswith(".pyc") or "/tests/" in p or ".venv" in p]
    conffiles = subprocess.run(["dpkg-deb", "--info", str(deb), "conffiles"], capture_output=True, text=True,
                               check=True).stdout.split()
    assert conffiles == ["/etc/mcr-xdp/relay.toml.example"]  # an operator's edits survive upgrades


def test_every_module_is_in_the_package(deb):
    """The editable install of the venv finds every module; a wheel only
    those pyproject.toml lists."""
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True).stdout
    packaged = {line.split("dist-packages/", 1)[1] for line in listing.splitlines() if "dist-packages/" in line}
    for package, source in (("mcr_xdp", ROOT / "mcr_xdp"), ("mcr_xdp_cli", ROOT / "cli")):
        for module in source.rglob("*.py"):
            if "__pycache__" not in module.parts:
                assert f"{package}/{module.relative_to(source)}" in packaged, module


def test_depends_on_debian_packages(deb):
    def field(name):
        return subprocess.run(["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True,
                              check=True).stdout.strip()

    depends = {alt.split()[0] for dep in field("Depends").split(",") for alt in dep.split("|")}
    assert DEBIAN_DEPENDS <= depends and "linux-headers-amd64" in depends
    assert field("Architecture") == arch() and field("Package") == "mcr-xdp"
    # Nothing of PyPI's inside: the Python code is the project's two packages.
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True).stdout
    tops = {m[1] for m in re.finditer(r"dist-packages/([^/\s]+)/", listing)}
    assert tops == {"mcr_xdp", "mcr_xdp_cli", f"mcr_xdp-{__version__}.dist-info"}


def test_lintian_is_clean(deb, tmp_path):
    lintian = require("lintian", "lintian")
    # TMPDIR: lintian leaves a file of its own there (mldbm-elf-*) after every run.
    run = subprocess.run([lintian, "--fail-on", "warning", str(deb)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": str(tmp_path)})
    findings = [line for line in run.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert run.returncode == 0 and not findings, run.stdout + run.stderr


def test_man_page_names_every_command_and_option():
    page = (ROOT / "packaging" / "mcr-xdp.8").read_text().replace("\\-", "-")
    for path, options in commands().items():
        assert re.search(rf"^\.BR? (mcr-xdp )?{re.escape(path)}\b", page, re.M), path
        for opt in options - {"--help", "-h"}:
            assert opt in page, (path, opt)


def test_man_pages_render_without_warnings():
    man = require("man", "man-db")
    for page in ("mcr-xdp.8", "mcr-xdp.toml.5"):
        run = subprocess.run([man, "--warnings", "-l", str(ROOT / "packaging" / page)], capture_output=True, text=True,
                             env={**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MAN_KEEP_FORMATTING": ""},
                             timeout=60)
        assert run.returncode == 0 and not run.stderr.strip(), run.stderr
        assert "mcr-xdp" in run.stdout


def test_completion_knows_every_command_and_option():
    text = (ROOT / "packaging" / "mcr-xdp.bash-completion").read_text()
    for path, options in commands().items():
        for word in path.split():
            assert re.search(rf"\b{re.escape(word)}\b", text), word
        for opt in options:
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text), (path, opt)


def test_completion_completes():
    bash = require("bash", "bash")
    completion = Path("/usr/share/bash-completion/bash_completion")
    if not completion.exists():
        require("bash-completion's library", "bash-completion")

    def complete(line: str) -> set[str]:
        words = line.split(" ")
        script = (f"source {completion}; source {ROOT / 'packaging' / 'mcr-xdp.bash-completion'}; "
                  f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}; "
                  f"COMP_LINE={line!r}; COMP_POINT={len(line)}; _mcr_xdp; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
        run = subprocess.run([bash, "-c", script], capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        return set(run.stdout.split())

    assert {"attach", "rule", "status", "stats"} <= complete("mcr-xdp ")
    assert complete("mcr-xdp rule ") == {"add", "del", "list", "--help", "-h"}
    assert complete("mcr-xdp status --j") == {"--json"}
    assert complete("mcr-xdp attach --mode x") == {"xdp-native", "xdp-generic"}
    assert "lo" in complete("mcr-xdp attach l")


def test_example_config_is_valid():
    from mcr_xdp import config

    cfg = config.load(str(ROOT / "packaging" / "relay.toml.example"))
    assert cfg.interfaces == ["eth0"] and len(cfg.rules) == 1
