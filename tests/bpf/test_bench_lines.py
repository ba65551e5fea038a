"""python -m bench lines (bench/lines.py): the JIT image's offsets map to
the datapath's source lines through the kernel's line info, and samples
are charged to the line they fall in. perf itself is the benchmark's
business (make bench-deps); this needs only the kernel."""

from __future__ import annotations

import pytest

from bench import lines
from bench.lookup import _exact_rules, _install
from mcr_xdp import loader

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def table():
    dp = loader.Datapath()
    try:
        _install(dp, _exact_rules(3))
        yield lines.line_table(dp.prog_fd), dp.prog_fd
    finally:
        dp.close()


def test_every_offset_is_in_the_image_and_names_a_source_line(table):
    rows, fd = table
    jited = lines._info(fd, lines._ProgInfo()).jited_prog_len
    offsets = [off for off, _ in rows]
    assert offsets == sorted(offsets) and offsets[0] == 0 and offsets[-1] < jited
    files = {text.split(":", 1)[0] for _, text in rows}
    assert {"relay.c", "forward.h", "parsing.h", "rewrite.h"} <= files
    assert any("mcr_tx_direct.redirect_map" in text for _, text in rows)  # the fast path's redirect


def test_samples_go_to_the_line_they_fall_in(table):
    rows, _ = table
    a = rows[0][0]
    b = next(off for off, _ in rows if off > a)
    # Lines that share an offset (no instruction of their own): the last one owns it.
    first, second = ([text for off, text in rows if off == x][-1] for x in (a, b))
    got = lines.attribute({a: 3, b - 1: 2, b: 5}, rows)
    assert (got[first], got[second], sum(got.values())) == (5, 5, 10)


def test_the_report_lists_symbols_and_lines():
    doc = {"rules": 1000, "seconds": 8.0, "samples": 10, "program_samples": 4,
           "symbols": [[0.4, "bpf_prog_x_mcr_relay"]],
           "lines": [[0.5, "relay.c:327: action = ..."], [0.25, "forward.h:166: diff |= x[i] ^ y[i];"]]}
    text = lines.render(doc)
    assert "| 40.0% | bpf_prog_x_mcr_relay |" in text and "| 50.0% | `relay.c:327: action = ...` |" in text
    assert "| 25.0% | `forward.h:166: diff \\|= x[i] ^ y[i];` |" in text  # a pipe would split the cell
