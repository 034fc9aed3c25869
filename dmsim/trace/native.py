"""dmsim's native text trace format, version 1 (docs/trace-format.md).

    dmsim-trace 1
    e820 0x0 0x1000 reserved
    ...
    cpa direct 0x3f2a1 1 set=0x0 clr=0x2 primary
    alloc 0x3f2a0 0 mt=0
    step mod:xfs
    check direct_map_level2_splits 3

One line per event, `#` comment lines, a header (the machine) before the first
event. The reader checks every field and every address against the machine; the
writer turns any Trace (an ftrace trace's too) into text the reader gives back
unchanged: same event columns, checkpoints and machine.
"""

from __future__ import annotations

import os
import re
from bisect import bisect_right
from collections.abc import Iterable
from typing import TextIO

import numpy as np

from ..core.constants import (
    _PAGE_NX,
    _PAGE_PRESENT,
    _PAGE_RW,
    KERNEL_IMAGE_SIZE,
    PAGE_SHIFT,
)
from ..machine import E820_TYPES, KernelImage, Machine, MachineError
from . import native_scan as _ns
from .errors import LineErrors, TraceError
from .events import (
    COLUMNS,
    CPAF_COLLAPSE,
    CPAF_FORCE_SPLIT,
    CPAF_PRIMARY,
    EV_ALLOC,
    EV_CHECKPOINT,
    EV_CPA,
    EV_FREE,
    EV_H_ALLOC,
    EV_H_CPA,
    EV_H_FREE,
    EV_H_VFREE,
    EV_H_VMALLOC,
    EV_KERNEL_RO,
    EV_SYSTEM_RUNNING,
    EV_VCPA,
    FREE_DEFERRED_INIT,
    SAMPLE,
    SPACE_DIRECT,
    SPACE_HIGHMAP,
    UNMAPPED_GROUPS,
    UNMAPPED_SHIFT,
    VFREE_RESET_PERMS,
    Checkpoint,
    EventArrays,
    EventBuilder,
    Trace,
    join_columns,
)
from .source import line_chunks, scanned

MAGIC = "dmsim-trace"
VERSION = 1
COUNTERS = ("direct_map_level2_splits", "direct_map_level3_splits",
            "DirectMap4k", "DirectMap2M", "DirectMap1G")
HEADER_WORDS = ("machine", "e820", "gbpages", "kernel", "reserve", "overflow")
HANDLE_WORDS = ("page_alloc", "page_free", "vmalloc", "vfree", "set_memory", "hcpa")
EVENT_WORDS = ("cpa", "vcpa", "alloc", "free", "system_running", "kernel_ro", "step", "check",
               "sample") + HANDLE_WORDS
ZONES = {"dma": 0, "dma32": 1, "normal": 2}
MAX_HANDLE = (1 << 31) - 1
# set_memory_*() / set_direct_map_*() in mask terms (6.1; rox is 6.15's): (set, clr, force_split)
SET_MEMORY = {
    "ro": (0, _PAGE_RW, False), "rw": (_PAGE_RW, 0, False),
    "x": (0, _PAGE_NX, False), "nx": (_PAGE_NX, 0, False),
    "np": (0, _PAGE_PRESENT, False), "p": (_PAGE_PRESENT, 0, False),
    "rox": (0, _PAGE_RW | _PAGE_NX, False), "4k": (0, 0, True),
    "invalid": (0, _PAGE_PRESENT | _PAGE_RW, False), "default": (_PAGE_PRESENT | _PAGE_RW, 0, False),
}
KERNEL_KEYS = ("text", "etext", "start_rodata", "end_rodata", "end_rodata_hpage_align",
               "end", "phys_base")
def _group(flags: int) -> str:
    g = (flags >> UNMAPPED_SHIFT) & 0xF
    return "" if g == 0 else " unmapped=" + next(k for k, v in UNMAPPED_GROUPS.items() if v == g)


MAX_ORDER = 10  # highest buddy order in 6.1 (MAX_ORDER - 1: a block of 1024 pages)
MIGRATE_TYPES = 6  # enum migratetype in 6.1: UNMOVABLE .. HIGHATOMIC, CMA, ISOLATE
HIGHMAP_PAGES = KERNEL_IMAGE_SIZE >> PAGE_SHIFT  # the 1 GiB from __START_KERNEL_map
U64 = 1 << 64

HEX_RE = re.compile(r"0[xX][0-9a-fA-F]+")
DEC_RE = re.compile(r"[0-9]+")

E820_NAMES: dict[int, str] = {}
for _name, _value in E820_TYPES.items():
    E820_NAMES.setdefault(_value, _name)  # 1 -> usable (not ram), 2 -> reserved, ...


class _Bad(Exception):
    """A bad line: the message; the caller adds file, line and text."""


def looks_like_native(head: str) -> bool:
    """Auto-detection: the first line is `dmsim-trace <version>`."""
    first = head.lstrip("\ufeff").split("\n", 1)[0].split()
    return bool(first) and first[0] == MAGIC


