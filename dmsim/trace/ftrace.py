"""Reader for real Linux ftrace text: /sys/kernel/tracing/trace or
`trace-cmd report`, optionally preceded by the e820 lines of dmesg
(the recording contract, SPEC section 6).

Events are found by their `<timestamp>: <event>: ` shape, not by column, since
the prefix differs between kernel versions and tools.
"""

from __future__ import annotations

import re
from dataclasses import replace

from ..core.constants import (
    _PAGE_RW,
    KERNEL_IMAGE_SIZE,
    PAGE_SHIFT,
    PUD_PAGES,
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
    Checkpoint,
    EventBuilder,
    Trace,
)
from .preboot import early_symbols, start_kernel_calls

EVENT_RE = re.compile(r"\s(\d+\.\d+):\s+([\w/]+):\s?(.*)$")
E820_RE = re.compile(r"BIOS-e820: \[mem (0x[0-9a-fA-F]+)-(0x[0-9a-fA-F]+)\] (.+?)\s*$")
E820_UPDATE_RE = re.compile(
    r"e820: update \[mem (0x[0-9a-fA-F]+)-(0x[0-9a-fA-F]+)\] (\S+) ==> (\S+)")
E820_REMOVE_RE = re.compile(r"e820: remove \[mem (0x[0-9a-fA-F]+)-(0x[0-9a-fA-F]+)\] (\S+)")
DMESG_RE = re.compile(r"^\s*(<\d+>)?\[\s*\d+\.\d+\]")
ENTRIES_RE = re.compile(r"entries-in-buffer/entries-written:\s*(\d+)/(\d+)")
KV_RE = re.compile(r"(\w+)=(\S+)")

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


class _CpaRecord:
    __slots__ = ("vaddr", "numpages", "mask_set", "mask_clr", "flags", "primary", "pob", "pb", "line", "text")

    def __init__(self, kv: dict[str, str], line: int, text: str):
        self.vaddr = _int(kv["vaddr"])
        self.numpages = _int(kv["numpages"])
        self.mask_set = _int(kv["set"])
        self.mask_clr = _int(kv["clr"])
        self.flags = _int(kv.get("flags", "0"))
        self.primary = _int(kv["primary"])
        self.pob = _int(kv["pob"])
        self.pb = _int(kv.get("pb", "0"))
        self.line, self.text = line, text


