"""bench cli's report, from the run docs/benchmarks.md quotes: the verdicts
follow the numbers."""

from __future__ import annotations

import json
from pathlib import Path

from bench import cli

RUN = json.loads((Path(__file__).resolve().parents[2] / "docs" / "benchmarks-cli.json").read_text())


def test_report_of_the_documented_run():
    text = cli.render(RUN)
    assert "| `status` | 92 (83-151) | 108 (92-130) |" in text
    assert "meets the 150 ms target" in text and "meets the 1.5 s target" in text


def test_a_slow_attach_misses_the_target():
    slow = json.loads(json.dumps(RUN))
    slow["attach_s"]["median"] = 1.51
    assert "MISSES the 1.5 s target" in cli.render(slow)


def test_a_slow_command_misses_the_target():
    slow = json.loads(json.dumps(RUN))
    slow["commands"]["venv"]["status"]["median"] = 151.0
    assert "slowest median 151 ms: MISSES" in cli.render(slow)
