"""What a running relay offers over its control socket, and its SIGHUP
reload: a table of operations over the Relay facade, returning plain JSON
data."""

from __future__ import annotations

import os

from . import config as config_mod
from . import stats
from .control import RequestError
from .errors import McrError, RuleError
from .relay import Relay
from .rules import input_of, parse_rule, parse_rules


class Service:
    def __init__(self, relay: Relay, config_path: str | None = None):
        self.relay = relay
        self.config_path = config_path
        self.runtime: set = set()  # keys of rules added over the socket (rule.add), not from the file
        # The daemon's last sample (each tick) and the rates up to it: status
        # shows those, stats its own against the sample.
        self.sample: stats.Snapshot | None = None
        self.tick_rates: stats.Rates | None = None
        self.ops = {
            "status": self.status,
            "rule.list": self.rule_list,
            "rule.add": self.rule_add,
            "rule.del": self.rule_del,
            "stats": self.stats,
            "reload": self.reload,
        }

    def handle(self, op: str, args: dict):
        fn = self.ops.get(op)
        if fn is None:
            raise RequestError(f"unknown operation {op!r} (known: {', '.join(sorted(self.ops))})")
        return fn(**_kwargs(op, args))

    def sampled(self, snap: stats.Snapshot) -> None:
        """The daemon's snapshot of this tick."""
        if self.sample is not None and snap.timestamp > self.sample.timestamp:
            self.tick_rates = stats.rate(self.sample, snap)
        self.sample = snap

    def status(self) -> dict:
        """The relay's status, its pid, and each rule's rates over the last
        tick (none before the second)."""
        st = {**self.relay.status(), "config": self.config_path, "pid": os.getpid()}
        rates = self.tick_rates
        if rates is not None:
            st["rates_seconds"] = round(rates.interval, 3)
            st["rules"] = [{**r, "pps": rates.rule_pps.get(r["id"], 0.0), "bps": rates.rule_bps.get(r["id"], 0.0)}
                           for r in st["rules"]]
        return st

    def rule_list(self) -> list[dict]:
        return self.relay.status()["rules"]

    def rule_add(self, rules: list) -> list[dict]:
        if not isinstance(rules, list) or not rules or not all(isinstance(r, str) for r in rules):
            raise RequestError("rule.add takes 'rules': a non-empty list of rule strings")
        default = self.relay.inputs[0] if len(self.relay.inputs) == 1 else None
        parsed = [leg for text in rules for leg in parse_rules(text, input_of(text) or default)]
        added = self.relay.add_rules(parsed)
        self.runtime.update(r.rule.key for r in added)
        return [{"id": r.rule_id, "rule": str(r.rule)} for r in added]

    def rule_del(self, id: int | None = None, rule: str | None = None) -> dict:
        if rule is not None:
            default = self.relay.inputs[0] if len(self.relay.inputs) == 1 else None
            found = self.relay.find_rule(parse_rule(rule, input_of(rule) or default))
            if found is None:
                raise RuleError(f"no rule {rule!r}")
            id = found.rule_id
        if not isinstance(id, int) or isinstance(id, bool):
            raise RequestError("rule.del takes 'id' (a number) or 'rule' (its text)")
        removed = self.relay.delete_rule(id)
        return {"id": removed.rule_id, "rule": str(removed.rule)}

    def stats(self) -> dict:
        """The counters now, with rates since the last sample when it is at
        least a second old, else over the tick before it: a one-shot
        `mcr-xdp stats` shows real rates without waiting."""
        cur = self.relay.snapshot()
        rates = self.tick_rates
        if self.sample is not None and cur.timestamp - self.sample.timestamp >= 1.0:
            rates = stats.rate(self.sample, cur)
        return stats.as_json(cur, self.relay.status(), rates)

    def reload(self) -> dict:
        """Re-read the config file and apply only the difference. The file is
        the rule set: rules added at runtime (rule.add) and not in it go,
        and the result names them ("runtime_removed"); "interval" is the
        file's."""
        if not self.config_path:
            raise RequestError("this relay was started without --config: nothing to reload")
        cfg = config_mod.load(self.config_path)
        missing = [i for i in cfg.interfaces if i not in self.relay.inputs]
        if missing:
            raise RuleError(f"{self.config_path}: new input interfaces {', '.join(missing)} need a restart")
        changed = [i for i in cfg.interfaces if (i in cfg.no_join) != (i in self.relay.config.no_join)]
        if changed:
            raise RuleError(f"{self.config_path}: the join setting of {', '.join(changed)} changed: that needs "
                            "a restart")
        try:
            removed, added, changed = self.relay.replace_rules(cfg.rules)
        except McrError as exc:
            raise config_mod.ConfigError(f"{self.config_path}: {exc}") from None
        runtime_removed = [str(r) for r in removed if r.key in self.runtime]
        self.runtime -= {r.key for r in removed}
        return {"removed": [str(r) for r in removed], "added": [str(r) for r in added],
                "changed": [str(r) for r in changed], "runtime_removed": runtime_removed,
                "interval": cfg.interval}


def _kwargs(op: str, args: dict) -> dict:
    allowed = {"rule.add": {"rules"}, "rule.del": {"id", "rule"}}.get(op, set())
    unknown = set(args) - allowed
    if unknown:
        raise RequestError(f"{op} does not take {', '.join(sorted(unknown))}")
    return args