# ---------------------------------------------------------------------------- reading


def _hex(tok: str, what: str) -> int:
    if HEX_RE.fullmatch(tok) is None:
        raise _Bad(f"{what}: expected a hex number like 0x1f, got {tok!r}")
    return int(tok, 16)


def _dec(tok: str, what: str) -> int:
    if DEC_RE.fullmatch(tok) is None:
        raise _Bad(f"{what}: expected a decimal number, got {tok!r}")
    return int(tok)


def _u64(tok: str, what: str) -> int:
    v = _hex(tok, what)
    if v >= U64:
        raise _Bad(f"{what}: {tok} does not fit in 64 bits")
    return v


def _nargs(tokens: list[str], n: int, usage: str) -> None:
    if len(tokens) != n:
        raise _Bad(f"expected `{usage}`")


def _e820_type(tok: str) -> int:
    if tok in E820_TYPES:
        return E820_TYPES[tok]
    if DEC_RE.fullmatch(tok) and 0 < int(tok) < 1 << 32:
        return int(tok)
    names = ", ".join(sorted(E820_TYPES))
    raise _Bad(f"unknown e820 type {tok!r} (one of {names}, or a decimal number)")


class _Header:
    """The machine lines seen so far, and the machine once the first event comes."""

    def __init__(self, path: str):
        self.path = path
        self.e820: list[tuple[int, int, int]] = []
        self.gbpages: bool | None = None
        self.kernel: KernelImage | None = None
        self.reserved: list[tuple[int, int]] = []
        self.machine_line: tuple[int, str, str] | None = None  # (line, path, text)
        self.inline_line = 0  # first inline machine line
        self.overflow: tuple[int, int] | None = None

    def line(self, lineno: int, tokens: list[str], text: str) -> None:
        word = tokens[0]
        if word == "overflow":
            _nargs(tokens, 3, "overflow <entries kept> <entries written>")
            kept, written = _dec(tokens[1], "entries kept"), _dec(tokens[2], "entries written")
            if self.overflow is not None:
                raise _Bad("a second overflow line")
            if kept > written:
                raise _Bad("more entries kept than written")
            self.overflow = (kept, written)
            return
        if word == "machine":
            if self.machine_line is not None:
                raise _Bad(f"a second `machine` line (the first is line {self.machine_line[0]})")
            if self.inline_line:
                raise _Bad(f"`machine` and inline machine lines (line {self.inline_line}) "
                           "exclude each other")
            rel = text.strip()[len("machine"):].strip()
            if not rel:
                raise _Bad("expected `machine <path to a machine YAML>`")
            self.machine_line = (lineno, rel, text)
            return
        if self.machine_line is not None:
            raise _Bad(f"inline machine lines and `machine` (line {self.machine_line[0]}) "
                       "exclude each other")
        self.inline_line = self.inline_line or lineno
        if word == "e820":
            _nargs(tokens, 4, "e820 <start hex> <end hex> <type>")
            s, e = _u64(tokens[1], "start"), _u64(tokens[2], "end")
            if e <= s:
                raise _Bad(f"end {e:#x} is not above start {s:#x} (end is exclusive)")
            t = _e820_type(tokens[3])
            for s0, e0, _ in self.e820:
                if s < e0 and s0 < e:
                    raise _Bad(f"overlaps the e820 range [{s0:#x}, {e0:#x})")
            self.e820.append((s, e, t))
        elif word == "gbpages":
            _nargs(tokens, 2, "gbpages on|off")
            if self.gbpages is not None:
                raise _Bad("a second gbpages line")
            if tokens[1] not in ("on", "off"):
                raise _Bad(f"gbpages: expected on or off, got {tokens[1]!r}")
            self.gbpages = tokens[1] == "on"
        elif word == "kernel":
            if self.kernel is not None:
                raise _Bad("a second kernel line")
            self.kernel = _kernel(tokens[1:])
        elif word == "reserve":
            _nargs(tokens, 3, "reserve <start hex> <end hex>")
            s, e = _u64(tokens[1], "start"), _u64(tokens[2], "end")
            if e <= s:
                raise _Bad(f"end {e:#x} is not above start {s:#x} (end is exclusive)")
            self.reserved.append((s, e))

    def finish(self, lineno: int, machine: Machine | None) -> tuple[Machine, str]:
        """The machine the events run on, and where it came from."""
        if machine is not None:
            return machine, "given"  # --machine overrides the header
        if self.machine_line is not None:
            from ..machine_config import load_machine

            mline, rel, text = self.machine_line
            base = os.path.dirname(self.path) if self.path != "-" else ""
            yaml_path = rel if os.path.isabs(rel) else os.path.normpath(os.path.join(base, rel))
            try:
                return load_machine(yaml_path), yaml_path
            except MachineError as e:
                raise TraceError(self.path, mline, f"cannot load the machine: {e}", text) from None
        if not self.e820:
            raise TraceError(self.path, lineno, "no machine in the header: give `machine <yaml>` "
                             "or `e820` lines before the first event (or --machine)")
        m = Machine(e820=list(self.e820), gbpages=True if self.gbpages is None else self.gbpages,
                    kernel=self.kernel, reserved=list(self.reserved), name=self.path)
        try:
            m.validate()
        except MachineError as e:
            raise TraceError(self.path, self.inline_line, f"bad machine: {e}") from None
        return m, "inline"


