"""mcr-xdp gen: send a bounded, sequence-numbered multicast stream."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from mcr_xdp import gen as gen_mod

from .console import err, out


def gen(
    group: Annotated[str, typer.Option("--group", "-g", help="Multicast group to send to (IPv4 or IPv6).",
                                       show_default=False)],
    port: Annotated[int, typer.Option("--port", "-p", help="UDP destination port.", show_default=False)],
    iface: Annotated[str | None, typer.Option("--iface", "-i", help="Interface to send from (default: the route's).",
                                              show_default=False)] = None,
    rate: Annotated[float, typer.Option("--rate", help="Packets per second; 0 sends as fast as possible.")] = 1000.0,
    count: Annotated[int, typer.Option("--count", "-n", help="Packets to send, then stop.")] = 1000,
    size: Annotated[int, typer.Option("--size", help="UDP payload bytes (sequence header and digest included).")] = 64,
    ttl: Annotated[int, typer.Option("--ttl", help="IP TTL / hop limit; a relay needs 2 or more.")] = 16,
    first_seq: Annotated[int, typer.Option("--first-seq", help="Sequence number of the first packet.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """Send COUNT packets to GROUP:PORT at RATE, then print a summary.

    Payloads carry a sequence number and a digest: a receiver
    (python -m mcr_xdp.lab.traffic recv) counts lost, duplicated, reordered and
    corrupted packets. Needs no root. Ctrl-C stops early and still prints
    what was sent.

    Example: mcr-xdp gen --group 239.1.1.1 --port 5001 --iface eth0 --rate 5000 --count 50000
    """
    spec = gen_mod.GenSpec(group=group, port=port, count=count, rate=rate, size=size, iface=iface, ttl=ttl,
                           first_seq=first_seq)
    spec = gen_mod.validate(spec)
    pace = "as fast as possible" if spec.rate == 0 else f"at {spec.rate:g} pps"
    err.print(f"mcr-xdp: sending {spec.count} packet(s) of {spec.size} B to {gen_mod.endpoint(spec.group, spec.port)} "
              f"{pace}{f' via {spec.iface}' if spec.iface else ''}", markup=False)
    result = gen_mod.run(spec)
    if as_json:
        print(json.dumps(result.as_dict()), flush=True)
    else:
        out.print(summary(result), markup=False)
    if result.interrupted:
        raise typer.Exit(130)


def summary(result: gen_mod.GenResult) -> str:
    s = result.spec
    via = f" via {s.iface}" if s.iface else ""
    seqs = f"sequence {s.first_seq}..{result.last_seq}" if result.sent else "nothing sent"
    head = "interrupted: sent" if result.interrupted else "sent"
    return (f"{head} {result.sent} of {s.count} packets ({result.payload_bytes} payload bytes) to "
            f"{gen_mod.endpoint(s.group, s.port)}{via} in {result.seconds:.3f} s, {result.pps:.0f} pps; {seqs}")
