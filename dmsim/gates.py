"""--fail-on gates: `COUNTER OP THRESHOLD`, breached when the comparison holds.

    direct_map_level2_splits>0        absolute: the counter's value
    direct_map_level2_splits>+10      change against the first policy (value - first)
    DirectMap2M<-5%                   % change against the first policy
    nr_pte_tables>=+2.5%

OP is one of > >= < <= == !=. A threshold with a sign is relative: it needs a
reference, the first policy of `dmsim diff`; `dmsim replay` takes absolute
thresholds only. A percentage always has a sign. From a reference of 0, the %
change of a value above 0 is +inf (and -inf below; 0 stays 0).

Plain Python: no numpy, nothing from the core.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
       "==": operator.eq, "!=": operator.ne}

ABSOLUTE = "absolute"
DELTA = "change"  # value - reference
PERCENT = "percent"  # (value - reference) / reference * 100

_GATE_RE = re.compile(
    r"\s*(?P<counter>[A-Za-z_][A-Za-z0-9_]*)\s*"
    r"(?P<op>>=|<=|==|!=|>|<)\s*"
    r"(?P<sign>[+-]?)\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<pct>%?)\s*")


class GateError(ValueError):
    """A malformed --fail-on expression; the message quotes it."""


@dataclass(frozen=True)
class Gate:
    text: str
    counter: str
    op: str
    kind: str  # ABSOLUTE, DELTA or PERCENT
    threshold: float  # signed for DELTA and PERCENT

    @property
    def relative(self) -> bool:
        return self.kind != ABSOLUTE

    def measure(self, value: int, reference: int | None = None) -> float:
        """The number the threshold is compared with."""
        if self.kind == ABSOLUTE:
            return value
        if reference is None:
            raise ValueError(f"{self.text}: a relative gate needs a reference value")
        if self.kind == DELTA:
            return value - reference
        return percent_change(reference, value)

    def breached(self, value: int, reference: int | None = None) -> bool:
        return OPS[self.op](self.measure(value, reference), self.threshold)


def percent_change(reference: int, value: int) -> float:
    """(value - reference) / reference in %; ±inf from a reference of 0."""
    if reference == 0:
        return 0.0 if value == 0 else math.copysign(math.inf, value)
    return (value - reference) * 100.0 / abs(reference)


def parse_gate(text: str, counters: Iterable[str] | None = None,
               allow_relative: bool = True) -> Gate:
    """Parse one expression; GateError names the offending text and why."""
    m = _GATE_RE.fullmatch(text)
    if m is None:
        raise GateError(f"{text!r}: {_why(text)}")
    counter, op, sign, num, pct = m.group("counter", "op", "sign", "num", "pct")
    if counters is not None:
        known = tuple(counters)
        if counter not in known:
            raise GateError(f"{text!r}: unknown counter {counter!r} (known: {', '.join(known)})")
    threshold = float(num)
    if pct and not sign:
        raise GateError(f"{text!r}: a percentage is a change against the first policy and "
                        f"needs a sign: {counter}{op}+{num}% or {counter}{op}-{num}%")
    kind = PERCENT if pct else DELTA if sign else ABSOLUTE
    if sign == "-":
        threshold = -threshold
    if kind != ABSOLUTE and not allow_relative:
        raise GateError(f"{text!r}: {sign}{num}{pct} is relative to a first policy; only "
                        f"absolute thresholds work here (like {counter}{op}{num}); "
                        "compare policies with `dmsim diff`")
    return Gate(text.strip(), counter, op, kind, threshold)


def _why(text: str) -> str:
    if not text.strip():
        return "empty expression (expected COUNTER OP THRESHOLD, like direct_map_level2_splits>0)"
    m = re.search(r"=([<>])", text)
    if m:
        return f"`={m.group(1)}` is not an operator (use {m.group(1)}=)"
    if re.search(r"(?<![<>=!])=(?!=)", text):
        return "`=` is not an operator (use ==)"
    if not re.search(r">=|<=|==|!=|>|<", text):
        return "no operator (one of > >= < <= == !=)"
    if not re.match(r"\s*[A-Za-z_]", text):
        return "expected a counter name first (COUNTER OP THRESHOLD)"
    return ("expected COUNTER OP THRESHOLD: THRESHOLD is a number (absolute), +N/-N "
            "(change against the first policy) or +N%/-N%")


@dataclass(frozen=True)
class Breach:
    gate: Gate
    policy: str
    value: int
    reference_policy: str | None = None
    reference: int | None = None

    def message(self) -> str:
        g = self.gate
        if g.kind == ABSOLUTE:
            got = f"{g.counter} is {self.value}"
        else:
            change = self.value - self.reference
            got = (f"{g.counter} is {self.value} against {self.reference} under "
                   f"{self.reference_policy} ({change:+d}, "
                   f"{format_percent(percent_change(self.reference, self.value))})")
        where = f"{self.policy}: " if self.policy else ""
        return f"--fail-on {g.text}: {where}{got}"


def evaluate(gates: Sequence[Gate], names: Sequence[str],
             values: Mapping[str, Mapping[str, int]]) -> list[Breach]:
    """Check gates against values[policy][counter] for the policies in `names`
    (the first is the reference). Absolute gates apply to every policy, relative
    ones to every policy but the first. Breaches in gate order, then policy order."""
    out = []
    ref = names[0] if names else None
    for g in gates:
        for i, n in enumerate(names):
            v = values[n][g.counter]
            if g.kind == ABSOLUTE:
                if g.breached(v):
                    out.append(Breach(g, n, v))
            elif i > 0:
                r = values[ref][g.counter]
                if g.breached(v, r):
                    out.append(Breach(g, n, v, ref, r))
    return out


def format_percent(p: float) -> str:
    """LKP's %change: one decimal and a sign, `-75.0%`, `+0.0%`; `+inf%` from 0."""
    if math.isinf(p):
        return "+inf%" if p > 0 else "-inf%"
    s = f"{p:+.1f}%"
    return "+0.0%" if s == "-0.0%" else s
