"""Reader for real Linux ftrace text: /sys/kernel/tracing/trace or
`trace-cmd report`, optionally preceded by the e820 lines of dmesg
(the recording contract, SPEC section 6).

Events are found by their `<timestamp>: <event>: ` shape, not by column, since
the prefix differs between kernel versions and tools.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace

import numpy as np

from ..core.constants import (
    _PAGE_RW,
    PAGE_SHIFT,
    START_KERNEL_MAP,
)
from ..machine import E820_TYPES, KernelImage, Machine, MachineError, apply_e820_update
from .errors import LineErrors, TraceError
from .events import (
    CPAF_PRIMARY,
    EV_ALLOC,
    EV_CHECKPOINT,
    EV_CPA,
    EV_FREE,
    EV_KERNEL_RO,
    EV_SYSTEM_RUNNING,
    SAMPLE,
    Checkpoint,
    EventArrays,
    EventBuilder,
    Trace,
    join_columns,
)
from .ftrace_scan import (
    ROW_BAD_ORDER,
    ROW_DROPPED,
    ROW_OK,
    SCAN_ALLOC,
    SCAN_CPA,
    SCAN_FREE,
    scan,
    translate_chunk,
)
from .native import MAX_ORDER
from .preboot import early_symbols, start_kernel_calls
from .source import line_chunks, scanned

EVENT_RE = re.compile(r"\s(\d+\.\d+):\s+([\w/]+):\s?(.*)$")
E820_RE = re.compile(r"BIOS-e820: \[mem (0x[0-9a-fA-F]+)-(0x[0-9a-fA-F]+)\] (.+?)\s*$")
E820_UPDATE_RE = re.compile(
    r"e820: update \[mem (0x[0-9a-fA-F]+)-(0x[0-9a-fA-F]+)\] (\S+) ==> (\S+)")
E820_REMOVE_RE = re.compile(r"e820: remove \[mem (0x[0-9a-fA-F]+)-(0x[0-9a-fA-F]+)\] (\S+)")
DMESG_RE = re.compile(r"^\s*(<\d+>)?\[\s*\d+\.\d+\]")
ENTRIES_RE = re.compile(r"entries-in-buffer/entries-written:\s*(\d+)/(\d+)")

KMEM_EVENTS = ("mm_page_alloc", "mm_page_free", "mm_page_free_batched")
CPA_EVENTS = ("cpa", "dmsim/cpa")
MARKER_EVENTS = ("tracing_mark_write", "print")
KALLSYMS = ("_text", "_etext", "__start_rodata", "__end_rodata", "__end_rodata_hpage_align", "_end")
METERED = ("direct_map_level2_splits", "direct_map_level3_splits",
           "DirectMap4k", "DirectMap2M", "DirectMap1G")


def looks_like_ftrace(head: str) -> bool:
    """Auto-detection: the tracer header, an e820 line or a trace event line."""
    return ("# tracer:" in head or "BIOS-e820" in head or "=== TRACE" in head
            or EVENT_RE.search(head) is not None)


def _int(s: str) -> int:
    return int(s, 16) if s.startswith(("0x", "0X")) else int(s)


def _e820_type(name: str) -> int:
    key = name.strip().lower().replace(" ", "_")
    if key.startswith("type_"):
        return int(key[5:])
    return E820_TYPES.get(key, 2)


CLOCK_CHECKS = 4096  # page events looked at for the first microsecond timestamp
TIMESTAMP_RE = re.compile(rb"\s\d+\.(\d{6}):\s")
LOST_RE = re.compile(r"^CPU:\s*\d+\s*\[LOST\s+(\d+)\s+EVENTS\]")
MAX_LINE = 4096  # longer lines are not trace lines (real ones are under 300 bytes)


def parse_ftrace(text: str | bytes, path: str, lenient: bool = False,
                 machine: Machine | None = None) -> Trace:
    """Parse the trace text into a Trace (machine, events, checkpoints)."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    return read_ftrace(line_chunks([data], path), path, lenient, machine)


