"""End-to-end fixtures: a fresh namespace chain per test, a relay started
through the real CLI inside it, and cleanup that runs even when the test
fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcr_xdp.lab.netns import Chain, existing_namespaces, unique_prefix
from mcr_xdp.lab.proc import Proc

pytestmark = pytest.mark.e2e


@pytest.fixture
def chain(request):
    # param: the number of outputs, or a dict of Chain's keyword arguments.
    param = getattr(request, "param", 1)
    topo = Chain(unique_prefix("mcrt"), **(param if isinstance(param, dict) else {"outputs": param}))
    procs: list[Proc] = []
    topo.procs = procs
    try:
        yield topo.build()
    finally:
        for proc in reversed(procs):
            proc.stop()
        # A relay killed on purpose leaves its control socket and state file
        # behind (and with a socket of its own, an instance NAME@...).
        instance = f"netns-{topo.relay_in.ns}"
        for left in [Path(f"/run/mcr-xdp/{instance}.sock"), *Path("/run/mcr-xdp").glob(f"{instance}.state.json"),
                     *Path("/run/mcr-xdp").glob(f"{instance}@*.state.json")]:
            left.unlink(missing_ok=True)
        topo.close()
        left = {ns for ns in existing_namespaces() if ns.startswith(topo.prefix + "-")}
        assert not left, f"namespaces left behind: {left}"