def parse_ftrace(text: str, path: str, lenient: bool = False, machine: Machine | None = None) -> Trace:
    """Parse the trace text into a Trace (machine, events, checkpoints)."""
    errs = LineErrors(path, lenient)
    e820: list[tuple[int, int, int]] = []
    kallsyms: dict[str, int] = {}
    overflow: tuple[int, int] | None = None
    # The ordered stream before address translation: ("cpa", rec) or (kind, ...)
    stream: list[tuple] = []
    checkpoints: list[Checkpoint] = []
    step = "boot"
    seen_running = False
    n_alloc = n_free = 0
    meminfo_seen: set[str] = set()

    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
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
        try:
            if event in KMEM_EVENTS:
                kv = dict(KV_RE.findall(payload))
                pfn = _int(kv["pfn"])
                order = int(kv.get("order", "0"))
                if event == "mm_page_alloc":
                    stream.append((EV_ALLOC, pfn, order, int(kv.get("migratetype", "0"))))
                    n_alloc += 1
                else:
                    stream.append((EV_FREE, pfn, order, 0))
                    n_free += 1
            elif event in CPA_EVENTS:
                stream.append(("cpa", _CpaRecord(dict(KV_RE.findall(payload)), lineno, line)))
            elif event in MARKER_EVENTS:
                pos = payload.find("dmsim: ")
                if pos < 0:
                    continue  # somebody else's trace_marker write
                words = payload[pos + 7:].split()
                if not words:
                    errs.bad(lineno, "empty dmsim marker", line)
                    continue
                what = words[0]
                if what == "system_running":
                    stream.append((EV_SYSTEM_RUNNING,))
                    seen_running = True
                elif what == "kallsyms":
                    kallsyms[words[1]] = _int(words[2])
                elif what == "step":
                    step = " ".join(words[1:])
                elif what == "vmstat":
                    if words[1] in METERED:
                        checkpoints.append(Checkpoint(len(checkpoints), step, words[1], int(words[2]), lineno))
                        stream.append((EV_CHECKPOINT, checkpoints[-1].index))
                elif what == "meminfo":
                    name = words[1].rstrip(":")
                    if name in METERED:
                        meminfo_seen.add(name)
                        checkpoints.append(Checkpoint(len(checkpoints), step, name, int(words[2]), lineno))
                        stream.append((EV_CHECKPOINT, checkpoints[-1].index))
                # other markers (end, notes) carry no state
            else:
                errs.bad(lineno, f"unknown trace event '{event}'", line)
        except (KeyError, ValueError, IndexError):
            errs.bad(lineno, f"malformed {event} event", line)

    if machine is None:
        if not e820:
            raise TraceError(path, 0, "no e820 lines in the trace: give the machine with --machine")
        machine = _machine_from_trace(path, e820, kallsyms, stream, meminfo_seen)
    elif machine.kernel is None:
        # a machine config gives the RAM; where KASLR put the kernel is in the trace
        found = _machine_from_trace(path, machine.e820, kallsyms, stream, meminfo_seen)
        machine = replace(machine, kernel=found.kernel, reserved=machine.reserved or found.reserved)
    trace = _translate(path, machine, stream, checkpoints, kallsyms)
    trace.meta.update({
        "format": "ftrace",
        "overflow": overflow is not None and overflow[0] < overflow[1],
        "entries": overflow,
        "system_running_marker": seen_running,
        "kallsyms": kallsyms,
        "page_allocs": n_alloc,
        "page_frees": n_free,
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


def _machine_from_trace(path, e820, kallsyms, stream, meminfo_seen) -> Machine:
    phys_base = next((item[1].pb for item in stream if item[0] == "cpa"), None)
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


def _translate(path, machine: Machine, stream, checkpoints, kallsyms) -> Trace:
    """Turn virtual addresses into vpfns, and place EV_KERNEL_RO."""
    nr_direct_puds = max(1, -(-machine.max_pfn() // PUD_PAGES))
    highmap_vpfn = nr_direct_puds * PUD_PAGES
    direct_span = highmap_vpfn << PAGE_SHIFT
    k = machine.kernel
    ro_pages = ((k.end_rodata_hpage_align - k.text) >> PAGE_SHIFT) if k else -1
    b = EventBuilder(max(1024, len(stream)))
    n_vmalloc = n_outside = 0
    preboot = ""
    if k is not None:
        syms, preboot = early_symbols(k, kallsyms)
        for row in start_kernel_calls(k, syms, highmap_vpfn):
            b.append(*row)
    ro_pending = False
    for item in stream:
        kind = item[0]
        if kind != "cpa":
            # page allocations (the split's own page-table page) happen inside
            # set_memory_ro(); only a marker ends it
            if ro_pending and kind not in (EV_ALLOC, EV_FREE):
                b.append(EV_KERNEL_RO)
                ro_pending = False
            b.append(kind, *item[1:3], flags=item[3] if len(item) > 3 else 0)
            continue
        r = item[1]
        vaddr = r.vaddr & ~0xFFF  # change_page_attr_set_clr() aligns down
        if r.pob <= vaddr < r.pob + direct_span:
            vpfn = (vaddr - r.pob) >> PAGE_SHIFT
            is_alias = r.primary == 0
        elif START_KERNEL_MAP <= vaddr < START_KERNEL_MAP + KERNEL_IMAGE_SIZE:
            vpfn = highmap_vpfn + ((vaddr - START_KERNEL_MAP) >> PAGE_SHIFT)
            is_alias = False
        elif r.pob <= vaddr < r.pob + (1 << 46):
            n_outside += 1  # direct-map address past the end of RAM: nothing mapped
            continue
        else:
            n_vmalloc += 1  # vmalloc/module space: matters only through its aliases
            continue
        if ro_pending and not is_alias:
            b.append(EV_KERNEL_RO)
            ro_pending = False
        flags = CPAF_PRIMARY if r.primary else 0
        b.append(EV_CPA, vpfn, r.numpages, r.mask_set, r.mask_clr, flags)
        # mark_rodata_ro(): set_memory_ro(_text .. __end_rodata_hpage_align), then
        # kernel_set_to_readonly = 1 once it (and its alias calls) returned
        if k is not None and vaddr == k.text and (r.mask_clr & _PAGE_RW) and r.numpages == ro_pages:
            ro_pending = True
    if ro_pending:
        b.append(EV_KERNEL_RO)
    t = Trace(machine=machine, events=b.finish(), checkpoints=checkpoints)
    t.meta["cpa_vmalloc"] = n_vmalloc
    t.meta["preboot_calls"] = preboot  # where idt_table/.smp_locks came from ("" = not modelled)
    t.meta["cpa_outside_ram"] = n_outside
    return t