def read_ftrace(chunks: Iterable[bytes], path: str, lenient: bool = False,
                machine: Machine | None = None) -> Trace:
    """Read ftrace text given as chunks of whole lines (source.line_chunks()) into a
    Trace. Memory is the events' arrays and one chunk, whatever the text's size."""
    r = _Reader(path, lenient, machine)
    for chunk, tokens in scanned(chunks, _scan_bytes):
        r.chunk(chunk, tokens)
    return r.finish()


def _scan_bytes(data: bytes):
    return scan(np.frombuffer(data, np.uint8))


class _Reader:
    """kmem and CPA event lines are tokenised in bulk (ftrace_scan.py) and turned
    into event rows chunk by chunk; the few other lines (headers, e820, markers,
    anything malformed) are read here, one by one."""

    def __init__(self, path: str, lenient: bool, machine: Machine | None):
        self.path = path
        self.errs = LineErrors(path, lenient)
        self.given = machine
        self.machine: Machine | None = None  # fixed by the first event: its e820 map
        self.e820: list[tuple[int, int, int]] = []
        self.kallsyms: dict[str, int] = {}
        self.overflow: tuple[int, int] | None = None
        self.entries = 0  # entries-in-buffer of every header
        self.checkpoints: list[Checkpoint] = []
        self.step = "boot"
        self.window = -1  # the open `dmsim: sample` window, if any
        self.seen_running = False
        self.meminfo_seen: set[str] = set()
        self.lost = 0  # CPU:N [LOST M EVENTS]
        self.other_events: dict[str, int] = {}  # other tracepoints, skipped
        self.events_read = 0  # trace event lines
        self.nlines = 0  # lines before the current chunk
        self.pieces: list[list[np.ndarray]] = []  # event columns + source line, per chunk
        self.phys_base: int | None = None
        self.n = {"allocs": 0, "frees": 0, "vm": 0, "outside": 0, "array": 0, "batched": 0}
        self.last_kmem = np.zeros(0, np.int8)  # per pfn: translate_chunk()'s last kmem event
        self.any_pid0 = False
        self.first_other_mem: int | None = None  # row of the first page event not by pid 0
        self.outside_first: tuple[int, int] | None = None  # (line, pfn) of the first CPA past RAM
        self.first_clock_mem: int | None = None  # ... whose timestamp has microseconds
        self.clock_checks = 0
        self.rows = 0

    # ------------------------------------------------------------------ lines

    def chunk(self, data: bytes, tokens) -> None:
        """One chunk of whole lines and what ftrace_scan.scan() made of it."""
        nlines, kind, li, fields, other = tokens
        markers: list[tuple[int, int, int]] = []  # (line index, EV_*, arg0)
        first_event = int(li[0]) if len(kind) else nlines
        for row, start in other.tolist():
            if row > first_event and self.machine is None:
                self.machine = self._fix_machine(self.nlines + first_event + 1)
            end = data.find(b"\n", start)
            self.line(row, data[start:end if end >= 0 else len(data)], markers)
        if len(kind) and self.machine is None:
            self.machine = self._fix_machine(self.nlines + first_event + 1)
        if len(kind) or markers:
            self._events(data, kind, li, fields, markers)
        self.events_read += len(kind)
        self.nlines += nlines

    def line(self, li: int, raw: bytes, markers: list) -> None:
        lineno = self.nlines + li + 1
        errs = self.errs
        if len(raw) > MAX_LINE:
            errs.bad(lineno, f"not a trace line: {len(raw)} bytes long", raw[:200].decode("utf-8", "replace"))
            return
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if line.startswith("#"):
            m = ENTRIES_RE.search(line)
            if m:
                self.overflow = (int(m.group(1)), int(m.group(2)))
                self.entries += self.overflow[0]
            return
        if line.startswith("=== TRACE"):
            return
        m = EVENT_RE.search(line)
        if m is None:
            if "e820" in line:
                if self.machine is not None and self.given is None:
                    # the map is fixed by the first event: a line may not change it
                    after = list(self.e820)
                    _parse_e820_line(line, lineno, after, errs)
                    if after != self.e820:
                        errs.bad(lineno, "an e820 line after the first event", line)
                    return
                _parse_e820_line(line, lineno, self.e820, errs)
            elif line.startswith("CPU:"):
                lost = LOST_RE.match(line)
                if lost:
                    self.lost += int(lost.group(1))
            elif DMESG_RE.match(line) or line.startswith(("cpus=", "version =")):
                pass  # other dmesg lines and trace-cmd headers carry nothing we use
            else:
                errs.bad(lineno, "not a trace event, e820 or comment line", line)
            return
        self.events_read += 1
        event, payload = m.group(2), m.group(3)
        if event in KMEM_EVENTS or event in CPA_EVENTS:
            errs.bad(lineno, f"malformed {event} event", line)  # the scanner did not take it
            return
        if event not in MARKER_EVENTS:
            self.other_events[event] = self.other_events.get(event, 0) + 1
            return
        pos = payload.find("dmsim: ")
        if pos < 0:
            return  # somebody else's trace_marker write
        words = payload[pos + 7:].split()
        try:
            what = words[0]
            if what == "system_running":
                markers.append((li, EV_SYSTEM_RUNNING, 0))
                self.seen_running = True
            elif what == "kallsyms":
                self.kallsyms[words[1]] = _int(words[2])
            elif what == "step":
                self.step = " ".join(words[1:])
                self.window = -1
            elif what == SAMPLE:
                cp = Checkpoint(len(self.checkpoints), self.step, SAMPLE, 0, lineno)
                self.checkpoints.append(cp)
                markers.append((li, EV_CHECKPOINT, cp.index))
                self.window = cp.index
            elif what in ("vmstat", "meminfo"):
                name = words[1].rstrip(":")
                if name in METERED:
                    if what == "meminfo":
                        self.meminfo_seen.add(name)
                    cp = Checkpoint(len(self.checkpoints), self.step, name, int(words[2]),
                                    lineno, self.window)
                    self.checkpoints.append(cp)
                    markers.append((li, EV_CHECKPOINT, cp.index))
            # other markers (end, notes) carry no state
        except (ValueError, IndexError):
            errs.bad(lineno, "malformed dmsim marker", line)

    def _fix_machine(self, lineno: int) -> Machine:
        """The machine the events are checked and translated against: --machine, or the
        e820 lines before the first event (the kernel image is added at the end)."""
        if self.given is not None:
            return self.given
        if not self.e820:
            raise TraceError(self.path, lineno, "no e820 lines before the first event: "
                             "give the machine with --machine")
        return _machine_from_trace(self.path, self.e820, {}, None, set())

    # ------------------------------------------------------------------ events

    def _bad_rows(self, data: bytes, li, rows, message) -> None:
        """Each row is a bad line: the message names it (strict mode stops at the first)."""
        for r in rows:
            lo = 0
            n = int(li[r])
            for _ in range(n):  # (only on bad input: find the line's text)
                lo = data.index(b"\n", lo) + 1
            hi = data.find(b"\n", lo)
            text = data[lo:hi if hi >= 0 else len(data)].decode("utf-8", "replace")
            self.errs.bad(self.nlines + n + 1, message(r), text)

    def _events(self, data, kind, li, fields, markers) -> None:
        """One chunk's events and markers, checked and translated, in line order."""
        if self.phys_base is None:
            cpa = np.nonzero(kind == SCAN_CPA)[0]
            if len(cpa):
                self.phys_base = int(fields[cpa[0], 7])
        status, *cols, pid0, counts = translate_chunk(
            kind, fields, self.highmap_vpfn, self.ram_start, self.ram_end, MAX_ORDER,
            self.last_kmem)
        bad = status >= ROW_BAD_ORDER
        if bad.any():
            names = {SCAN_ALLOC: "mm_page_alloc", SCAN_FREE: "mm_page_free"}

            def message(i):
                name, pfn, order = names[int(kind[i])], int(fields[i, 0]), int(fields[i, 1])
                if status[i] == ROW_BAD_ORDER:
                    return f"{name}: order {order} is above {MAX_ORDER}"
                return (f"{name}: pages [{pfn:#x}, {pfn + (1 << order):#x}) are not RAM in the "
                        f"e820 map (max_pfn {self.max_pfn:#x})")

            self._bad_rows(data, li, np.nonzero(bad)[0], message)  # --lenient: skipped
        for name, c in zip(("vm", "outside", "array", "batched"), counts.tolist(), strict=True):
            self.n[name] += c
        if counts[1] and self.outside_first is None:  # a direct-map CPA call past RAM
            r = int(np.nonzero((status == ROW_DROPPED) & (kind == SCAN_CPA))[0][0])
            vaddr, pob = int(fields[r, 0]) & ~0xFFF, int(fields[r, 6])
            self.outside_first = (self.nlines + int(li[r]) + 1, (vaddr - pob) >> PAGE_SHIFT)
        is_alloc = cols[0] == EV_ALLOC
        self.n["allocs"] += int(np.count_nonzero(is_alloc))
        self.n["frees"] += int(np.count_nonzero(cols[0] == EV_FREE))
        keep = status == ROW_OK
        if not keep.all():
            cols = [c[keep] for c in cols]
            li, pid0 = li[keep], pid0[keep]
        line = li
        if markers:
            at = np.searchsorted(li, np.array([x[0] for x in markers], np.int64))
            for ci, v in ((0, [x[1] for x in markers]), (1, [x[2] for x in markers])):
                cols[ci] = np.insert(cols[ci], at, v)
            for ci in range(2, len(cols)):
                cols[ci] = np.insert(cols[ci], at, 0)
            line = np.insert(li, at, [x[0] for x in markers])
            pid0 = np.insert(pid0, at, False)
        if pid0.any():
            self.any_pid0 = True
        if self.first_other_mem is None:
            not_pid0 = np.nonzero(((cols[0] == EV_ALLOC) | (cols[0] == EV_FREE)) & ~pid0)[0]
            if len(not_pid0):
                self.first_other_mem = self.rows + int(not_pid0[0])
        if self.first_clock_mem is None and self.clock_checks < CLOCK_CHECKS:
            r = self._first_clock_row(data, cols[0], line)
            if r is not None:
                self.first_clock_mem = self.rows + r
        cols.append(line + (self.nlines + 1))  # source lines, 1-based
        self.pieces.append(cols)
        self.rows += len(line)

    def _first_clock_row(self, data: bytes, kinds, line) -> int | None:
        """The first row of this chunk that is a page event stamped with microseconds.
        start_kernel() calls setup_per_cpu_pageset() before late_time_init() (x86:
        tsc_init()) and sched_clock_init(): until then the trace clock reads 0 or whole
        jiffies. Looks at the first CLOCK_CHECKS page events of the trace only."""
        mem = np.nonzero((kinds == EV_ALLOC) | (kinds == EV_FREE))[0]
        pos, at = 0, 0  # byte offset of chunk line `at`
        for r in mem.tolist():
            if self.clock_checks >= CLOCK_CHECKS:
                return None
            self.clock_checks += 1
            want = int(line[r])
            while at < want:
                pos = data.index(b"\n", pos) + 1
                at += 1
            end = data.find(b"\n", pos)
            m = TIMESTAMP_RE.search(data, pos, end if end >= 0 else len(data))
            if m and m.group(1)[-3:] != b"000":
                return r
        return None

    @property
    def machine(self):
        return self._machine

    @machine.setter
    def machine(self, m):
        self._machine = m
        self.highmap_vpfn = self.max_pfn = 0
        self.ram_start = self.ram_end = np.zeros(0, np.uint64)
        if m is not None:
            self.highmap_vpfn = m.highmap_vpfn()
            self.max_pfn = m.max_pfn()
            ranges = m.ram_pfn_ranges()
            self.ram_start = np.array([s for s, _ in ranges], np.uint64)
            self.ram_end = np.array([e for _, e in ranges] or [0], np.uint64)
            self.last_kmem = np.zeros(self.max_pfn + 1, np.int8)

    # ------------------------------------------------------------------ the end

    def finish(self) -> Trace:
        path, machine = self.path, self.machine
        if machine is None:
            machine = self._fix_machine(0) if self.given is not None or self.e820 else None
        if machine is None:
            raise TraceError(path, 0, "no e820 lines in the trace: give the machine with --machine")
        if self.given is None:
            machine = _machine_from_trace(path, machine.e820, self.kallsyms, self.phys_base,
                                          self.meminfo_seen)
        elif machine.kernel is None:
            # a machine config gives the RAM; where KASLR put the kernel is in the trace
            found = _machine_from_trace(path, machine.e820, self.kallsyms, self.phys_base,
                                        self.meminfo_seen)
            machine = replace(machine, kernel=found.kernel,
                              reserved=machine.reserved or found.reserved)
        trace = self._assemble(machine)
        missing = self.entries - self.events_read if self.overflow is not None else 0
        trace.meta.update({
            "format": "ftrace",
            "overflow": self.overflow is not None and self.overflow[0] < self.overflow[1],
            "entries": self.overflow,
            "system_running_marker": self.seen_running,
            "kallsyms": self.kallsyms,
            "page_allocs": self.n["allocs"],
            "page_frees": self.n["frees"] + self.n["batched"],
            "skipped_lines": self.errs.skipped,
            "first_skipped": str(self.errs.first) if self.errs.first else None,
            "lost_events": self.lost,
            "missing_entries": max(missing, 0),
            "other_tracepoints": dict(sorted(self.other_events.items())),
            "lines": self.nlines,
        })
        return trace

    def _assemble(self, machine: Machine) -> Trace:
        """The chunks' rows after start_kernel()'s untraced calls, with EV_KERNEL_RO
        placed after mark_rodata_ro()'s set_memory_ro and its alias calls."""
        u = np.uint64
        highmap_vpfn = machine.highmap_vpfn()
        k = machine.kernel
        b = EventBuilder(64)
        preboot = ""
        at = None  # (piece, row) before which EV_KERNEL_RO goes
        if k is not None:
            syms, preboot = early_symbols(k, self.kallsyms)
            for row in start_kernel_calls(k, syms, highmap_vpfn):
                b.append(*row)
            # mark_rodata_ro(): set_memory_ro(_text .. __end_rodata_hpage_align), then
            # kernel_set_to_readonly = 1 once it and its alias calls have returned
            ro_pages = (k.end_rodata_hpage_align - k.text) >> PAGE_SHIFT
            text_vpfn = highmap_vpfn + ((k.text - START_KERNEL_MAP) >> PAGE_SHIFT)
            found = False
            for pi, c in enumerate(self.pieces):
                if not found:
                    hit = np.nonzero((c[0] == EV_CPA) & (c[1] == text_vpfn) & (c[2] == ro_pages)
                                     & ((c[4] & u(_PAGE_RW)) != 0)
                                     & ((c[5] & CPAF_PRIMARY) != 0))[0]
                    if not len(hit):
                        continue
                    found, start = True, int(hit[0]) + 1
                else:
                    start = 0
                # what may sit inside the call: its alias calls, page events
                alias = (((c[0] == EV_CPA) & (c[1] < highmap_vpfn) & ((c[5] & CPAF_PRIMARY) == 0))
                         | (c[0] == EV_ALLOC) | (c[0] == EV_FREE))
                after = np.nonzero(~alias[start:])[0]
                if len(after):
                    at = (pi, start + int(after[0]))
                    break
            if found and at is None:
                at = (len(self.pieces), 0)
        pre = b.finish()
        pieces = self.pieces
        if at is not None:
            pi, row = at
            ro = [np.array([v], c.dtype) for v, c in
                  zip((EV_KERNEL_RO, 0, 0, 0, 0, 0, 0), pre.columns() + (np.zeros(0, np.int64),),
                      strict=True)]
            pieces = [*pieces[:pi], *([[c[:row] for c in pieces[pi]], ro,
                                       [c[row:] for c in pieces[pi]]] if pi < len(pieces)
                                      else [ro]), *pieces[pi + 1:]]
        ro_row = self._row(at) if at is not None else None
        self.pieces = []  # (pieces holds every chunk's columns, or views of them)
        cols = join_columns(pieces, pre.columns() + (np.zeros(len(pre), np.int64),))
        lines = cols.pop()
        # setup_per_cpu_pageset() runs in start_kernel() before rest_init() starts the
        # first other task, and before the trace clock has microseconds: the boot
        # pageset ends before the first page event of either
        pcp_setup = None
        if self.any_pid0 and self.first_other_mem is not None:
            first = self.first_other_mem
            if self.first_clock_mem is not None:
                first = min(first, self.first_clock_mem)
            pcp_setup = first + len(pre)
            if ro_row is not None and ro_row <= first:
                pcp_setup += 1
        t = Trace(machine=machine, events=EventArrays(*cols), checkpoints=self.checkpoints,
                  lines=lines)
        t.meta["cpa_vmalloc"] = self.n["vm"]
        t.meta["cpa_outside_ram"] = self.n["outside"]
        t.meta["cpa_outside_first"] = self.outside_first
        t.meta["cpa_array_calls"] = self.n["array"]
        t.meta["batched_frees"] = self.n["batched"]
        t.meta["pcp_setup_event"] = pcp_setup  # first page event after setup_per_cpu_pageset()
        t.meta["preboot_calls"] = preboot  # where idt_table/.smp_locks came from ("" = not modelled)
        return t

    def _row(self, at) -> int:
        """The row index (over all chunks) of a (piece, row) position."""
        pi, row = at
        return sum(len(p[0]) for p in self.pieces[:pi]) + row