def _kernel(fields: list[str]) -> KernelImage:
    from ..machine_config import kernel_problem

    usage = "kernel " + " ".join(f"{k}=0x.." for k in KERNEL_KEYS)
    kv: dict[str, int] = {}
    for f in fields:
        key, eq, val = f.partition("=")
        if not eq or key not in KERNEL_KEYS:
            raise _Bad(f"kernel: unknown field {f!r}; expected `{usage}`")
        if key in kv:
            raise _Bad(f"kernel: {key} given twice")
        kv[key] = _u64(val, key)
    missing = [k for k in KERNEL_KEYS if k not in kv]
    if missing:
        raise _Bad(f"kernel: {missing[0]}= missing; expected `{usage}`")
    img = KernelImage(**kv)
    problem = kernel_problem(img)
    if problem:
        raise _Bad(f"kernel: {problem}")
    return img


class _Events:
    """Event lines -> rows, with every address checked against the machine."""

    def __init__(self, machine: Machine):
        self.machine = machine
        self.b = EventBuilder(4096)
        self.checkpoints: list[Checkpoint] = []
        self.step = "boot"
        self.window = -1  # the open `sample` window, if any
        self.max_handle = -1  # simulated placement: the handle arrays' size
        self.vmalloc_pages = 0  # simulated placement: the vmalloc pool's size
        self.max_pfn = machine.max_pfn()
        self.highmap_vpfn = machine.highmap_vpfn()
        ranges = machine.ram_pfn_ranges()
        self.ram_start = [s for s, _ in ranges]
        self.ram_end = [e for _, e in ranges]
        self.ram_start_a = np.array(self.ram_start, np.int64)
        self.ram_end_a = np.array(self.ram_end, np.int64)
        self.n_alloc = self.n_free = 0

    def line(self, lineno: int, tokens: list[str], text: str) -> None:
        word = tokens[0]
        if word == "cpa":
            self.cpa(tokens)
        elif word == "vcpa":
            self.vcpa(tokens)
        elif word in HANDLE_WORDS:
            self.handle_event(tokens)
        elif word in ("alloc", "free"):
            self.page(tokens)
        elif word == "check":
            _nargs(tokens, 3, "check <counter> <value>")
            if tokens[1] not in COUNTERS:
                raise _Bad(f"unknown counter {tokens[1]!r} (one of {', '.join(COUNTERS)})")
            value = _dec(tokens[2], tokens[1])
            cp = Checkpoint(len(self.checkpoints), self.step, tokens[1], value, lineno, self.window)
            self.checkpoints.append(cp)
            self.b.append(EV_CHECKPOINT, cp.index)
        elif word == "step":
            self.step = text.strip()[len("step"):].strip()
            self.window = -1
        elif word == SAMPLE:
            _nargs(tokens, 1, SAMPLE)
            cp = Checkpoint(len(self.checkpoints), self.step, SAMPLE, 0, lineno)
            self.checkpoints.append(cp)
            self.b.append(EV_CHECKPOINT, cp.index)
            self.window = cp.index
        elif word == "system_running":
            _nargs(tokens, 1, "system_running")
            self.b.append(EV_SYSTEM_RUNNING)
        elif word == "kernel_ro":
            _nargs(tokens, 1, "kernel_ro")
            self.b.append(EV_KERNEL_RO)
        elif word in HEADER_WORDS:
            raise _Bad(f"`{word}` is a header line: the header must come before the first event")
        else:
            raise _Bad(f"unknown keyword {word!r}")

    def cpa(self, tokens: list[str]) -> None:
        usage = ("cpa direct|highmap <first page hex> <numpages> set=0x.. clr=0x.. [primary] "
                 "[force_split] [collapse]")
        if len(tokens) < 6:
            raise _Bad(f"expected `{usage}`")
        space = tokens[1]
        first = _hex(tokens[2], "first page")
        numpages = _dec(tokens[3], "numpages")
        mask_set = mask_clr = None
        flags = 0
        for tok in tokens[4:]:
            if tok.startswith("set="):
                if mask_set is not None:
                    raise _Bad("set= given twice")
                mask_set = _u64(tok[4:], "set")
            elif tok.startswith("clr="):
                if mask_clr is not None:
                    raise _Bad("clr= given twice")
                mask_clr = _u64(tok[4:], "clr")
            elif tok == "primary" and not flags & CPAF_PRIMARY:
                flags |= CPAF_PRIMARY
            elif tok == "force_split" and not flags & CPAF_FORCE_SPLIT:
                flags |= CPAF_FORCE_SPLIT
            elif tok == "collapse" and not flags & CPAF_COLLAPSE:
                flags |= CPAF_COLLAPSE
            else:
                raise _Bad(f"unexpected field {tok!r}; expected `{usage}`")
        if mask_set is None or mask_clr is None:
            raise _Bad(f"set= and clr= are required; expected `{usage}`")
        end = first + numpages
        if space == SPACE_DIRECT:
            if first >= self.max_pfn or end > self.max_pfn:
                raise _Bad(f"pages [{first:#x}, {end:#x}) run past the end of RAM "
                           f"(max_pfn {self.max_pfn:#x})")
            vpfn = first
        elif space == SPACE_HIGHMAP:
            if first >= HIGHMAP_PAGES or end > HIGHMAP_PAGES:
                raise _Bad(f"pages [{first:#x}, {end:#x}) run past the 1 GiB kernel image "
                           f"mapping (offsets below {HIGHMAP_PAGES:#x})")
            vpfn = self.highmap_vpfn + first
        else:
            raise _Bad(f"cpa space must be direct or highmap, got {space!r}")
        self.b.append(EV_CPA, vpfn, numpages, mask_set, mask_clr, flags)

    def vcpa(self, tokens: list[str]) -> None:
        """A recorded call on a vmalloc address: a marker for vmalloc areas (EV_VCPA)."""
        usage = "vcpa <vmalloc page hex> <numpages> set=0x.. clr=0x.. [primary]"
        if len(tokens) not in (5, 6) or not tokens[3].startswith("set=") \
                or not tokens[4].startswith("clr=") or (len(tokens) == 6 and tokens[5] != "primary"):
            raise _Bad(f"expected `{usage}`")
        page = _hex(tokens[1], "vmalloc page")
        if page >= 1 << 52:
            raise _Bad(f"vmalloc page {page:#x} is not an address >> 12")
        numpages = _dec(tokens[2], "numpages")
        if numpages >= 1 << 63:
            raise _Bad(f"numpages {numpages} does not fit in 63 bits")
        self.b.append(EV_VCPA, page, numpages, _u64(tokens[3][4:], "set"),
                      _u64(tokens[4][4:], "clr"), CPAF_PRIMARY if len(tokens) == 6 else 0)

    def handle(self, tok: str) -> int:
        h = _dec(tok, "handle")
        if h > MAX_HANDLE:
            raise _Bad(f"handle {h} is above {MAX_HANDLE}")
        self.max_handle = max(self.max_handle, h)
        return h

    def handle_event(self, tokens: list[str]) -> None:
        """Events by handle: the simulated allocator places them."""
        word = tokens[0]
        if word == "page_alloc":
            usage = ("page_alloc <handle> <order> [mt=N] [zone=dma|dma32|normal] "
                     f"[unmapped={'|'.join(UNMAPPED_GROUPS)}]")
            if not 3 <= len(tokens) <= 6:
                raise _Bad(f"expected `{usage}`")
            h, order = self.handle(tokens[1]), _dec(tokens[2], "order")
            if order > MAX_ORDER:
                raise _Bad(f"order {order} is above {MAX_ORDER}")
            mt, zone, group = 0, ZONES["normal"], 0
            for tok in tokens[3:]:
                if tok.startswith("mt="):
                    mt = _dec(tok[3:], "mt")
                    if mt > 2:
                        raise _Bad(f"migratetype {mt}: allocations ask for 0 (unmovable), "
                                   "1 (movable) or 2 (reclaimable)")
                elif tok.startswith("zone=") and tok[5:] in ZONES:
                    zone = ZONES[tok[5:]]
                elif tok.startswith("unmapped=") and tok[9:] in UNMAPPED_GROUPS:
                    group = UNMAPPED_GROUPS[tok[9:]]
                else:
                    raise _Bad(f"unexpected field {tok!r}; expected `{usage}`")
            self.b.append(EV_H_ALLOC, h, order, flags=mt | zone << 8 | group << UNMAPPED_SHIFT)
        elif word == "page_free":
            _nargs(tokens, 2, "page_free <handle>")
            self.b.append(EV_H_FREE, self.handle(tokens[1]))
        elif word == "vmalloc":
            usage = f"vmalloc <handle> <npages> [unmapped={'|'.join(UNMAPPED_GROUPS)}]"
            group = 0
            if len(tokens) == 4 and tokens[3].startswith("unmapped=") \
                    and tokens[3][9:] in UNMAPPED_GROUPS:
                group = UNMAPPED_GROUPS[tokens[3][9:]]
            elif len(tokens) != 3:
                raise _Bad(f"expected `{usage}`")
            h, n = self.handle(tokens[1]), _dec(tokens[2], "npages")
            if not 0 < n <= 1 << 24:
                raise _Bad(f"npages {n} is not 1..{1 << 24}")
            self.vmalloc_pages += n
            self.b.append(EV_H_VMALLOC, h, n, flags=group << UNMAPPED_SHIFT)
        elif word == "vfree":
            if len(tokens) not in (2, 3) or (len(tokens) == 3 and tokens[2] != "reset_perms"):
                raise _Bad("expected `vfree <handle> [reset_perms]`")
            self.b.append(EV_H_VFREE, self.handle(tokens[1]),
                          flags=VFREE_RESET_PERMS if len(tokens) == 3 else 0)
        else:  # set_memory <api> <handle> [<first> <n>] | hcpa <handle> <first> <n> set= clr= [force_split]
            if word == "set_memory":
                usage = f"set_memory <{'|'.join(SET_MEMORY)}> <handle> [<first page> <npages>]"
                if len(tokens) not in (3, 5) or tokens[1] not in SET_MEMORY:
                    raise _Bad(f"expected `{usage}`")
                mask_set, mask_clr, force = SET_MEMORY[tokens[1]]
                collapse = tokens[1] == "rox"  # 6.15 set_memory_rox(): CPA_COLLAPSE
                h = self.handle(tokens[2])
                rest = tokens[3:]
            else:
                usage = "hcpa <handle> <first page> <npages> set=0x.. clr=0x.. [force_split]"
                if len(tokens) not in (6, 7) or not tokens[4].startswith("set=") \
                        or not tokens[5].startswith("clr="):
                    raise _Bad(f"expected `{usage}`")
                if len(tokens) == 7 and tokens[6] != "force_split":
                    raise _Bad(f"unexpected field {tokens[6]!r}; expected `{usage}`")
                h = self.handle(tokens[1])
                mask_set, mask_clr = _u64(tokens[4][4:], "set"), _u64(tokens[5][4:], "clr")
                force = len(tokens) == 7
                collapse = False
                rest = tokens[2:4]
            first = _dec(rest[0], "first page") if rest else 0
            n = _dec(rest[1], "npages") if rest else 0  # 0: the rest of the handle
            if first > 0x7FFFFFFF or n > 0xFFFFFFFF:
                raise _Bad("first page must be below 2^31 and npages fit in 32 bits")
            self.b.append(EV_H_CPA, h, first << 32 | n, mask_set, mask_clr,
                          (CPAF_FORCE_SPLIT if force else 0) | (CPAF_COLLAPSE if collapse else 0))

    def page(self, tokens: list[str]) -> None:
        word = tokens[0]
        if word == "alloc":
            if len(tokens) not in (3, 4, 5):
                raise _Bad("expected `alloc <pfn hex> <order> [mt=<migratetype>] "
                           "[zone=dma|dma32|normal]`")
        else:
            deferred = len(tokens) == 4 and tokens[3] == "deferred_init"
            if not deferred:
                _nargs(tokens, 3, "free <pfn hex> <order> [deferred_init]")
        pfn = _hex(tokens[1], "pfn")
        order = _dec(tokens[2], "order")
        if order > MAX_ORDER:
            raise _Bad(f"order {order} is above {MAX_ORDER}")
        if pfn & ((1 << order) - 1):
            raise _Bad(f"pfn {pfn:#x} is not aligned to its order-{order} block")
        end = pfn + (1 << order)
        i = bisect_right(self.ram_start, pfn) - 1
        if i < 0 or end > self.ram_end[i]:
            where = "past the end of RAM" if pfn >= self.max_pfn else "outside RAM (an e820 hole)"
            raise _Bad(f"pages [{pfn:#x}, {end:#x}) are {where} (max_pfn {self.max_pfn:#x})")
        if word == "free":
            self.b.append(EV_FREE, pfn, order, flags=FREE_DEFERRED_INIT if deferred else 0)
            self.n_free += 1
            return
        mt, zone = 0, ZONES["normal"]
        for tok in tokens[3:]:
            if tok.startswith("mt="):
                mt = _dec(tok[3:], "mt")
                if mt >= MIGRATE_TYPES:
                    raise _Bad(f"migratetype {mt} is not 0..{MIGRATE_TYPES - 1}")
            elif tok.startswith("zone=") and tok[5:] in ZONES:
                zone = ZONES[tok[5:]]
            else:
                raise _Bad(f"unexpected field {tok!r}; expected mt=<migratetype> or zone=...")
        self.b.append(EV_ALLOC, pfn, order, flags=mt | zone << 8)
        self.n_alloc += 1


