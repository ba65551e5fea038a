"""The TOML config file (mcr_xdp.config) and `mcr-xdp config check`.

Every error names the file, the line and the key, so each bad file below
says which line and key its error must point at.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import textwrap
from ipaddress import ip_address
from pathlib import Path

import pytest

from mcr_xdp import config
from mcr_xdp.config import ConfigError
from mcr_xdp.lab.proc import venv_bin
from mcr_xdp.modes import XdpMode
from mcr_xdp.rules import parse_rule

VALID = """\
# A relay with two inputs.
xdp_mode = "native"
control_socket = "/run/mcr-xdp/test.sock"
interval = 2.5

[inputs.eth0]
rules = [
    "239.1.1.1:5001=eth1/239.2.2.2:5002",
    '10.0.0.5@232.1.1.1:5001=eth1,eth2',  # SSM, single-quoted
]

[inputs.eth3]
rules = ["[ff3e::1]:5001=eth1/[ff3e::2]:5002"]
"""


def write(dir_: Path, text: str, name: str = "relay.toml") -> Path:
    path = dir_ / name
    path.write_text(textwrap.dedent(text))
    path.chmod(0o644)
    return path


def test_valid_file(tmp_path):
    path = write(tmp_path, VALID)

    cfg = config.load(path)

    assert cfg.path == str(path)
    assert cfg.interfaces == ["eth0", "eth3"]
    assert cfg.rules == [
        parse_rule("239.1.1.1:5001=eth1/239.2.2.2:5002", "eth0"),
        parse_rule("10.0.0.5@232.1.1.1:5001=eth1,eth2", "eth0"),
        parse_rule("[ff3e::1]:5001=eth1/[ff3e::2]:5002", "eth3"),
    ]
    assert cfg.rules[1].source == ip_address("10.0.0.5")
    assert (cfg.xdp_mode, cfg.control_socket, cfg.interval) == (XdpMode.NATIVE, "/run/mcr-xdp/test.sock", 2.5)


def test_ranges_and_join(tmp_path):
    cfg = config.load(write(tmp_path, """\
        [inputs.eth0]
        rules = ["239.1.0.0/16:*=eth1/239.2.0.0/16:*", "10.0.0.0/8@239.3.3.3:5001=eth1"]
        join = "none"

        [inputs.eth3]
        rules = ["[ff3e::/96]:5001=eth1"]
        join = "rule"
        """))
    assert [str(r) for r in cfg.rules] == ["eth0/239.1.0.0/16:*=eth1/239.2.0.0/16:*",
                                           "eth0/10.0.0.0/8@239.3.3.3:5001=eth1", "eth3/[ff3e::/96]:5001=eth1"]
    assert cfg.no_join == {"eth0"}


def test_options_are_optional(tmp_path):
    cfg = config.load(write(tmp_path, '[inputs.eth0]\nrules = ["239.1.1.1:5001=eth1"]\n'))
    assert (cfg.xdp_mode, cfg.control_socket, cfg.interval, cfg.loss_tracer) == (None, None, None, None)


@dataclasses.dataclass(frozen=True)
class Bad:
    desc: str
    text: str
    line: int
    key: str | None  # None: a TOML syntax error, which names no key
    message: str  # a part of the message after the key


BAD = [
    Bad("TOML syntax error", """\
        xdp_mode = "native"
        [inputs.eth0]
        rules = ["239.1.1.1:5001=eth1"
        interval = 3
        """, 4, None, "Unclosed array"),
    Bad("TOML syntax error at the end", """\
        [inputs.eth0]
        rules = [
        """, 2, None, "end of document"),
    Bad("TOML duplicate key", """\
        interval = 1
        interval = 2
        """, 2, None, "Cannot overwrite a value"),
    Bad("unknown top-level key", """\
        xdp_mode = "native"

        colour = "blue"
        [inputs.eth0]
        rules = ["239.1.1.1:5001=eth1"]
        """, 3, "colour",
     "unknown key (known: control_socket, fanout, inputs, interval, loss_tracer, mode, steer_cpus, workers, "
     "xdp_mode)"),
    Bad("unknown top-level table (typo of inputs)", """\
        xdp_mode = "native"

        [input.eth0]
        rules = ["239.1.1.1:5001=eth1"]
        """, 3, "input", "unknown key"),
    Bad("unknown key in an input table", """\
        [inputs.eth0]
        rules = ["239.1.1.1:5001=eth1"]

        [inputs.eth1]
        rules = ["239.1.1.2:5001=eth2"]
        rule = "239.1.1.3:5001=eth2"
        """, 6, "inputs.eth1.rule", "unknown key (known: join, rules)"),
    Bad("bad xdp_mode", """\
        interval = 1
        xdp_mode = "turbo"
        [inputs.eth0]
        rules = ["239.1.1.1:5001=eth1"]
        """, 2, "xdp_mode", "'turbo' is not one of auto, native, generic"),
    Bad("interval not positive", """\
        interval = 0
        [inputs.eth0]
        rules = ["239.1.1.1:5001=eth1"]
        """, 1, "interval", "positive"),
    Bad("control_socket not absolute", """\
        control_socket = "relay.sock"
        [inputs.eth0]
        rules = ["239.1.1.1:5001=eth1"]
        """, 1, "control_socket", "must be an absolute path"),
    Bad("bad rule: not multicast", """\
        [inputs.eth0]
        rules = [
            "239.1.1.1:5001=eth1",
            "10.1.1.1:5001=eth1",
        ]
        """, 4, "inputs.eth0.rules[1]", "not a multicast group"),
    Bad("bad rule: valid text in one table, a loop in the next", """\
        [inputs.eth0]
        rules = [
            "239.1.1.1:5001=eth1",
        ]

        [inputs.eth1]
        rules = [
            "239.1.1.2:5001=eth2",
            '239.1.1.1:5001=eth1',
        ]
        """, 9, "inputs.eth1.rules[1]", "would loop"),
    Bad("bad rule: too many outputs", """\
        [inputs.eth0]
        rules = ["239.1.1.1:5001=%s"]
        """ % ",".join(f"o{i}" for i in range(17)), 2, "inputs.eth0.rules[0]", "the limit is 16"),
    Bad("bad rule: source not unicast", """\
        [inputs.eth0]
        rules = ["239.9.9.9@239.1.1.1:5001=eth1"]
        """, 2, "inputs.eth0.rules[0]", "not a unicast address"),
    Bad("bad rule: IPv6 group without brackets", """\
        [inputs.eth0]
        rules = ["ff3e::1:5001=eth1"]
        """, 2, "inputs.eth0.rules[0]", "brackets"),
    Bad("rules not a list", """\
        [inputs.eth0]
        # one rule
        rules = "239.1.1.1:5001=eth1"
        """, 3, "inputs.eth0.rules", "must be a list of rule strings"),
    Bad("rules not strings", """\
        [inputs.eth0]
        rules = [5001]
        """, 2, "inputs.eth0.rules", "must be a list of rule strings"),
    Bad("input not a table", """\
        interval = 1
        inputs = { eth0 = 5 }
        """, 2, "inputs.eth0", "must be a table"),
    Bad("bad rule in an inline table", """\
        interval = 1
        inputs = { eth0 = { rules = ["239.1.1.1:5001=eth0"] } }
        """, 2, "inputs.eth0.rules[0]", "would loop"),
    Bad("empty inputs", """\
        interval = 1
        inputs = {}
        """, 2, "inputs", "needs at least one [inputs.IFACE] table"),
    Bad("bad join", """\
        [inputs.eth0]
        rules = ["239.1.1.1:5001=eth1"]
        join = "all"
        """, 3, "inputs.eth0.join", "'all' is not one of 'rule', 'none'"),
    Bad("range rule with a source", """\
        [inputs.eth0]
        rules = ["10.0.0.1@239.1.0.0/16:*=eth1"]
        """, 2, "inputs.eth0.rules[0]", "needs one group, not the range 239.1.0.0/16"),
]

def where(path: Path, case: Bad) -> str:
    """The start of the message: file, line (when there is one), key."""
    head = f"{path}:{case.line}" if case.line else str(path)
    return f"{head}: {case.key}: " if case.key else f"{head}: "


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.desc)
def test_error_names_file_line_and_key(tmp_path, case):
    path = write(tmp_path, case.text)

    with pytest.raises(ConfigError) as exc:
        config.load(path)

    msg = str(exc.value)
    assert msg.startswith(where(path, case)), msg
    assert case.message in msg
    assert "\n" not in msg


def test_no_inputs_names_file_and_key(tmp_path):
    """Nothing to point at: the message names the file and the key."""
    path = write(tmp_path, 'xdp_mode = "auto"\n')
    with pytest.raises(ConfigError, match=rf"^{path}: inputs: needs at least one \[inputs.IFACE\] table"):
        config.load(path)


def test_not_utf8(tmp_path):
    """TOML is UTF-8 whatever the locale; another encoding is a ConfigError
    with its line (a UnicodeDecodeError once crashed a SIGHUP reload)."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'interval = 1\n# caf\xe9\n[inputs.eth0]\nrules = ["239.1.1.1:5001=eth1"]\n')
    with pytest.raises(ConfigError, match=rf"^{path}:2: not UTF-8 \(byte 0xe9\)"):
        config.load(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"^{path}: cannot read: No such file"):
        config.load(path)


def test_error_is_a_usage_error(tmp_path):
    """Exit code 2, like every other bad input."""
    with pytest.raises(ConfigError) as exc:
        config.load(write(tmp_path, "colour = 1\n"))
    assert exc.value.exit_code == 2


def test_bad_cases_are_what_they_claim():
    assert len({c.desc for c in BAD}) == len(BAD)
    for case in BAD:
        lines = textwrap.dedent(case.text).splitlines()
        assert 0 <= case.line <= len(lines), case.desc


# -- mcr-xdp config check, as a user without root ---------------------------------


@pytest.fixture
def public_dir():
    """A directory nobody (uid 65534) can read: pytest's tmp_path is 0700."""
    path = Path(tempfile.mkdtemp(prefix="mcr-config-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def config_check(*args: str) -> subprocess.CompletedProcess:
    """`mcr-xdp config check ARGS` as nobody (as is, when not root already)."""
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    return subprocess.run([*drop, venv_bin("mcr-xdp"), "config", "check", *args], capture_output=True, text=True,
                          timeout=60)


def test_check_valid_file_without_root(public_dir):
    path = write(public_dir, VALID)

    proc = config_check(str(path), "--offline")

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{path}: OK, 2 input interface(s), 3 rule(s)"
    assert proc.stderr == ""


CLI_BAD = ("TOML syntax error", "unknown key in an input table",
           "bad rule: valid text in one table, a loop in the next")


@pytest.mark.parametrize("case", [c for c in BAD if c.desc in CLI_BAD], ids=lambda c: c.desc)
def test_check_bad_file_without_root(public_dir, case):
    path = write(public_dir, case.text)

    proc = config_check(str(path), "--offline")

    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"mcr-xdp: error: {where(path, case)}")
    assert "Traceback" not in proc.stderr


def test_check_looks_up_interfaces_unless_offline(public_dir):
    path = write(public_dir, '[inputs.lo]\nrules = ["239.1.1.1:5001=nosuch9"]\n')

    offline, here = config_check(str(path), "--offline"), config_check(str(path))

    assert offline.returncode == 0, offline.stderr
    assert here.returncode == 2
    assert here.stderr.strip() == "mcr-xdp: error: interface 'nosuch9' does not exist (rule lo/239.1.1.1:5001=nosuch9)"


def test_check_unreadable_file(public_dir):
    path = write(public_dir, VALID)
    path.chmod(0)

    proc = config_check(str(path), "--offline")

    assert proc.returncode == 2
    assert proc.stderr.strip() == f"mcr-xdp: error: {path}: cannot read: Permission denied"


def test_mode_options(tmp_path):
    path = tmp_path / "modes.toml"
    path.write_text('mode = "tc"\nsteer_cpus = [0, 1]\nworkers = 3\nfanout = "cpu"\nloss_tracer = false\n'
                    '[inputs.eth0]\nrules = ["239.1.1.1:5001=eth1"]\n')
    cfg = config.load(path)
    assert (cfg.mode.value, cfg.steer_cpus, cfg.workers, cfg.fanout) == ("tc", (0, 1), 3, "cpu")
    assert cfg.loss_tracer is False
    path.write_text('steer_cpus = "0-2"\n[inputs.eth0]\nrules = ["239.1.1.1:5001=eth1"]\n')
    assert config.load(path).steer_cpus == (0, 1, 2)


@pytest.mark.parametrize("line, key, message", [
    ('mode = "fast"', "mode", "is not one of auto, xdp-native"),
    ('steer_cpus = "0,x"', "steer_cpus", "is not a CPU list"),
    ("workers = 0", "workers", "at least 1"),
    ('fanout = "random"', "fanout", "is not one of"),
    ('loss_tracer = "off"', "loss_tracer", "must be true or false"),
    ("loss_tracer = 0", "loss_tracer", "must be true or false"),
])
def test_bad_mode_options_name_line_and_key(tmp_path, line, key, message):
    path = tmp_path / "bad.toml"
    path.write_text(f'interval = 5\n{line}\n[inputs.eth0]\nrules = ["239.1.1.1:5001=eth1"]\n')
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    assert str(err.value).startswith(f"{path}:2: {key}: ")
    assert message in str(err.value)
