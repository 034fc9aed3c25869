"""The result of a replay as plain data: what every output format renders."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import __version__
from ..core import constants as C
from ..simulate import Replayed, counter_value
from ..trace.events import EV_VCPA, SAMPLE

COUNTERS = ("direct_map_level2_splits", "direct_map_level3_splits",
            "DirectMap4k", "DirectMap2M", "DirectMap1G")
POLICY_COUNTERS = ("direct_map_level1_merges", "direct_map_level2_merges",
                   "direct_map_level2_collapses", "direct_map_level3_collapses")


@dataclass
class CheckRow:
    step: str
    counter: str
    kernel: int
    simulated: int  # at the marker that reports the kernel's value
    line: int
    window: tuple[int, int] | None = None  # simulated at the `sample` marker and at this one

    @property
    def in_window(self) -> bool:
        """The kernel read its counter while the direct map was between these two
        states (the counters only move one way inside a window in 6.1)."""
        if self.window is None:
            return False
        lo, hi = sorted(self.window)
        return lo <= self.kernel <= hi

    @property
    def match(self) -> bool:
        return self.kernel == self.simulated or self.in_window


@dataclass
class Result:
    counters: dict[str, int]
    boot: dict[str, int]
    stats: dict[str, int]
    checks: list[CheckRow]
    meta: dict
    gbpages: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def mismatches(self) -> list[CheckRow]:
        return [c for c in self.checks if not c.match]

    @property
    def incomplete(self) -> list[str]:
        """Why the trace cannot be the whole recording (events lost or cut off): a
        replay of it proves nothing, so --verify fails."""
        return trace_incomplete(self.meta)

    def to_json(self) -> dict:
        m = self.meta
        return {
            "dmsim_version": __version__,
            "input": {"path": m.get("path"), "sha256": m.get("sha256"), "format": m.get("format"),
                      "events": m.get("events"), "skipped_lines": m.get("skipped_lines", 0)},
            "counters": self.counters,
            "boot": self.boot,
            "stats": self.stats,
            "checkpoints": [{"step": c.step, "counter": c.counter, "kernel": c.kernel,
                             "simulated": c.simulated, "match": c.match,
                             **({"window": list(c.window)} if c.window else {})}
                            for c in self.checks],
            "verify": {"checked": len(self.checks), "mismatches": len(self.mismatches),
                       "incomplete": self.incomplete},
            "warnings": self.warnings,
        }


def trace_incomplete(meta: dict) -> list[str]:
    """The reader's evidence that events are missing from the trace."""
    out = []
    if meta.get("lost_events"):
        out.append(f"the trace says {meta['lost_events']} events were lost "
                   "(CPU:N [LOST M EVENTS] lines): the replay cannot be exact")
    if meta.get("missing_entries"):
        kept = meta["entries"][0]
        out.append(f"the trace holds {kept - meta['missing_entries']} of the {kept} entries its "
                   "header counts (entries-in-buffer): it is cut short, the replay cannot be exact")
    return out


def build_result(r: Replayed) -> Result:
    t = r.trace
    checks = []
    for cp in t.checkpoints:
        if cp.counter == SAMPLE:
            continue
        sim = counter_value(r.snapshots[cp.index], cp.counter)
        window = None
        if cp.window >= 0:
            window = (counter_value(r.snapshots[cp.window], cp.counter), sim)
        checks.append(CheckRow(cp.step, cp.counter, cp.value, sim, cp.line, window))
    c = r.counters
    stats = {"cpa_calls": int(c[C.NR_CPA_CALLS]), "cpa_faults": int(c[C.NR_CPA_FAULTS]),
             "cpa_efault": int(c[C.NR_CPA_EFAULT]), "pte_tables": int(c[C.NR_PTE_TABLES]),
             "handle_errors": int(c[C.NR_HANDLE_ERRORS]),
             "pte_table_alloc_failures": int(c[C.NR_PT_ALLOC_FAIL]),
             "pte_tables_freed": int(c[C.NR_PT_FREED]),
             "unmapped_pageblocks": int(c[C.NR_UNMAPPED_PAGEBLOCKS]),
             "unmapped_cache_refills": int(c[C.NR_UNMAPPED_REFILLS]),
             "cpa_vmalloc_skipped": int((t.events.kind == EV_VCPA).sum())}
    warnings = []
    if t.meta.get("overflow"):
        a, b = t.meta["entries"]
        warnings.append(f"the ftrace ring buffer overflowed ({a} of {b} entries kept): "
                        "the oldest events are lost and the replay cannot be exact")
    if t.meta.get("untraced_frees"):
        warnings.append(f"simulated placement: {t.meta['untraced_frees']} frees of pages inside "
                        "a live traced block (split_page()) were dropped")
    if t.meta.get("cpa_array_calls"):
        warnings.append(f"{t.meta['cpa_array_calls']} CPA_ARRAY/CPA_PAGES_ARRAY calls: the trace "
                        "names only their first page, so only that page is replayed")
    warnings += trace_incomplete(t.meta)
    if t.meta.get("other_tracepoints"):
        other = t.meta["other_tracepoints"]
        warnings.append(f"{sum(other.values())} events of other tracepoints skipped: "
                        + ", ".join(f"{name} {n}" for name, n in other.items()))
    if t.meta.get("skipped_lines"):
        warnings.append(f"{t.meta['skipped_lines']} bad lines skipped (--lenient); "
                        f"first: {t.meta.get('first_skipped')}")
    meta = dict(t.meta)
    meta["events"] = len(t.events)
    return Result(
        counters={n: counter_value(c, n) for n in COUNTERS + POLICY_COUNTERS},
        boot={n: counter_value(r.boot, n) for n in COUNTERS},
        stats=stats, checks=checks, meta=meta, gbpages=t.machine.gbpages, warnings=warnings)
