"""Reader for real Linux ftrace text: /sys/kernel/tracing/trace or
`trace-cmd report`, optionally preceded by the e820 lines of dmesg
(the recording contract, SPEC section 6).

Events are found by their `<timestamp>: <event>: ` shape, not by column, since
the prefix differs between kernel versions and tools.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from ..core.constants import (
    _PAGE_RW,
    CPA_ARRAY,
    CPA_COLLAPSE,
    CPA_PAGES_ARRAY,
    KERNEL_IMAGE_SIZE,
    PAGE_SHIFT,
    START_KERNEL_MAP,
)
from ..machine import E820_TYPES, KernelImage, Machine, MachineError, apply_e820_update
from .errors import LineErrors, TraceError
from .events import (
    CPAF_COLLAPSE,
    CPAF_PRIMARY,
    EV_ALLOC,
    EV_CHECKPOINT,
    EV_CPA,
    EV_FREE,
    EV_KERNEL_RO,
    EV_SYSTEM_RUNNING,
    EV_VCPA,
    FREE_DEFERRED_INIT,
    SAMPLE,
    Checkpoint,
    EventArrays,
    EventBuilder,
    Trace,
)
from .ftrace_scan import (
    SCAN_ALLOC,
    SCAN_CPA,
    SCAN_FREE,
    SCAN_OTHER,
    TASK_DEFERRED_INIT,
    TASK_IDLE,
    scan,
)
from .preboot import early_symbols, start_kernel_calls

EVENT_RE = re.compile(r"\s(\d+\.\d+):\s+([\w/]+):\s?(.*)$")
E820_RE = re.compile(r"BIOS-e820: \[mem (0x[0-9a-fA-F]+)-(0x[0-9a-fA-F]+)\] (.+?)\s*$")
E820_UPDATE_RE = re.compile(
    r"e820: update \[mem (0x[0-9a-fA-F]+)-(0x[0-9a-fA-F]+)\] (\S+) ==> (\S+)")
E820_REMOVE_RE = re.compile(r"e820: remove \[mem (0x[0-9a-fA-F]+)-(0x[0-9a-fA-F]+)\] (\S+)")
TIMESTAMP_RE = re.compile(rb"\s\d+\.(\d{6}):\s")
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


def parse_ftrace(text: str | bytes, path: str, lenient: bool = False,
                 machine: Machine | None = None) -> Trace:
    """Parse the trace text into a Trace (machine, events, checkpoints).

    kmem and CPA event lines are tokenised in bulk (ftrace_scan.py); the few
    other lines (headers, e820, markers, anything malformed) are read here."""
    errs = LineErrors(path, lenient)
    e820: list[tuple[int, int, int]] = []
    kallsyms: dict[str, int] = {}
    overflow: tuple[int, int] | None = None
    checkpoints: list[Checkpoint] = []
    markers: list[tuple[int, int, int]] = []  # (line index, EV_*, arg0)
    step = "boot"
    window = -1  # the open `dmsim: sample` window, if any
    seen_running = False
    meminfo_seen: set[str] = set()

    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    kind, start, fields = scan(data)
    for li in np.nonzero(kind == SCAN_OTHER)[0].tolist():
        lineno = li + 1
        line = data[start[li]:start[li + 1] - 1].decode("utf-8", "replace")
        if line.startswith("#"):
            m = ENTRIES_RE.search(line)
            if m:
                overflow = (int(m.group(1)), int(m.group(2)))
            continue
        if line.startswith("=== TRACE"):
            continue
        m = EVENT_RE.search(line)
        if m is None:
            if "e820" in line:
                _parse_e820_line(line, lineno, e820, errs)
            elif DMESG_RE.match(line) or line.startswith(("CPU:", "cpus=", "version =")):
                pass  # other dmesg lines and trace-cmd headers carry nothing we use
            else:
                errs.bad(lineno, "not a trace event, e820 or comment line", line)
            continue
        event, payload = m.group(2), m.group(3)
        if event in KMEM_EVENTS or event in CPA_EVENTS:
            errs.bad(lineno, f"malformed {event} event", line)  # the scanner did not take it
            continue
        if event not in MARKER_EVENTS:
            errs.bad(lineno, f"unknown trace event '{event}'", line)
            continue
        pos = payload.find("dmsim: ")
        if pos < 0:
            continue  # somebody else's trace_marker write
        words = payload[pos + 7:].split()
        try:
            what = words[0]
            if what == "system_running":
                markers.append((li, EV_SYSTEM_RUNNING, 0))
                seen_running = True
            elif what == "kallsyms":
                kallsyms[words[1]] = _int(words[2])
            elif what == "step":
                step = " ".join(words[1:])
                window = -1
            elif what == SAMPLE:
                checkpoints.append(Checkpoint(len(checkpoints), step, SAMPLE, 0, lineno))
                markers.append((li, EV_CHECKPOINT, checkpoints[-1].index))
                window = checkpoints[-1].index
            elif what in ("vmstat", "meminfo"):
                name = words[1].rstrip(":")
                if name in METERED:
                    if what == "meminfo":
                        meminfo_seen.add(name)
                    checkpoints.append(Checkpoint(len(checkpoints), step, name, int(words[2]),
                                                  lineno, window))
                    markers.append((li, EV_CHECKPOINT, checkpoints[-1].index))
            # other markers (end, notes) carry no state
        except (ValueError, IndexError):
            errs.bad(lineno, "malformed dmsim marker", line)

    cpa_rows = np.nonzero(kind == SCAN_CPA)[0]
    phys_base = int(fields[cpa_rows[0], 7]) if len(cpa_rows) else None
    if machine is None:
        if not e820:
            raise TraceError(path, 0, "no e820 lines in the trace: give the machine with --machine")
        machine = _machine_from_trace(path, e820, kallsyms, phys_base, meminfo_seen)
    elif machine.kernel is None:
        # a machine config gives the RAM; where KASLR put the kernel is in the trace
        found = _machine_from_trace(path, machine.e820, kallsyms, phys_base, meminfo_seen)
        machine = replace(machine, kernel=found.kernel, reserved=machine.reserved or found.reserved)
    pcp_line = _pcp_setup_line(data, kind, start)
    trace = _translate(machine, kind, fields, markers, checkpoints, kallsyms, pcp_line)
    trace.meta.update({
        "format": "ftrace",
        "overflow": overflow is not None and overflow[0] < overflow[1],
        "entries": overflow,
        "system_running_marker": seen_running,
        "kallsyms": kallsyms,
        "page_allocs": int(np.count_nonzero(kind == SCAN_ALLOC)),
        "page_frees": int(np.count_nonzero(kind == SCAN_FREE)),
        "skipped_lines": errs.skipped,
        "first_skipped": str(errs.first) if errs.first else None,
    })
    return trace


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


def _duplicate_frees(kind, fields) -> np.ndarray:
    """The mm_page_free_batched lines whose page's last kmem event is an
    mm_page_free: free_unref_page_list() traced it in free_pages_prepare() already
    (a per-line bool)."""
    mem = np.nonzero((kind == SCAN_ALLOC) | (kind == SCAN_FREE))[0]
    out = np.zeros(kind.shape[0], bool)
    if not len(mem):
        return out
    pfn = fields[mem, 0]
    by_page = mem[np.lexsort((mem, pfn))]  # per pfn, in line order
    is_batched = (kind[by_page] == SCAN_FREE) & (fields[by_page, 3] == 1)
    prev_plain_free = np.zeros(len(by_page), bool)
    prev_plain_free[1:] = ((fields[by_page[1:], 0] == fields[by_page[:-1], 0])
                           & (kind[by_page[:-1]] == SCAN_FREE) & (fields[by_page[:-1], 3] == 0))
    out[by_page[is_batched & prev_plain_free]] = True
    return out


def _pcp_setup_line(data: bytes, kind, start) -> int | None:
    """The line of the first page event certainly after setup_per_cpu_pageset(), or None.

    start_kernel() calls setup_per_cpu_pageset() before late_time_init() (x86:
    tsc_init()) and sched_clock_init(): until then the trace clock reads 0 or whole
    jiffies, after it has microseconds. (The idle task's other events before
    rest_init() may come after it too; which, the trace cannot say.)"""
    mem = np.nonzero((kind == SCAN_ALLOC) | (kind == SCAN_FREE))[0]
    for li in mem[:4096].tolist():
        m = TIMESTAMP_RE.search(data, int(start[li]), int(start[li + 1]))
        if m and m.group(1)[-3:] != b"000":
            return li
    return None


def _translate(machine: Machine, kind, fields, markers, checkpoints, kallsyms,
               pcp_line: int | None = None) -> Trace:
    """Merge scanned events and markers in line order; turn virtual addresses
    into vpfns; CPA calls on vmalloc space become EV_VCPA markers (their alias
    calls are in the trace, and do the work); place EV_KERNEL_RO; prepend start_kernel's untraced calls."""
    highmap_vpfn = machine.highmap_vpfn()
    u = np.uint64
    cpa_li = np.nonzero(kind == SCAN_CPA)[0]
    f = fields[cpa_li]
    vaddr = f[:, 0] & ~u(0xFFF)  # change_page_attr_set_clr() aligns down
    pob = f[:, 6]
    off_direct = vaddr - pob  # wraps (huge) below the direct map
    off_high = vaddr - u(START_KERNEL_MAP)
    direct = off_direct < u(highmap_vpfn << PAGE_SHIFT)
    high = off_high < u(KERNEL_IMAGE_SIZE)
    outside = ~direct & (off_direct < u(1 << 46))  # direct-map address past RAM
    keep = direct | high
    vm = ~keep & ~outside  # vmalloc space: kept as EV_VCPA markers
    # CPA_ARRAY / CPA_PAGES_ARRAY calls walk an array of addresses; the kprobe
    # fetches only the first (+0(+0(%di))), so only that page can be replayed
    array = (f[:, 4] & u(CPA_ARRAY | CPA_PAGES_ARRAY)) != 0
    f[array, 1] = 1
    primary = f[:, 5].astype(np.int64) != 0
    # a 6.15+ kernel's set_memory_rox() passes CPA_COLLAPSE in cpa->flags
    cpa_flags = np.where(primary, CPAF_PRIMARY, 0) | np.where(
        (f[:, 4] & u(CPA_COLLAPSE)) != 0, CPAF_COLLAPSE, 0)
    vpfn = np.where(direct, (off_direct >> u(PAGE_SHIFT)).astype(np.int64),
                    highmap_vpfn + (off_high >> u(PAGE_SHIFT)).astype(np.int64))
    vpfn = np.where(vm, (vaddr >> u(PAGE_SHIFT)).astype(np.int64), vpfn)
    keep_ev = keep | vm

    # free_unref_page_list() (6.1, and since 4.15) traces each page it frees twice:
    # trace_mm_page_free() in free_pages_prepare(), then trace_mm_page_free_batched()
    # before free_unref_page_commit(), with no allocation between: one free, kept once
    batched = _duplicate_frees(kind, fields)
    mem_li = np.nonzero((kind == SCAN_ALLOC) | ((kind == SCAN_FREE) & ~batched))[0]
    mk = np.array([m[0] for m in markers], np.int64)
    li = np.concatenate([cpa_li[keep_ev], mem_li, mk])
    ev_kind = np.concatenate([np.where(vm[keep_ev], EV_VCPA, EV_CPA).astype(np.uint8),
                              np.where(kind[mem_li] == SCAN_ALLOC, EV_ALLOC, EV_FREE).astype(np.uint8),
                              np.array([m[1] for m in markers], np.uint8)])
    arg0 = np.concatenate([vpfn[keep_ev], fields[mem_li, 0].astype(np.int64),
                           np.array([m[2] for m in markers], np.int64)])
    arg1 = np.concatenate([f[keep_ev, 1].astype(np.int64), fields[mem_li, 1].astype(np.int64),
                           np.zeros(len(markers), np.int64)])
    mset = np.concatenate([f[keep_ev, 2], np.zeros(len(mem_li) + len(markers), np.uint64)])
    mclr = np.concatenate([f[keep_ev, 3], np.zeros(len(mem_li) + len(markers), np.uint64)])
    flg = np.concatenate([cpa_flags[keep_ev].astype(np.int32),
                          np.where(kind[mem_li] == SCAN_ALLOC,
                                   fields[mem_li, 2] | fields[mem_li, 3] << np.uint64(8),
                                   np.where(fields[mem_li, 4] == TASK_DEFERRED_INIT,
                                            FREE_DEFERRED_INIT, 0)).astype(np.int32),
                          np.zeros(len(markers), np.int32)])
    alias = np.concatenate([(direct & ~primary)[keep_ev], np.ones(len(mem_li), bool),
                            np.zeros(len(markers), bool)])  # what may sit inside a call
    # kmem events of the idle task: start_kernel() before rest_init() (the boot pageset)
    by_pid0 = np.concatenate([np.zeros(int(keep_ev.sum()), bool), fields[mem_li, 4] == TASK_IDLE,
                              np.zeros(len(markers), bool)])
    order = np.argsort(li, kind="stable")
    by_pid0 = by_pid0[order]
    cols = [c[order] for c in (ev_kind, arg0, arg1, mset, mclr, flg)]
    cols.append(li[order] + 1)  # source lines, 1-based
    alias = alias[order]

    k = machine.kernel
    b = EventBuilder(len(order) + 64)
    preboot = ""
    if k is not None:
        syms, preboot = early_symbols(k, kallsyms)
        for row in start_kernel_calls(k, syms, highmap_vpfn):
            b.append(*row)
        # mark_rodata_ro(): set_memory_ro(_text .. __end_rodata_hpage_align), then
        # kernel_set_to_readonly = 1 once it and its alias calls have returned
        ro_pages = (k.end_rodata_hpage_align - k.text) >> PAGE_SHIFT
        text_vpfn = highmap_vpfn + ((k.text - START_KERNEL_MAP) >> PAGE_SHIFT)
        hit = np.nonzero((cols[0] == EV_CPA) & (cols[1] == text_vpfn) & (cols[2] == ro_pages)
                         & ((cols[4] & u(_PAGE_RW)) != 0) & ((cols[5] & CPAF_PRIMARY) != 0))[0]
        if len(hit):
            after = np.nonzero(~alias[hit[0] + 1:])[0]
            at = hit[0] + 1 + (after[0] if len(after) else len(alias) - hit[0] - 1)
            cols = [np.insert(c, at, v) for c, v in zip(cols, (EV_KERNEL_RO, 0, 0, 0, 0, 0, 0), strict=True)]
            by_pid0 = np.insert(by_pid0, at, False)
    pre = b.finish()
    lines = np.concatenate([np.zeros(len(pre), np.int64), cols.pop()])
    # setup_per_cpu_pageset() runs in start_kernel() before rest_init() starts the
    # first other task, and before the trace clock has microseconds: the boot
    # pageset ends before the first page event of either
    mem = np.nonzero(((cols[0] == EV_ALLOC) | (cols[0] == EV_FREE)) & ~by_pid0)[0]
    pcp_setup = int(mem[0]) + len(pre) if len(mem) and by_pid0.any() else None
    if pcp_line is not None and pcp_setup is not None:
        at = int(np.searchsorted(lines[len(pre):], pcp_line + 1))
        pcp_setup = min(pcp_setup, at + len(pre))
    ev = EventArrays(*(np.concatenate([p, c]).astype(p.dtype) for p, c in zip(pre.columns(), cols, strict=True)))
    t = Trace(machine=machine, events=ev, checkpoints=checkpoints, lines=lines)
    t.meta["cpa_vmalloc"] = int(vm.sum())
    t.meta["cpa_outside_ram"] = int(outside.sum())
    if outside.any():  # the first one's (line, pfn): load.py's machine check names it
        i = int(np.argmax(outside))
        t.meta["cpa_outside_first"] = (int(cpa_li[i]) + 1, int(off_direct[i] >> u(PAGE_SHIFT)))
    t.meta["cpa_array_calls"] = int((array & keep).sum())
    t.meta["batched_frees"] = int(batched.sum())
    t.meta["pcp_setup_event"] = pcp_setup  # first page event after setup_per_cpu_pageset()
    t.meta["preboot_calls"] = preboot  # where idt_table/.smp_locks came from ("" = not modelled)
    return t
