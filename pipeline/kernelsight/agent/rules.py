"""Rules: the signal-interpretation tables of docs/design.md as data (rules.toml).

A rule fires when all of its `when` conditions hold and, if it has
`when_any`, at least one of those (an entry `A and B` holds when both do);
once its observation is open it stays active until all of its `clear`
conditions hold: two thresholds, so a value hovering at the edge does not flap.

Conditions are `LEFT OP RIGHT`, OP one of < <= > >= ==, each side a number or
`[NUMBER *] TERM`, TERM one of:
    feature          the feature's current value
    z(feature)       z-score against the learned baseline
    rz(feature)      robust z-score (median/MAD)
    dz(feature)      robust z-score, or +inf while no baseline is learned for the feature:
                     "and off this host's own normal", which before any baseline
                     leaves the decision to the rule's host-normalised floor
    mean(feature)    the baseline mean
    slope(feature)   change per minute over the last minute of the agent's history
    slope(feature,S) the same over the last S seconds (needs history covering 80 % of S)
    rule(id)         1 when rule `id` is active this interval, else 0
    risk(oom)        OOM forecast level: 0 NORMAL, 1 ELEVATED, 2 WARNING, 3 CRITICAL
    cores            the number of CPUs
    mem_gb           the host's RAM in GiB (MemTotal)
A condition over a value that is missing (null feature, no baseline) is false:
no data is never evidence; so a `clear` condition over missing data counts as met.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

RULES_FILE = Path(__file__).with_name("rules.toml")
SEVERITIES = ("low", "medium", "high", "critical")
CATEGORIES = ("syscall", "scheduler", "memory", "io", "network", "load")

_OPS = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__, "==": float.__eq__}
_COND = re.compile(r"^\s*(.+?)\s*(<=|>=|==|<|>)\s*(.+?)\s*$")
_SIDE = re.compile(r"^(?:(-?[0-9.eE+-]+)\s*\*\s*)?([A-Za-z_][A-Za-z0-9_]*)(?:\(([A-Za-z0-9_]+)(?:,([0-9.]+))?\))?$")
_NUMBER = re.compile(r"^-?[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?$")
_FUNCS = {"z", "rz", "dz", "mean", "slope", "rule", "risk"}
HOST_TERMS = ("cores", "mem_gb")  # properties of the machine, not features


class RuleError(ValueError):
    pass


@dataclass(frozen=True)
class Term:
    factor: float
    func: str | None  # None: plain feature / constant name
    name: str | None  # feature, rule id, or None for a bare number
    number: float | None = None
    span_s: float | None = None  # slope(feature, S)

    def features(self) -> set[str]:
        if self.name and self.func in (None, "z", "rz", "dz", "mean", "slope") and self.name not in HOST_TERMS:
            return {self.name}
        return set()


@dataclass(frozen=True)
class Condition:
    text: str
    left: Term
    op: str
    right: Term


def _parse_side(s: str, where: str) -> Term:
    s = s.strip()
    if _NUMBER.match(s):
        return Term(1.0, None, None, float(s))
    m = _SIDE.match(s.replace(" ", ""))
    if not m:
        raise RuleError(f"{where}: cannot read {s!r}")
    factor = float(m.group(1)) if m.group(1) else 1.0
    if m.group(3) is not None:
        func, name = m.group(2), m.group(3)
        if func not in _FUNCS:
            raise RuleError(f"{where}: unknown function {func}()")
        if m.group(4) is not None and func != "slope":
            raise RuleError(f"{where}: only slope() takes a second argument")
        return Term(factor, func, name, span_s=float(m.group(4)) if m.group(4) else None)
    return Term(factor, None, m.group(2))


def parse_condition(text: str, where: str = "rule") -> Condition:
    m = _COND.match(text)
    if not m:
        raise RuleError(f"{where}: a condition is LEFT OP RIGHT, got {text!r}")
    return Condition(text, _parse_side(m.group(1), where), m.group(2), _parse_side(m.group(3), where))


@dataclass
class Rule:
    id: str
    label: str
    category: str
    observation_type: str
    severity: str
    metric: str
    summary: str
    hints: list[str]
    when: list[Condition]
    when_any: list[tuple[Condition, ...]]  # one of these holds: each entry, all of its conditions
    clear: list[Condition]
    correlated: list[tuple[str, Condition]]
    attribution: list[str] = field(default_factory=list)
    extra: str | None = None  # a second feature the summary quotes as {extra}
    # A consequence or a context of other faults (a slow trend, a read/write latency ratio): while
    # another incident is open it is that incident's evidence, and it opens its own observation only
    # on a quiet host.
    secondary: bool = False
    # "Transient (< 1 min): log, don't alert" (the design's persistence bands): a rule whose
    # condition also happens in normal work (a parallel build saturating the CPUs) stays at
    # severity low until it has held this long, then takes its own severity.
    alert_after_s: float = 0.0
    # Labels whose conditions this rule's condition causes (memory pressure makes I/O slow; a fork
    # storm oversubscribes the CPUs): while both hold they are one incident, this rule's.
    explains: list[str] = field(default_factory=list)

    def features(self) -> set[str]:
        out = {self.metric} | ({self.extra} if self.extra else set())
        for c in self.when + [c for group in self.when_any for c in group] + self.clear + [c for _, c in self.correlated]:
            out |= c.left.features() | c.right.features()
        return out


@dataclass
class Settings:
    # No window or interval here: they are FEATURE_WINDOW_S and FEATURE_STEP_S
    # (features/catalog.py), shared with the stored vectors and baselines.
    clear_after_s: float = 10.0
    reopen_within_s: float = 60.0
    history_s: float = 900.0
    anomaly_z: float = 4.0
    anomaly_min_rel_change: float = 0.5
    anomaly_max_open: int = 5
    # A deviation with no rule behind it opens an observation of its own only when it is this
    # large and has held this long with no incident open (or just ended) to explain it;
    # otherwise it is evidence of the incident it coincides with.
    anomaly_open_z: float = 8.0
    anomaly_sustain_s: float = 30.0
    # A rule that another rule explains (a consequence) waits at most this long before opening on
    # its own, so that the cause, which may cross its threshold a step or two later, can take it in
    # ... but only while a cause is in sight: some rule that explains it would fire on this step's
    # values carried cause_lookahead_steps steps ahead at their last step's pace (0: always wait).
    consequence_wait_s: float = 9.0
    cause_lookahead_steps: float = 2.0
    auto_baseline_after_s: float = 600.0
    # Learned from this much stored history (8 days: every hour of the week twice over a week
    # boundary), read one vector in k so that at most BASELINE_MAX_VECTORS are held at once.
    auto_baseline_span_s: float = 691200.0
    # A baseline the agent learned itself is learned again this often (0: never), leaving out
    # every incident; one an operator learned (`ks-features baseline learn`) stays until replaced.
    baseline_relearn_s: float = 86400.0
    # A lone deviation this extreme (both z and robust z, and this many times its mean) is
    # critical: "9.6 standard deviations above normal: 5/s vs typical 0.2/s" (the design's example).
    anomaly_critical_z: float = 9.5
    anomaly_critical_ratio: float = 10.0


@dataclass
class RuleSet:
    settings: Settings
    rules: list[Rule]

    def by_id(self, rid: str) -> Rule:
        return next(r for r in self.rules if r.id == rid)

    def explains(self) -> dict[str, set[str]]:
        """Cause label -> the labels it explains (rules' `explains`, merged per label)."""
        out: dict[str, set[str]] = {}
        for r in self.rules:
            if r.explains:
                out.setdefault(r.label, set()).update(r.explains)
        return out


_MOVED = {"window_s": "FEATURE_WINDOW_S", "interval_s": "FEATURE_STEP_S"}


def _settings(raw: dict, where: str) -> Settings:
    known = set(Settings.__dataclass_fields__)
    for key in raw:
        if key in _MOVED:
            raise RuleError(f"{where} [settings]: {key} is not a rules setting; it is {_MOVED[key]} in "
                            "kernelsight/features/catalog.py, shared with the stored vectors and baselines")
        if key not in known:
            raise RuleError(f"{where} [settings]: unknown setting {key!r} (known: {', '.join(sorted(known))})")
    return Settings(**raw)


def load_rules(path: Path | None = None) -> RuleSet:
    path = path or RULES_FILE
    doc = tomllib.loads(Path(path).read_text())
    settings = _settings(doc.get("settings", {}), Path(path).name)
    rules = []
    ids = set()
    for i, r in enumerate(doc.get("rule", [])):
        where = f"{Path(path).name} rule #{i + 1} ({r.get('id', '?')})"
        try:
            rid = r["id"]
            if rid in ids:
                raise RuleError(f"{where}: duplicate id")
            ids.add(rid)
            if r["category"] not in CATEGORIES:
                raise RuleError(f"{where}: category must be one of {CATEGORIES}")
            if r.get("severity", "medium") not in SEVERITIES:
                raise RuleError(f"{where}: severity must be one of {SEVERITIES}")
            when = [parse_condition(c, where) for c in r.get("when", [])]
            when_any = [tuple(parse_condition(part, where) for part in c.split(" and "))
                        for c in r.get("when_any", [])]
            if not when and not when_any:
                raise RuleError(f"{where}: needs `when` or `when_any`")
            rules.append(Rule(
                id=rid, label=r["label"], category=r["category"],
                observation_type=r.get("type", "symptom"), severity=r.get("severity", "medium"),
                metric=r["metric"], summary=r["summary"], hints=list(r["hints"]),
                when=when, when_any=when_any,
                clear=[parse_condition(c, where) for c in r.get("clear", [])],
                correlated=[(text, parse_condition(cond, where)) for text, cond in r.get("correlated", {}).items()],
                attribution=list(r.get("attribution", [])),
                extra=r.get("extra"),
                secondary=bool(r.get("secondary", False)),
                alert_after_s=float(r.get("alert_after_s", 0.0)),
                explains=list(r.get("explains", [])),
            ))
        except KeyError as e:
            raise RuleError(f"{where}: missing key {e}") from None
    rs = RuleSet(settings, rules)
    _check_explains(rs, Path(path).name)
    return rs


def _check_explains(rs: RuleSet, where: str) -> None:
    """Every explained label exists, and no label explains itself through a chain (a cycle would
    leave no cause to open the incident)."""
    labels = {r.label for r in rs.rules}
    graph = rs.explains()
    for cause, effects in graph.items():
        unknown = sorted(effects - labels)
        if unknown:
            raise RuleError(f"{where}: {cause!r} explains unknown label(s) {unknown}")
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(label: str, path: list[str]) -> None:
        if state.get(label) == 2:
            return
        if state.get(label) == 1:
            cycle = path[path.index(label):] + [label]
            raise RuleError(f"{where}: `explains` cycle: {' -> '.join(cycle)}")
        state[label] = 1
        for nxt in sorted(graph.get(label, ())):
            visit(nxt, path + [label])
        state[label] = 2

    for label in sorted(graph):
        visit(label, [])


class Context:
    """What a condition can see this interval."""

    def __init__(self, values: dict, baseline: dict, history, active: set[str], cores: int, oom_risk: int,
                 mem_gb: float | None = None):
        self.values = values
        self.mem_gb = mem_gb
        self.baseline = baseline  # feature -> {"mean","std","median","mad"}
        self.history = history  # callable(feature, span_s | None) -> slope per minute or None
        self.active = active
        self.cores = cores
        self.oom_risk = oom_risk

    def z(self, name: str, robust: bool = False) -> float | None:
        v, b = self.values.get(name), self.baseline.get(name)
        if v is None or not b:
            return None
        if robust:
            mad = b.get("mad")
            return 0.6745 * (v - b["median"]) / mad if mad else None
        std = b.get("std")
        return (v - b["mean"]) / std if std else None

    def term(self, t: Term) -> float | None:
        if t.number is not None:
            return t.number
        if t.func is None:
            v = self.cores if t.name == "cores" else self.mem_gb if t.name == "mem_gb" else self.values.get(t.name)
        elif t.func == "z":
            v = self.z(t.name)
        elif t.func == "rz":
            v = self.z(t.name, robust=True)
        elif t.func == "dz":
            v = self.z(t.name, robust=True) if self.baseline.get(t.name) else math.inf
        elif t.func == "mean":
            v = (self.baseline.get(t.name) or {}).get("mean")
        elif t.func == "slope":
            v = self.history(t.name, t.span_s)
        elif t.func == "rule":
            v = 1.0 if t.name in self.active else 0.0
        else:  # risk(oom)
            v = float(self.oom_risk)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        return t.factor * float(v)

    def missing(self, c: Condition) -> bool:
        return self.term(c.left) is None or self.term(c.right) is None

    def holds(self, c: Condition) -> bool:
        a, b = self.term(c.left), self.term(c.right)
        return a is not None and b is not None and _OPS[c.op](a, b)


def evaluate(rule: Rule, ctx: Context, is_open: bool) -> bool:
    """Fires on `when`; once open, holds until `clear` (hysteresis)."""
    fired = all(ctx.holds(c) for c in rule.when) and (
        any(all(ctx.holds(c) for c in group) for group in rule.when_any) if rule.when_any else True)
    if fired or not is_open:
        return fired
    if not rule.clear:
        return False
    # A clear condition over missing data counts as met: no data is no evidence that the
    # condition goes on (a device gone idle has no await; a tracer that stopped has no p50).
    return not all(ctx.holds(c) or ctx.missing(c) for c in rule.clear)
