"""Read any trace: detect its format and hand back a Trace."""

from __future__ import annotations

import numpy as np

from .machine import Machine
from .trace.errors import TraceError
from .trace.events import EV_ALLOC, EV_CPA, EV_FREE, Trace
from .trace.source import open_trace


def load_trace(path: str, lenient: bool = False, machine: Machine | None = None) -> Trace:
    """Parse a native or ftrace trace (plain, .gz, .zst, .xz; `-` is stdin), as a stream."""
    from .trace import ftrace, native

    head, chunks, stream = open_trace(path)
    if native.looks_like_native(head):
        trace = native.read_native(chunks, path, lenient=lenient, machine=machine)
    elif ftrace.looks_like_ftrace(head):
        trace = ftrace.read_ftrace(chunks, path, lenient=lenient, machine=machine)
    else:
        first = next((ln for ln in head.split("\n") if ln.strip()), "")
        raise TraceError(path, 1, "neither a dmsim native trace nor ftrace text", first)
    check_machine_covers(trace, path)  # (the readers check their pfns; a backstop)
    trace.meta["path"] = path
    trace.meta["sha256"] = stream.digest
    return trace


def check_machine_covers(trace: Trace, path: str, line_text=None) -> None:
    """TraceError unless the machine holds every page the trace names: each block
    allocated or freed lies in its RAM (memblock.memory), and no CPA call on the
    direct map starts past its last RAM page. A machine that does not (a --machine
    smaller than the recorded one) would replay the trace's pages as if they were
    not there: wrong numbers, or a crash under simulated placement. The error names
    the first such event's line (line_text(line) gives its text, when known)."""
    m = trace.machine
    ev = trace.events
    ram = m.ram_pfn_ranges()
    start = np.array([s for s, _ in ram], np.int64)
    end = np.array([e for _, e in ram], np.int64)
    shown = f"{m.name or 'the machine'}: RAM {_ranges_text(ram)}"
    bad = None  # (event index, message)
    mem = np.nonzero((ev.kind == EV_ALLOC) | (ev.kind == EV_FREE))[0]
    if len(mem):
        pfn = ev.arg0[mem]
        order = ev.arg1[mem]
        pages = np.left_shift(np.int64(1), np.clip(order, 0, 40))
        i = np.searchsorted(start, pfn, side="right") - 1
        inside = (i >= 0) & (pfn + pages <= end[np.maximum(i, 0)])
        if not inside.all():
            k = int(np.argmin(inside))
            bad = (int(mem[k]), f"pfn {int(pfn[k]):#x} (order {int(order[k])}) is not in the "
                                f"machine's RAM ({shown}): the machine does not cover the trace")
    cpa = np.nonzero((ev.kind == EV_CPA) & (ev.arg0 < m.highmap_vpfn())
                     & (ev.arg0 >= m.max_pfn()))[0]
    if len(cpa) and (bad is None or cpa[0] < bad[0]):
        k = int(cpa[0])
        bad = (k, f"a CPA call on the direct map at pfn {int(ev.arg0[k]):#x}, past the "
                  f"machine's RAM ({shown}): the machine does not cover the trace")
    line = 0
    if bad is not None and trace.lines is not None:
        line = int(trace.lines[bad[0]])
    outside = trace.meta.get("cpa_outside_first")  # CPA calls the reader found past the map
    if outside is not None and (bad is None or (line and outside[0] < line)):
        line, pfn = outside
        bad = (-1, f"a CPA call on the direct map at pfn {pfn:#x}, past the machine's RAM "
                   f"({shown}): the machine does not cover the trace")
    if bad is None:
        return
    text = line_text(line) if line and line_text is not None else ""
    raise TraceError(path, line, bad[1], text)


def _ranges_text(ram: list[tuple[int, int]]) -> str:
    """pfn ranges as `0x1-0x9f, 0x100-0x7ffdd` (end exclusive), the first few."""
    parts = [f"pfn {s:#x}-{e:#x}" for s, e in ram[:4]]
    return ", ".join(parts) + (f" and {len(ram) - 4} more" if len(ram) > 4 else "")

