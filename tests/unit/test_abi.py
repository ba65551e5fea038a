"""bpf/mcr_abi.h and mcr_xdp/abi.py describe the same ABI.

A C probe, generated from abi.STRUCTS and the header's own #defines, is
compiled against the header with gcc and prints every size, offset and
constant as JSON; each one must equal its Python mirror. Needs gcc only.
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mcr_xdp import abi
from tests.fixtures.policy import skip_or_fail

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "mcr_abi.h"
HEADER_TEXT = HEADER.read_text()

# Every #define of the header except its include guard, e.g. MCR_MAX_RULES.
DEFINES = re.findall(r"^#define[ \t]+(MCR_\w+)[ \t]+\S", HEADER_TEXT, re.M)
STRING_DEFINES = re.findall(r'^#define[ \t]+(MCR_\w+)[ \t]+"', HEADER_TEXT, re.M)
VERDICT_NAMES = re.findall(r"^\s*(MCR_V_\w+)\s*=", HEADER_TEXT, re.M)
STRUCT_NAMES = re.findall(r"^struct\s+(mcr_\w+)\s*\{", HEADER_TEXT, re.M)


def _python_name(c_name: str) -> str:
    """The abi.py name of a header constant: MCR_MAX_RULES -> MAX_RULES."""
    return "VERDICT_MAX" if c_name == "MCR_V_MAX" else c_name.removeprefix("MCR_")


def _probe_source() -> str:
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "mcr_abi.h"', "", "int main(void)", "{"]
    emit = []  # (json key, printf format, C expression)
    for c_name, ctype in abi.STRUCTS.items():
        emit.append((f"sizeof {c_name}", "%zu", f"sizeof(struct {c_name})"))
        for field, _ in ctype._fields_:
            emit.append((f"offsetof {c_name}.{field}", "%zu", f"offsetof(struct {c_name}, {field})"))
            emit.append((f"sizeof {c_name}.{field}", "%zu", f"sizeof(((struct {c_name} *)0)->{field})"))
    for name in VERDICT_NAMES:
        emit.append((name, "%d", f"(int){name}"))
    for name in DEFINES:
        emit.append((name, '\\"%s\\"' if name in STRING_DEFINES else "%d", name))
    lines.append('\tprintf("{");')
    for i, (key, fmt, expr) in enumerate(emit):
        sep = "," if i else ""
        lines.append(f'\tprintf("{sep}\\"{key}\\": {fmt}", {expr});')
    lines += ['\tprintf("}\\n");', "\treturn 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> dict:
    gcc = shutil.which("gcc")
    if gcc is None:
        skip_or_fail("needs gcc to compile the ABI probe")
    tmp = tmp_path_factory.mktemp("abi")
    (tmp / "probe.c").write_text(_probe_source())
    cc = subprocess.run(
        [gcc, "-Wall", "-Werror", f"-I{HEADER.parent}", "-o", str(tmp / "probe"), str(tmp / "probe.c")],
        capture_output=True,
        text=True,
    )
    assert cc.returncode == 0, f"the ABI probe does not compile:\n{cc.stderr}"
    out = subprocess.run([str(tmp / "probe")], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def _layout() -> list:
    params = []
    for c_name, ctype in abi.STRUCTS.items():
        params.append(pytest.param(f"sizeof {c_name}", ctypes.sizeof(ctype), id=f"sizeof-{c_name}"))
        for field, ftype in ctype._fields_:
            key = f"{c_name}.{field}"
            params.append(pytest.param(f"offsetof {key}", getattr(ctype, field).offset, id=f"offsetof-{key}"))
            params.append(pytest.param(f"sizeof {key}", ctypes.sizeof(ftype), id=f"sizeof-{key}"))
    return params


@pytest.mark.parametrize("key, expected", _layout())
def test_struct_layout(probe, key, expected):
    assert probe[key] == expected


@pytest.mark.parametrize("c_name", VERDICT_NAMES + DEFINES)
def test_constant(probe, c_name):
    py_name = _python_name(c_name)
    if c_name.startswith("MCR_V_") and c_name != "MCR_V_MAX":
        expected = abi.Verdict[c_name.removeprefix("MCR_V_")]
    else:
        assert hasattr(abi, py_name), f"{c_name} has no mirror abi.{py_name}"
        expected = getattr(abi, py_name)
    assert probe[c_name] == expected


def test_header_parsed():
    """The regexes above found what they should (an empty list would make the
    parametrized tests vacuous)."""
    assert {"MCR_ABI_VERSION", "MCR_MAX_OUTPUTS", "MCR_MAP_RULES", "MCR_PROG_RELAY", "MCR_FAMILY_IPV6"} <= set(DEFINES)
    assert "MCR_ABI_H" not in DEFINES
    assert set(STRING_DEFINES) <= set(DEFINES)


def test_every_struct_mirrored():
    """Each struct the header defines has a ctypes mirror in abi.STRUCTS,
    which is what the layout tests walk."""
    assert STRUCT_NAMES and set(STRUCT_NAMES) == set(abi.STRUCTS)


def test_verdicts_complete():
    """Every C verdict has a Python member and the reverse; values are dense
    0..MAX-1, since they index the verdict counter array."""
    assert {f"MCR_V_{v.name}" for v in abi.Verdict} | {"MCR_V_MAX"} == set(VERDICT_NAMES)
    assert sorted(abi.Verdict) == list(range(abi.VERDICT_MAX))


def test_python_constants_all_in_header():
    """No abi.py constant without a C counterpart (e.g. a map renamed only in
    Python)."""
    for name in dir(abi):
        if re.fullmatch(r"(ABI_VERSION|MAX_\w+|MAP_\w+|PROG_\w+|FAMILY_\w+)", name):
            assert f"MCR_{name}" in DEFINES, name


# The header's layout as the compiler sees it (every size, offset and
# constant the probe prints but the version itself), per ABI version. A
# layout change without a bump of MCR_ABI_VERSION fails the first check; a
# bump fails the second until the new layout is recorded here: pins, the
# state file and (later) an adopted datapath are refused across versions
# (pins.check_abi), which only protects anyone if the version moves.
LAYOUTS = {
    5: "9a6503aeb3f346d9f1eadef59868a0faa3239167bf08f4971c569891d10cb54e",
    6: "bfb9956efa1328d5379c0de87372acdac874feba58e538b24cbee138210e447e",  # mcr_rule.flags, mcr_tc_companion
    7: "112de68073d31e25b35b38abb6d09dfe46f7be509e2424615070d5cab652635d",  # mcr_output.ttl
    8: "4f4d07606d1bb751eacb5eeef84dc240ce15e039138c0b06879adc2d01ec4fb7",  # ranges, output stat keys
    9: "906a272ff4a1abc7c015fbc9aaf2bc10d749548049327f3c9559673d4651b7bc",  # unicast: output flags, unicast_rules
    10: "cf4cc9fe56bab021dcfcbef1d2ec5feba0fcb996e298829024de1d9571dfdf3a",  # stream health: rule flags, mcr_health
    11: "6def29f07f8d73b82c924f7609ba49cce4205a2ac22d8f4f8ee1e28ac7222a1b",  # policers, the loop guard
    12: "287aab002ff7f40a94f18b62872cc007af67891401227d690aed250347f07863",  # merged streams: mcr_rule.merge, mcr_merge
    13: "01c5b97b3f869f6e1e4ad4f5e7a34cbfbb9a902657755fcd79aa10c9b2f0425a",  # mcr_tx_direct: no egress program
    14: "ae1b933b573331ac01443ae6504faae471fe0f3ecda505bec0918d8377d66d62",  # the fast path of exact rules, MAC filter
    15: "378b17a54adb12e144d6f4fa45013e979d0b0c93f3a5bc6a35bc37552b3b0afb",  # the fast path counts a sent frame once
}


def _layout_digest(probe: dict) -> str:
    import hashlib

    layout = {k: v for k, v in probe.items() if k != "MCR_ABI_VERSION"}
    return hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()


def test_layout_change_bumps_the_abi_version(probe):
    digest = _layout_digest(probe)
    assert probe["MCR_ABI_VERSION"] == abi.ABI_VERSION
    recorded = LAYOUTS.get(abi.ABI_VERSION)
    assert recorded is not None, (f"MCR_ABI_VERSION {abi.ABI_VERSION} has no recorded layout: add "
                                  f"{abi.ABI_VERSION}: \"{digest}\" to LAYOUTS")
    assert recorded == digest, (f"bpf/mcr_abi.h's layout changed but MCR_ABI_VERSION is still {abi.ABI_VERSION}: "
                                "bump it (here, in bpf/mcr_abi.h and mcr_xdp/abi.py) and record the new layout")
