"""Every `mcr-xdp` command example in README.md runs.

The examples use eth0..eth3, so the test builds a namespace whose
interfaces have those names (veths to peer namespaces), runs the examples
there in README order (a relay in the background for the commands that talk
to one), and checks each exits 0 without a traceback. The config file the
examples name is the example of docs/configuration.md.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from mcr_xdp.lab.netns import Topology, Veth, existing_namespaces, unique_prefix
from mcr_xdp.lab.proc import Proc
from tests.fixtures.relay import SCALE, mcr

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CONFIG_IN_DOCS = "/etc/mcr-xdp/relay.toml"


def code_blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), re.S)


def readme_commands() -> list[list[str]]:
    commands = []
    for block in code_blocks(ROOT / "README.md", "sh"):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("sudo "):
                line = line[5:]
            if line.startswith("mcr-xdp "):
                commands.append(shlex.split(line)[1:])
    return commands


@pytest.fixture
def host(tmp_path):
    topo = Topology(unique_prefix("mcrd"))
    try:
        ns = topo.add_ns("host")
        for i in range(4):
            peer = topo.add_ns(f"net{i}")
            topo.link(Veth(ns, f"eth{i}", f"10.210.{i}.1/24"), Veth(peer, "peer", f"10.210.{i}.2/24"))
        config = tmp_path / "relay.toml"
        toml = code_blocks(ROOT / "docs/configuration.md", "toml")[0]
        # The example's socket is the host's default path: keep the test off it.
        config.write_text(re.sub(r'(?m)^control_socket = .*$', f'control_socket = "{tmp_path}/relay.sock"', toml))
        topo.config = config
        topo.procs = []
        yield topo
    finally:
        for proc in getattr(topo, "procs", []):
            proc.stop()
        Path(f"/run/mcr-xdp/netns-{topo.ns('host')}.sock").unlink(missing_ok=True)
        topo.close()
        assert not {n for n in existing_namespaces() if n.startswith(topo.prefix + "-")}


def run(topo, args: list[str], timeout: float = 60 * SCALE) -> subprocess.CompletedProcess:
    args = [topo.config if a == CONFIG_IN_DOCS else a for a in args]
    return subprocess.run(["ip", "netns", "exec", topo.ns("host"), mcr(), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def start(topo, args: list[str]) -> Proc:
    args = [str(topo.config) if a == CONFIG_IN_DOCS else a for a in args]
    proc = Proc(topo.popen(topo.ns("host"), mcr(), *args))
    topo.procs.append(proc)
    return proc


def in_terminal(topo, args: list[str], ready: str, timeout: float = 60 * SCALE) -> None:
    """Run a full-screen command in a pseudo-terminal (script(1)), wait
    until it drew `ready`, press q, and expect a clean exit."""
    args = [str(topo.config) if a == CONFIG_IN_DOCS else a for a in args]
    command = shlex.join(["env", "COLUMNS=160", "LINES=60", "ip", "netns", "exec", topo.ns("host"), mcr(), *args])
    proc = Proc(subprocess.Popen(["script", "-qfec", command, "/dev/null"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    topo.procs.append(proc)
    proc.wait_for(ready, timeout=timeout)
    time.sleep(1)
    proc.popen.stdin.write("q")
    proc.popen.stdin.flush()
    proc.popen.wait(20 * SCALE)
    assert proc.popen.returncode == 0, proc.lines[-20:]
    assert not any("Traceback" in line for line in proc.lines)


def ok(proc: subprocess.CompletedProcess, args) -> None:
    assert proc.returncode == 0, f"mcr-xdp {shlex.join(args)}: {proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout


def test_readme_has_examples_of_every_command():
    seen = {args[0] for args in readme_commands()}
    assert {"attach", "rule", "status", "stats", "config", "detach", "demo", "gen"} <= seen


def test_every_readme_example_runs(host):
    commands = readme_commands()
    relay = None
    for args in commands:
        if relay is not None and args[0] in ("attach", "detach"):
            assert relay.stop() == 0  # eth0 must be free again
            relay = None
        if args[0] == "attach" and "--tui" in args:
            in_terminal(host, args, ready="q or Ctrl-C quits")
        elif args[0] == "attach" and "--dry-run" in args:
            proc = start(host, args)
            proc.wait_for("nothing attached", timeout=60 * SCALE)
            assert proc.popen.wait(timeout=30) == 0, proc.lines
        elif args[0] == "attach":
            proc = start(host, args)
            proc.wait_for("relaying", timeout=60 * SCALE)
            assert proc.stop() == 0, proc.lines
        elif args[0] == "demo":
            demo = subprocess.run([mcr(), *args], capture_output=True, text=True, timeout=300 * SCALE)
            ok(demo, args)
            assert "every packet arrived once" in demo.stdout
        elif args[0] in ("config", "gen"):
            ok(run(host, args), args)
        elif args[0] == "detach":
            # What detach is for: the program a killed relay left behind.
            killed = start(host, ["attach", "eth0", "--rule", "239.1.1.1:5001=eth1"])
            killed.wait_for("relaying", timeout=60 * SCALE)
            killed.stop(sig=9)
            done = run(host, args)
            ok(done, args)
            assert "detached XDP program" in done.stdout
        else:  # rule, status, stats: against a running relay
            if relay is None:
                relay = start(host, ["attach", "eth0", "--rule", "239.1.1.1:5001=eth1/239.2.2.2:5002"])
                relay.wait_for("relaying", timeout=60 * SCALE)
            if "--live" in args:
                in_terminal(host, args, ready="per CPU")
            elif "--watch" in args:
                proc = host.popen(host.ns("host"), mcr(), *args)
                time.sleep(3 * SCALE)  # the CLI's start-up, then a line or two
                proc.terminate()
                stdout, stderr = proc.communicate(timeout=10 * SCALE)
                assert stdout.strip() and "Traceback" not in stderr, stderr
            else:
                ok(run(host, args), args)
    if relay is not None:
        assert relay.stop() == 0
