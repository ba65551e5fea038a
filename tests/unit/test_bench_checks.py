"""python -m bench checks (bench/checks.py): every case is measured on the
path it names, and the report names each."""

from __future__ import annotations

import json

from bench import checks


def test_every_case_is_measured_and_reported():
    doc = checks.measure(rounds=1, frames=50)
    assert set(doc["ns"]) == set(checks.CASES)
    assert all(r["median_ns"] > 0 for r in doc["ns"].values())
    text = checks.render(doc)
    assert all(label in text for label in checks.LABELS.values())
    json.dumps(doc)
