"""The event array: the one format every reader produces and the core consumes.

Columns (numpy, one row per event):
  kind      uint8   EV_*
  arg0      int64   CPA: first vpfn; ALLOC/FREE: pfn; CHECKPOINT: snapshot index
  arg1      int64   CPA: numpages; ALLOC/FREE: order
  mask_set  uint64  CPA: cpa->mask_set
  mask_clr  uint64  CPA: cpa->mask_clr
  flags     int32   CPA: CPAF_*; ALLOC: migratetype | gfp_zone() << 8 (0 DMA, 1 DMA32, 2 Normal)
The vpfn of a direct-map address is its pfn; the kernel image's high mapping
sits one GiB slot above the direct map (see core/state.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EV_CPA = 1  # __change_page_attr_set_clr() entry
EV_SYSTEM_RUNNING = 2  # system_state = SYSTEM_RUNNING
EV_KERNEL_RO = 3  # mark_rodata_ro() sets kernel_set_to_readonly
EV_CHECKPOINT = 4  # snapshot the counters (a kernel checkpoint follows it)
EV_ALLOC = 5  # kmem:mm_page_alloc
EV_FREE = 6  # kmem:mm_page_free / mm_page_free_batched
# Simulated placement: events name allocations by handle; the allocator places them.
EV_H_ALLOC = 7  # arg0 handle, arg1 order, flags migratetype | zone << 8: alloc_pages()
EV_H_FREE = 8  # arg0 handle: __free_pages()
EV_H_VMALLOC = 9  # arg0 handle, arg1 npages: vmalloc() of order-0 pages (module_alloc)
EV_H_VFREE = 10  # arg0 handle, flags VFREE_RESET_PERMS: vfree()
EV_H_CPA = 11  # arg0 handle, arg1 first << 32 | n, masks, CPAF_*: set_memory_*() on its pages
EV_H_CLAIM = 12  # arg0 handle, arg1 order, mask_set pfn: a block allocated before the trace
# A recorded CPA call on a vmalloc address (module space): the replay does not apply it
# (its alias calls follow as their own events); it tells which alias calls belong to
# which vmalloc area (trace/retarget.py). arg0 vaddr >> PAGE_SHIFT, arg1 numpages.
EV_VCPA = 13
# arg0 the kernel's first traced pfn, arg1 a limit in pages, flags mt | zone << 8: the
# allocations made before the trace's events were on (core/pretrace.py), inferred
EV_H_FILL = 14
FILL_BOOT_PAGESET = 1 << 16  # EV_H_FILL flags: the boot pageset stays on until EV_H_PCP_SETUP
EV_H_PCP_SETUP = 15  # setup_per_cpu_pageset(): the pcp lists get their batch and high
# CONFIG_DEFERRED_STRUCT_PAGE_INIT (core/buddy.py defer_struct_pages()): arg0 the first
# deferred pfn, arg1 the zone's end: that memory joins the allocator only as freed
EV_H_DEFER = 16
FREE_DEFERRED_INIT = 1  # EV_FREE / EV_H_FREE flags: freed by the pgdatinit kthread
EV_H_WMARK_INIT = 17  # init_per_zone_wmark_min(): the pcp lists get their final sizes
VFREE_RESET_PERMS = 1  # the area has VM_FLUSH_RESET_PERMS (module, BPF memory)
CPAF_RAW = 4  # EV_H_CPA: a recorded call moved onto the handle's pages, applied as recorded

CPAF_PRIMARY = 1  # the call's `primary` (checkalias) argument
CPAF_FORCE_SPLIT = 2  # cpa->force_split (set_memory_4k)
CPAF_COLLAPSE = 8  # CPA_COLLAPSE (6.15 set_memory_rox): collapse the range after the call

# Who would ask for __GFP_UNMAPPED (docs/design-policies.md): EV_H_ALLOC and
# EV_H_VMALLOC flags bits 12-15; a policy's unmapped_users picks the groups.
UNMAPPED_SHIFT = 12
# EV_H_ALLOC flags of a recorded trace under --placement simulate (trace/retarget.py)
H_RECORDED = 1 << 16  # mask_set holds the pfn the kernel gave this allocation
H_PT_PAGE = 1 << 17  # split_large_page()'s page-table page: the core allocates its own
# an allocation the trace does not show (alloc_pages_bulk()), rebuilt before its free;
# mask_set holds the kernel's pfn (shadow placement follows it without scoring it)
H_REBUILT = 1 << 18
UNMAPPED_NONE = 0
UNMAPPED_SECRETMEM = 1  # memfd_secret pages
UNMAPPED_MODULE = 2  # module_alloc()
UNMAPPED_BPF = 3  # BPF JIT memory (bpf_jit_alloc_exec() -> module_alloc())
UNMAPPED_OTHER = 4
UNMAPPED_GROUPS = {"secretmem": UNMAPPED_SECRETMEM, "module": UNMAPPED_MODULE,
                   "bpf": UNMAPPED_BPF, "other": UNMAPPED_OTHER}

SPACE_DIRECT = "direct"
SPACE_HIGHMAP = "highmap"

COLUMNS = (("kind", np.uint8), ("arg0", np.int64), ("arg1", np.int64),
           ("mask_set", np.uint64), ("mask_clr", np.uint64), ("flags", np.int32))


@dataclass
class EventArrays:
    kind: np.ndarray
    arg0: np.ndarray
    arg1: np.ndarray
    mask_set: np.ndarray
    mask_clr: np.ndarray
    flags: np.ndarray

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    @classmethod
    def empty(cls, n: int = 0) -> EventArrays:
        return cls(*(np.zeros(n, dt) for _, dt in COLUMNS))

    def columns(self) -> tuple[np.ndarray, ...]:
        return tuple(getattr(self, name) for name, _ in COLUMNS)


class EventBuilder:
    """Append events row by row; growth is amortised (readers call this per line)."""

    def __init__(self, capacity: int = 1024):
        self._cols = [np.zeros(capacity, dt) for _, dt in COLUMNS]
        self.n = 0

    def append(self, kind: int, arg0: int = 0, arg1: int = 0, mask_set: int = 0,
               mask_clr: int = 0, flags: int = 0) -> int:
        if self.n == self._cols[0].shape[0]:
            self._cols = [np.concatenate([c, np.zeros_like(c)]) for c in self._cols]
        n = self.n
        c = self._cols
        c[0][n] = kind
        c[1][n] = arg0
        c[2][n] = arg1
        c[3][n] = mask_set
        c[4][n] = mask_clr
        c[5][n] = flags
        self.n += 1
        return n

    def finish(self) -> EventArrays:
        return EventArrays(*(c[: self.n].copy() for c in self._cols))


def join_columns(pieces: list[list], heads) -> list[np.ndarray]:
    """The readers' per-chunk columns joined: column i is heads[i] then every
    piece's column i. Each piece's column is dropped once copied and the memory
    freed is given back to the OS, so the peak is the pieces plus one joined column,
    not the pieces plus every joined column (about 90 bytes an event for 45)."""
    out = []
    for ci, head in enumerate(heads):
        out.append(np.concatenate([head] + [p[ci] for p in pieces]).astype(head.dtype, copy=False))
        for p in pieces:
            p[ci] = None
        release_freed_memory()
    return out


_malloc_trim = None


def release_freed_memory() -> None:
    """glibc's malloc_trim(0): freed heap memory back to the OS (the chunks' small
    arrays come from the heaps of several threads, which free() alone keeps). A no-op
    where there is no glibc."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes

        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