# The bulk path (native_scan.py): the words and limits of the checks above, as arrays.
_FAST = True  # False: every line through the checks above (tests compare the two)
_SCAN_TABLES = _ns.make_tables(
    SET_MEMORY,
    # handle_event(): set_memory's CPA flags
    {api: (CPAF_FORCE_SPLIT if force else 0) | (CPAF_COLLAPSE if api == "rox" else 0)
     for api, (_, _, force) in SET_MEMORY.items()},
    ZONES, UNMAPPED_GROUPS,
    {_ns.C_PRIMARY: CPAF_PRIMARY, _ns.C_FORCE_SPLIT: CPAF_FORCE_SPLIT,
     _ns.C_COLLAPSE: CPAF_COLLAPSE, _ns.C_RESET_PERMS: VFREE_RESET_PERMS,
     _ns.C_UNMAPPED_SHIFT: UNMAPPED_SHIFT, _ns.C_ZONE_DEFAULT: ZONES["normal"]})
_SCAN_LIMITS = _ns.Limits(
    max_order=MAX_ORDER, nr_migratetypes=MIGRATE_TYPES,
    max_h_mt=2,  # handle_event(): page_alloc mt 0..2
    max_handle=MAX_HANDLE,
    max_vmalloc=1 << 24,  # handle_event(): vmalloc npages 1..1 << 24
    # handle_event(): first and npages fit in 32 bits; a first page of 2^31 or more
    # makes an arg1 (first << 32 | n) past int64, which is left to the Python path
    max_first=0x7FFFFFFF, max_n=0xFFFFFFFF,
    vcpa_pages=1 << 52)  # vcpa(): a page below 1 << 52