def _parse_e820_line(line: str, lineno: int, e820: list, errs: LineErrors) -> None:
    m = E820_RE.search(line)
    if m:
        e820.append((_int(m.group(1)), _int(m.group(2)) + 1, _e820_type(m.group(3))))
        return
    m = E820_UPDATE_RE.search(line)
    if m:
        s, e = _int(m.group(1)), _int(m.group(2)) + 1
        e820[:] = apply_e820_update(e820, s, e, _e820_type(m.group(3)), _e820_type(m.group(4)))
        return
    m = E820_REMOVE_RE.search(line)
    if m:
        s, e = _int(m.group(1)), _int(m.group(2)) + 1
        e820[:] = apply_e820_update(e820, s, e, _e820_type(m.group(3)), None)
        return
    if DMESG_RE.match(line):
        return  # other e820 chatter (e.g. "e820: reserve RAM buffer")
    errs.bad(lineno, "malformed e820 line", line)


def _machine_from_trace(path, e820, kallsyms, phys_base, meminfo_seen) -> Machine:
    kernel = None
    if phys_base is not None and all(k in kallsyms for k in KALLSYMS):
        kernel = KernelImage(
            text=kallsyms["_text"], etext=kallsyms["_etext"],
            start_rodata=kallsyms["__start_rodata"], end_rodata=kallsyms["__end_rodata"],
            end_rodata_hpage_align=kallsyms["__end_rodata_hpage_align"],
            end=kallsyms["_end"], phys_base=phys_base)
    # arch_report_meminfo() prints DirectMap1G only when direct_gbpages is set
    gbpages = "DirectMap1G" in meminfo_seen if meminfo_seen else True
    reserved = []
    if kernel is not None:  # memblock_reserve() of the kernel image in setup_arch()
        reserved.append((kernel.pa(kernel.text), kernel.pa(kernel.end)))
    m = Machine(e820=e820, gbpages=gbpages, kernel=kernel, reserved=reserved, name=path)
    try:
        m.validate()
    except MachineError as e:
        raise TraceError(path, 0, f"bad e820 map: {e}") from None
    return m