SAMPLE = "sample"  # the counter name of a window-opening checkpoint


@dataclass
class Checkpoint:
    """A counter value the kernel reported at a point in the trace.

    The recorder reads /proc/vmstat and /proc/meminfo after writing a `sample`
    marker and before writing the values; other tasks can change the direct map
    in between, so the kernel's value belongs somewhere in that window. A
    checkpoint whose counter is SAMPLE marks a window's start; `window` is the
    index of the one this value belongs to (-1: no window, exact at the marker).
    """

    index: int  # snapshot index (EV_CHECKPOINT arg0)
    step: str
    counter: str  # direct_map_level2_splits, DirectMap4k, ... or SAMPLE
    value: int  # vmstat: events; meminfo: kB
    line: int
    window: int = -1


@dataclass
class Trace:
    """A parsed trace: the machine, the events, the kernel's checkpoints."""

    machine: object  # dmsim.machine.Machine
    events: EventArrays
    checkpoints: list[Checkpoint] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    # the source line of each event (0: an event the reader made up, e.g. a
    # start_kernel() call); None when the reader does not keep them
    lines: np.ndarray | None = None
    # --placement simulate of a recorded trace: the pfn the kernel gave each vmalloc
    # page, in the order EV_H_VMALLOC events take them (-1: not known); None otherwise
    vmalloc_pfns: np.ndarray | None = None