_EV_KIND = np.zeros(_ns.N_KINDS, np.uint8)
for _k, _ev in ((_ns.N_CPA_DIRECT, EV_CPA), (_ns.N_CPA_HIGHMAP, EV_CPA), (_ns.N_ALLOC, EV_ALLOC),
                (_ns.N_FREE, EV_FREE), (_ns.N_H_ALLOC, EV_H_ALLOC), (_ns.N_H_FREE, EV_H_FREE),
                (_ns.N_H_VMALLOC, EV_H_VMALLOC), (_ns.N_H_VFREE, EV_H_VFREE),
                (_ns.N_H_CPA, EV_H_CPA), (_ns.N_VCPA, EV_VCPA),
                (_ns.N_SYSTEM_RUNNING, EV_SYSTEM_RUNNING), (_ns.N_KERNEL_RO, EV_KERNEL_RO)):
    _EV_KIND[_k] = _ev


def _merge(fast_cols, fast_line: np.ndarray, py: EventArrays, py_line: list[int]) -> list:
    """The two paths' rows in line order (both are in line order already)."""
    if len(py) == 0:
        return list(fast_cols)
    if len(fast_line) == 0:
        return list(py.columns())
    lines = np.array(py_line, np.int64)
    at = np.searchsorted(fast_line, lines) + np.arange(len(lines))  # rows before each
    is_py = np.zeros(len(fast_line) + len(lines), np.bool_)
    is_py[at] = True
    cols = []
    for f, p in zip(fast_cols, py.columns(), strict=True):
        c = np.empty(is_py.shape[0], p.dtype)
        c[is_py] = p
        c[~is_py] = f
        cols.append(c)
    return cols


