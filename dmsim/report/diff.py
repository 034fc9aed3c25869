"""`dmsim diff`: counters of several policies on one trace, compared with the first.

Text is laid out like the 0-day bot's (LKP) comparison tables: one column of
values per policy, the change and %change against the first policy between
columns, the counter name last:

            baseline      change   %change        cpa_merge
    ---------------- ---------------------------------------
                  12          -9    -75.0%                3  direct_map_level2_splits
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import __version__
from ..gates import Breach, format_percent, percent_change
from ..policy import Policy

VALUE_WIDTH = 16  # LKP's value columns are as wide as a commit id's 16 characters


@dataclass
class DiffResult:
    policies: list[Policy]
    counter_names: tuple[str, ...]
    values: dict[str, dict[str, int]]  # policy name -> counter -> value
    meta: dict  # the trace's: path, sha256, format, events
    placement: str  # "recorded" or "simulate"
    warnings: list[str] = field(default_factory=list)
    breaches: list[Breach] = field(default_factory=list)
    gates: list[str] = field(default_factory=list)
    placement_reason: str = ""  # why this placement: the option, the default, the trace

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.policies]

    @property
    def reference(self) -> str:
        return self.names[0]

    def change(self, policy: str, counter: str) -> tuple[int, float]:
        ref = self.values[self.reference][counter]
        v = self.values[policy][counter]
        return v - ref, percent_change(ref, v)

    def to_json(self) -> dict:
        names = self.names
        changes = {}
        for c in self.counter_names:
            changes[c] = {}
            for n in names[1:]:
                d, p = self.change(n, c)
                changes[c][n] = {"change": d,
                                 "percent": None if p != p or abs(p) == float("inf")
                                 else round(p, 2)}
        m = self.meta
        return {
            "dmsim_version": __version__,
            "trace": {"path": m.get("path"), "sha256": m.get("sha256"),
                      "format": m.get("format"), "events": m.get("events")},
            "placement": self.placement,
            "placement_reason": self.placement_reason,
            "policies": [p.to_json() for p in self.policies],
            "reference": self.reference,
            "counters": {c: {n: self.values[n][c] for n in names} for c in self.counter_names},
            "changes": changes,
            "fail_on": {"gates": list(self.gates),
                        "breaches": [{"gate": b.gate.text, "policy": b.policy,
                                      "counter": b.gate.counter, "value": b.value,
                                      "reference": b.reference} for b in self.breaches]},
            "warnings": list(self.warnings),
        }


def table_text(d: DiffResult) -> str:
    """The LKP-style comparison table (no header block)."""
    names = d.names
    rows = []  # per counter: cells left to right (value, change, %change, value, ...)
    for c in d.counter_names:
        cells = [str(d.values[names[0]][c])]
        for n in names[1:]:
            delta, pct = d.change(n, c)
            cells += [f"{delta:+d}" if delta else "0", format_percent(pct), str(d.values[n][c])]
        rows.append(cells)
    widths = [max(VALUE_WIDTH, len(names[0]), *(len(r[0]) for r in rows))]
    for i, n in enumerate(names[1:]):
        k = 1 + 3 * i
        widths += [max(len("change"), *(len(r[k]) for r in rows)) + 4,
                   max(len("%change"), *(len(r[k + 1]) for r in rows)) + 3,
                   max(VALUE_WIDTH, len(n), *(len(r[k + 2]) for r in rows))]

    def line(cells: list[str], tail: str = "") -> str:
        s = " ".join(cell.rjust(w) for cell, w in zip(cells, widths, strict=True))
        return (s + "  " + tail).rstrip() if tail else s.rstrip()

    head = [names[0]]
    labels = [""]
    for n in names[1:]:
        head += ["", "", n]
        labels += ["change", "%change", ""]
    dashes = ["-" * widths[0]]
    for i in range(len(names) - 1):
        k = 1 + 3 * i
        dashes.append("-" * (widths[k] + widths[k + 1] + widths[k + 2] + 2))
    out = [line(head), " ".join(dashes)]
    if len(names) > 1:
        out.append(line(labels))
    out += [line(cells, c) for cells, c in zip(rows, d.counter_names, strict=True)]
    return "\n".join(out) + "\n"


def diff_text(d: DiffResult) -> str:
    """A header naming the trace, the placement and each policy, then the table."""
    m = d.meta
    out = [f"trace: {m.get('path')}",
           f"sha256: {m.get('sha256')}",
           f"placement: {d.placement}"
           + (f" ({d.placement_reason}, for every policy)" if d.placement_reason else ""),
           "policies:"]
    w = max(len(n) for n in d.names)
    for p in d.policies:
        what = f"alloc={p.alloc} merge={p.merge}"
        if p.collapse_free_pageblock:
            what += " collapse_free_pageblock"
        if p.alloc != "baseline":
            what += f" unmapped_users={','.join(p.unmapped_users) or '-'}"
        out.append(f"  {p.name.ljust(w)}  {what}" + (f"  {p.source}" if p.source else ""))
    return "\n".join(out) + "\n\n" + table_text(d)
