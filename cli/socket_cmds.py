"""The commands that only ask the running relay over its control socket:
status, rule add|del|list and one-shot stats.

They import no typer: main() (mcr_xdp_cli.app) runs the plain forms of
these commands straight from argv, because importing typer alone takes
50-100 ms, most of an answer's time (docs/benchmarks.md, "CLI"). The typer
commands call the same functions, so both ways print the same; anything
the plain parser does not know (help, --live, a typo) goes to typer.
"""

from __future__ import annotations

import json

from mcr_xdp import control

from .console import out


def status(socket_path: str | None, as_json: bool) -> None:
    st = control.request("status", {}, socket_path)
    if as_json:
        print(json.dumps(st, indent=2))
        return
    from . import render

    for renderable in render.status(st):
        out.print(renderable)


def rule_add(rules: list[str], socket_path: str | None) -> None:
    for r in control.request("rule.add", {"rules": rules}, socket_path):
        out.print(f"added rule {r['id']}: {r['rule']}", markup=False)


def rule_del(rule: str, socket_path: str | None) -> None:
    args = {"id": int(rule)} if rule.isdigit() else {"rule": rule}
    r = control.request("rule.del", args, socket_path)
    out.print(f"deleted rule {r['id']}: {r['rule']}", markup=False)


def rule_list(socket_path: str | None, as_json: bool) -> None:
    rules = control.request("rule.list", {}, socket_path)
    if as_json:
        print(json.dumps(rules, indent=2))
        return
    from . import render

    out.print(render.rule_list(rules))


def stats_json(socket_path: str | None) -> dict:
    """The running relay's snapshot; when no relay answers, the pinned maps
    of one that was killed (its program may still forward)."""
    try:
        return control.request("stats", {}, socket_path)
    except control.ControlError as exc:
        from mcr_xdp import pins, stats
        from mcr_xdp.errors import PrivilegeError

        if exc.exit_code == PrivilegeError.exit_code:
            raise  # not root: the pinned maps would say the same, less clearly
        pinned = pins.read_stats(control.instance_for(socket_path))
        if pinned is None:
            raise
        return stats.as_json(*pinned)


def stats_once(socket_path: str | None, as_json: bool) -> None:
    data = stats_json(socket_path)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    from mcr_xdp import stats

    from . import render

    snap, status = stats.from_json(data)
    rates = stats.rates_from_json(data.get("rates"))
    out.print(render.header(snap, rates, status))
    out.print(render.rules_live(snap, rates))
    for table in (render.snapshot_health(snap), render.merge_table(snap)):
        if table is not None:
            out.print(table)
    out.print(render.cpus_table(snap, rates))
    out.print(render.drops_table(snap, rates))
    if rates is not None:
        out.print(f"rates over the last {rates.interval:.1f} s", markup=False)


# command words -> (function, options it takes as flags, positional arguments:
# None none, 1 exactly one, "+" one or more)
_PLAIN = {
    ("status",): (status, {"--json"}, None),
    ("rule", "list"): (rule_list, {"--json"}, None),
    ("rule", "add"): (rule_add, set(), "+"),
    ("rule", "del"): (rule_del, set(), 1),
    ("stats",): (stats_once, {"--json"}, None),
}


def plain(argv: list[str]):
    """(function, kwargs) for a plain form of a socket command, else None:
    typer then parses argv, with its help and its errors."""
    words = next((w for w in _PLAIN if tuple(argv[:len(w)]) == w), None)
    if words is None:
        return None
    func, flags, positional = _PLAIN[words]
    kwargs: dict = {"socket_path": None, **{flag[2:]: False for flag in flags}}
    args: list[str] = []
    rest = iter(argv[len(words):])
    for word in rest:
        if word in flags:
            kwargs[word[2:]] = True
        elif word == "--socket":
            kwargs["socket_path"] = next(rest, None)
            if kwargs["socket_path"] is None:
                return None
        elif word.startswith("--socket="):
            kwargs["socket_path"] = word[len("--socket="):]
        elif word.startswith("-") or positional is None:
            return None
        else:
            args.append(word)
    if positional == 1 and len(args) != 1 or positional == "+" and not args:
        return None
    if "json" in kwargs:
        kwargs["as_json"] = kwargs.pop("json")
    if positional == 1:
        kwargs["rule"] = args[0]
    elif positional == "+":
        kwargs["rules"] = args
    return func, kwargs