def parse_native(text: str | bytes, path: str, lenient: bool = False,
                 machine: Machine | None = None) -> Trace:
    """Parse a native trace held in memory (read_native())."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    return read_native(line_chunks([data], path), path, lenient, machine)


def _version_line(path: str, data: bytes) -> None:
    first_nl = data.find(b"\n")
    line0 = (data if first_nl < 0 else data[:first_nl]).decode("utf-8", "replace")
    first = line0.lstrip("\ufeff").split()
    if not first or first[0] != MAGIC:
        raise TraceError(path, 1, f"not a native trace: the first line must be `{MAGIC} {VERSION}`", line0)
    if len(first) != 2 or DEC_RE.fullmatch(first[1]) is None:
        raise TraceError(path, 1, f"expected `{MAGIC} {VERSION}`", line0)
    if int(first[1]) != VERSION:
        raise TraceError(path, 1, f"native trace version {first[1]}: this dmsim reads version "
                         f"{VERSION}", line0)


def read_native(chunks: Iterable[bytes], path: str, lenient: bool = False,
                machine: Machine | None = None) -> Trace:
    """Parse a native trace given as chunks of whole lines (source.line_chunks()).
    `machine` (--machine) replaces the header's machine.

    Strict mode raises TraceError (file:line: message: text) on the first bad
    line; lenient mode skips and counts bad lines (meta skipped_lines). A missing
    or bad version line and a machine that cannot be built are always fatal.
    Event lines in the canonical forms write_native() and `dmsim gen` write are
    tokenised and range-checked in bulk (native_scan.py), a chunk at a time; every
    other line, and any the bulk checks are unsure of, goes through _Header /
    _Events one by one. Memory is the event arrays and a few chunks.
    """
    r = _Reader(path, lenient, machine)
    for data, tokens in scanned(chunks, _scan_bytes):
        r.chunk(data, tokens)
    return r.finish()


def _scan_bytes(data: bytes):
    return _ns.scan(data, _SCAN_TABLES)


class _Reader:
    """The header, then the events, chunk by chunk."""

    def __init__(self, path: str, lenient: bool, machine: Machine | None):
        self.path, self.given = path, machine
        self.errs = LineErrors(path, lenient)
        self.header = _Header(path)
        self.events: _Events | None = None
        self.source = ""
        self.pieces: list[list[np.ndarray]] = []  # event columns, per chunk
        self.offset = 0  # lines before the chunk
        self.fast = {"max_handle": -1, "vmalloc_pages": 0, "allocs": 0, "frees": 0}
        self.started = False

    def chunk(self, data: bytes, tokens) -> None:
        if not self.started:
            _version_line(self.path, data)
        kind, start, a0, a1, a2, mset, mclr, mflags = tokens
        if not _FAST:
            kind[:] = _ns.N_OTHER
        nlines = len(kind)
        self.data, self.start, self.py_line = data, start, []
        li = 0 if self.started else 1
        self.started = True
        if self.events is None:
            while li < nlines:  # the header, up to the first event line
                first_word = self.line_text(li).split(maxsplit=1)[:1]
                if first_word and first_word[0] in EVENT_WORDS:
                    break
                self.python_line(li)
                li += 1
            if li == nlines:
                self.offset += data.count(b"\n")
                return  # the header goes on in the next chunk
            # the first event line closes the header
            m, self.source = self.header.finish(self.offset + li + 1, self.given)
            self.events = _Events(m)
        events = self.events

        # canonical event lines: checked and converted in bulk, in line order
        other, *fast_cols, fast_line, fast_max_handle, fast_vmalloc_pages = _ns.convert_events(
            kind, a0, a1, a2, mset, mclr, mflags, li, events.max_pfn, events.highmap_vpfn,
            HIGHMAP_PAGES, events.ram_start_a, events.ram_end_a, _SCAN_LIMITS, _EV_KIND)
        for oli in np.nonzero(other)[0].tolist():  # the Python path says what is wrong
            self.python_line(oli)
        self.pieces.append(_merge(fast_cols, fast_line, events.b.finish(), self.py_line))
        events.b = EventBuilder(1024)
        fast = self.fast
        fast["max_handle"] = max(fast["max_handle"], int(fast_max_handle))
        fast["vmalloc_pages"] += int(fast_vmalloc_pages)
        fast["allocs"] += int(np.count_nonzero(fast_cols[0] == EV_ALLOC))
        fast["frees"] += int(np.count_nonzero(fast_cols[0] == EV_FREE))
        self.offset += data.count(b"\n")

    def line_text(self, li: int) -> str:
        return self.data[self.start[li]:self.start[li + 1] - 1].decode("utf-8", "replace")

    def python_line(self, li: int) -> None:
        line = self.line_text(li)
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            return
        lineno = self.offset + li + 1
        try:
            if self.events is None:
                if tokens[0] in HEADER_WORDS:
                    self.header.line(lineno, tokens, line)
                    return
                if tokens[0] not in EVENT_WORDS:
                    raise _Bad(f"unknown keyword {tokens[0]!r}")
                m, self.source = self.header.finish(lineno, self.given)
                self.events = _Events(m)
            b = self.events.b
            before = b.n
            self.events.line(lineno, tokens, line)
            self.py_line.extend([li] * (b.n - before))
        except _Bad as e:
            self.errs.bad(lineno, str(e), line)

    def finish(self) -> Trace:
        if not self.started:
            raise TraceError(self.path, 1, "not a native trace: the first line must be "
                             f"`{MAGIC} {VERSION}`")
        if self.events is None:  # no event: the end of the file closes the header
            m, self.source = self.header.finish(0, self.given)
            self.events = _Events(m)
        events, fast = self.events, self.fast
        cols = join_columns(self.pieces, [np.zeros(0, dt) for _, dt in COLUMNS])
        self.pieces = []
        trace = Trace(machine=events.machine, events=EventArrays(*cols),
                      checkpoints=events.checkpoints)
        trace.meta.update({
            "format": "native",
            "native_version": VERSION,
            "machine_source": self.source,
            "page_allocs": events.n_alloc + fast["allocs"],
            "page_frees": events.n_free + fast["frees"],
            "skipped_lines": self.errs.skipped,
            "first_skipped": str(self.errs.first) if self.errs.first else None,
            "handles": max(events.max_handle, fast["max_handle"]) + 1,
            "vmalloc_pages": events.vmalloc_pages + fast["vmalloc_pages"],
        })
        header = self.header
        if header.overflow is not None:
            trace.meta["entries"] = header.overflow
            trace.meta["overflow"] = header.overflow[0] < header.overflow[1]
        return trace


# ---------------------------------------------------------------------------- writing


def machine_lines(m: Machine) -> list[str]:
    """The header lines that describe the machine (e820, gbpages, kernel, reserve)."""
    out = [f"e820 {s:#x} {e:#x} {E820_NAMES.get(t, str(t))}\n" for s, e, t in m.e820]
    out.append(f"gbpages {'on' if m.gbpages else 'off'}\n")
    k = m.kernel
    if k is not None:
        out.append(" ".join(["kernel"] + [f"{f}={getattr(k, f):#x}" for f in KERNEL_KEYS]) + "\n")
    out += [f"reserve {s:#x} {e:#x}\n" for s, e in m.reserved]
    return out


def write_native(trace: Trace, out: TextIO) -> None:
    """Write `trace` so that parse_native() gives back the same events, checkpoints, machine.

    Raises ValueError for a Trace the format cannot hold (unknown event kinds or
    CPA flags, a counter the reader does not know, a checkpoint no event refers to).
    """
    m: Machine = trace.machine
    meta = trace.meta
    buf = [f"{MAGIC} {VERSION}\n"]
    if meta.get("path"):
        buf.append(f"# converted from {meta['path']} ({meta.get('format', 'unknown format')})\n")
    if meta.get("sha256"):
        buf.append(f"# source sha256 {meta['sha256']}\n")
    if m.name:
        buf.append(f"# machine {m.name}\n")
    buf += machine_lines(m)
    if meta.get("overflow") and meta.get("entries"):
        kept, written = meta["entries"]
        buf.append(f"overflow {kept} {written}\n")

    by_index = {cp.index: cp for cp in trace.checkpoints}
    used: set[int] = set()
    step = "boot"
    hm = m.highmap_vpfn()
    ev = trace.events
    for kind, a0, a1, ms, mc, fl in zip(*(c.tolist() for c in ev.columns()), strict=True):
        if kind == EV_CPA:
            if fl & ~(CPAF_PRIMARY | CPAF_FORCE_SPLIT | CPAF_COLLAPSE):
                raise ValueError(f"CPA event with unknown flags {fl:#x}")
            space, first = (SPACE_HIGHMAP, a0 - hm) if a0 >= hm else (SPACE_DIRECT, a0)
            extra = (" primary" if fl & CPAF_PRIMARY else "") + \
                (" force_split" if fl & CPAF_FORCE_SPLIT else "") + \
                (" collapse" if fl & CPAF_COLLAPSE else "")
            buf.append(f"cpa {space} {first:#x} {a1} set={ms:#x} clr={mc:#x}{extra}\n")
        elif kind == EV_ALLOC:
            zone = fl >> 8
            where = "" if zone == ZONES["normal"] else \
                " zone=" + next(z for z, v in ZONES.items() if v == zone)
            buf.append(f"alloc {a0:#x} {a1} mt={fl & 0xFF}{where}\n")
        elif kind == EV_FREE:
            buf.append(f"free {a0:#x} {a1}{' deferred_init' if fl & FREE_DEFERRED_INIT else ''}\n")
        elif kind == EV_CHECKPOINT:
            cp = by_index.get(a0)
            if cp is None or a0 in used:
                raise ValueError(f"EV_CHECKPOINT refers to checkpoint {a0}: "
                                 + ("used twice" if cp else "no such checkpoint"))
            used.add(a0)
            if cp.counter not in COUNTERS and cp.counter != SAMPLE:
                raise ValueError(f"checkpoint counter {cp.counter!r} is not one of {COUNTERS}")
            if cp.step != step:
                if cp.step != cp.step.strip() or "\n" in cp.step:
                    raise ValueError(f"step name {cp.step!r} has surrounding blanks or a newline")
                step = cp.step
                buf.append(f"step {step}\n" if step else "step\n")
            buf.append(f"{SAMPLE}\n" if cp.counter == SAMPLE else f"check {cp.counter} {cp.value}\n")
        elif kind == EV_H_ALLOC:
            zone = next(z for z, v in ZONES.items() if v == (fl >> 8) & 0xF)
            buf.append(f"page_alloc {a0} {a1} mt={fl & 0xFF} zone={zone}{_group(fl)}\n")
        elif kind == EV_H_FREE:
            buf.append(f"page_free {a0}\n")
        elif kind == EV_H_VMALLOC:
            buf.append(f"vmalloc {a0} {a1}{_group(fl)}\n")
        elif kind == EV_H_VFREE:
            buf.append(f"vfree {a0}{' reset_perms' if fl & VFREE_RESET_PERMS else ''}\n")
        elif kind == EV_H_CPA:
            if fl & CPAF_COLLAPSE:  # only set_memory_rox() asks for a collapse
                buf.append(f"set_memory rox {a0} {a1 >> 32} {a1 & 0xFFFFFFFF}\n")
            else:
                buf.append(f"hcpa {a0} {a1 >> 32} {a1 & 0xFFFFFFFF} set={ms:#x} clr={mc:#x}"
                           f"{' force_split' if fl & CPAF_FORCE_SPLIT else ''}\n")
        elif kind == EV_VCPA:
            buf.append(f"vcpa {a0:#x} {a1} set={ms:#x} clr={mc:#x}"
                       f"{' primary' if fl & CPAF_PRIMARY else ''}\n")
        elif kind == EV_SYSTEM_RUNNING:
            buf.append("system_running\n")
        elif kind == EV_KERNEL_RO:
            buf.append("kernel_ro\n")
        else:
            raise ValueError(f"unknown event kind {kind}")
        if len(buf) >= 8192:
            out.write("".join(buf))
            buf.clear()
    if len(used) != len(by_index):
        raise ValueError(f"{len(by_index) - len(used)} checkpoints are not referenced by any "
                         "EV_CHECKPOINT event")
    out.write("".join(buf))
