"""python -m bench ab (bench/ab.py): another revision's datapath is built
from git and timed against this checkout's, round by round."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from bench import ab
from mcr_xdp.errors import McrError

pytestmark = pytest.mark.root


def _in_git() -> bool:
    return shutil.which("git") is not None and subprocess.run(
        ["git", "-C", str(ab.ROOT), "rev-parse", "HEAD"], capture_output=True).returncode == 0


needs_git = pytest.mark.skipif(not _in_git(), reason="needs a git checkout (an installed package has none)")


@needs_git
def test_a_revision_against_itself():
    """HEAD's committed bpf/ against the checkout's: both load, both
    forward the frame (_time refuses another action), and the paired
    difference is a number between the two medians' spread."""
    doc = ab.measure("HEAD", rules=3, rounds=4)
    assert (doc["rules"], doc["rounds"], doc["base"]) == (3, 4, "HEAD")
    for key in ("base_ns", "head_ns"):
        lo, mid, hi = doc[key]
        assert 0 < lo <= mid <= hi
    text = ab.render(doc)
    assert "this checkout less HEAD, paired by round" in text and "4 alternating rounds" in text


@needs_git
def test_an_unknown_revision_is_an_error_not_a_traceback():
    with pytest.raises(McrError, match="git archive no-such-rev"):
        ab.base_image("no-such-rev")


def test_fewer_than_two_rounds_is_a_usage_error(capsys):
    """Quartiles need two rounds: --repeats 1 is refused before anything
    loads, never a StatisticsError traceback at the end."""
    from bench.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["ab", "--base", "HEAD", "--repeats", "1"])
    assert info.value.code == 2 and "--repeats must be 2 or more" in capsys.readouterr().err
