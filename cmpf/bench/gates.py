"""``--fail-on`` rules: parse them, merge them with the tolerance table's defaults, check values.

A rule is ``METRIC OP BOUND`` (``rel>1e-4``, ``cos<0.9999``, ``pq_drop>=0.1``) and *fails* when the
comparison holds; rules are separated by commas. A rule given on the command line replaces the
default of the same metric (``cmpf.tolerances.default_gates``); the other defaults stay in force.
The metrics and their levels are ``cmpf.tolerances.GATE_LEVELS``.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Mapping, Optional

from cmpf.errors import InputError
from cmpf.tolerances import GATE_LEVELS, default_gates

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_RULE = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|>|<)\s*([-+0-9.eEinf]+)\s*$")


@dataclass(frozen=True)
class Rule:
    metric: str  # a key of GATE_LEVELS
    op: str  # ">", ">=", "<", "<="
    bound: float

    @property
    def level(self) -> str:
        return GATE_LEVELS[self.metric]

    def fails(self, value: Optional[float]) -> bool:
        """True when the comparison holds; NaN always fails, None (not measured) never does."""
        if value is None:
            return False
        return math.isnan(value) or _OPS[self.op](value, self.bound)

    def margin(self, value: float) -> float:
        """How far ``value`` is past the bound (positive: by how much it breaches)."""
        return value - self.bound if self.op.startswith(">") else self.bound - value

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


def parse_rules(text: Optional[str]) -> list[Rule]:
    """``'rel>1e-4,cos<0.9999'`` → rules; a malformed rule is an ``InputError`` naming it."""
    rules = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        m = _RULE.match(part)
        if m is None:
            raise InputError(f"--fail-on: cannot parse rule {part.strip()!r}; write METRIC OP BOUND, e.g. "
                             f"'rel>1e-4,cos<0.9999,pq_drop>0.1'")
        metric, op, bound = m.groups()
        if metric not in GATE_LEVELS:
            raise InputError(f"--fail-on: unknown metric {metric!r} in {part.strip()!r}; choose from "
                             f"{', '.join(GATE_LEVELS)}")
        try:
            rules.append(Rule(metric, op, float(bound)))
        except ValueError:
            raise InputError(f"--fail-on: bound {bound!r} of {part.strip()!r} is not a number") from None
    return rules


def resolve_rules(overrides: list[Rule], backend: str, precision: str) -> list[Rule]:
    """The defaults of (backend, precision), with each overridden metric replaced by its rule(s)."""
    try:
        defaults = default_gates(backend, precision)
    except KeyError as e:
        raise InputError(f"no tolerance row for backend {backend} at {precision}: {e.args[0]}") from None
    given = {r.metric for r in overrides}
    return [Rule(m, op, b) for m, (op, b) in defaults.items() if m not in given] + list(overrides)


@dataclass(frozen=True)
class Breach:
    """A rule that failed: which value (``where``: a graph output, an image, the dataset) and by how much."""

    candidate: str
    rule: str
    metric: str
    level: str
    where: str
    value: Optional[float]
    margin: Optional[float]

    def __str__(self) -> str:
        value = "nan" if self.value is None or math.isnan(self.value) else f"{self.value:.4g}"
        by = "" if self.margin is None or math.isnan(self.margin) else f" (past the bound by {self.margin:.3g})"
        return f"{self.candidate}: {self.where} {self.metric}={value} breaks {self.rule}{by}"


def check(candidate: str, rules: list[Rule], values: Mapping[str, Mapping[str, Optional[float]]]) -> list[Breach]:
    """Breaches of ``rules`` among ``values`` ({metric: {where: value}}); metrics not measured pass."""
    breaches = []
    for rule in rules:
        for where, value in values.get(rule.metric, {}).items():
            if rule.fails(value):
                nan = value is None or math.isnan(value)
                breaches.append(Breach(candidate, str(rule), rule.metric, rule.level, where, value,
                                       None if nan else rule.margin(value)))
    return breaches
