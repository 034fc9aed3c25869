"""Zone layout and per-zone defaults computed at boot (Linux 6.1, x86-64).

Pure Python, no numba: these run once, before the allocator kernels in
``buddy.py`` see the arrays.

- ``zone_layout``: ``free_area_init`` / ``zone_spanned_pages_in_node`` (mm/page_alloc.c):
  each zone spans the node's pfn range clamped to the arch limits
  (``MAX_DMA_PFN`` = 16 MiB, ``MAX_DMA32_PFN`` = 4 GiB on x86-64).
- ``boot_sizing``: min_free_kbytes (``calculate_min_free_kbytes``, raised by khugepaged's
  ``set_recommended_min_free_kbytes`` (mm/khugepaged.c) on a kernel with transparent
  hugepages enabled: Debian's 6.1 boots with THP "always", and the guests' min_free_kbytes
  of 45056/67584 kB is exactly the recommended value), the watermarks
  (``__setup_per_zone_wmarks``), ``lowmem_reserve[]`` (``setup_per_zone_lowmem_reserve``)
  and the pcp batch/high (``zone_batchsize`` / ``zone_highsize``); ``pcp_defaults`` is its
  pcp part. Checked against the real guests in tests/test_zones.py (docs/kernel-notes.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ZONE_DMA = 0
ZONE_DMA32 = 1
ZONE_NORMAL = 2
MAX_NR_ZONES = 3
ZONE_NAMES = ("DMA", "DMA32", "Normal")

MAX_DMA_PFN = (16 << 20) >> 12  # arch/x86/include/asm/dma.h: 16 MiB
MAX_DMA32_PFN = (4 << 30) >> 12  # 4 GiB

PAGEBLOCK_NR_PAGES = 512
MIGRATE_PCPTYPES = 3


@dataclass(frozen=True)
class ZoneSpan:
    """One zone of node 0: [start_pfn, end_pfn) spanned, present RAM pages in it."""

    idx: int
    start_pfn: int
    end_pfn: int
    present_pages: int

    @property
    def name(self) -> str:
        return ZONE_NAMES[self.idx]

    @property
    def populated(self) -> bool:
        """populated_zone(): the zone has present pages."""
        return self.present_pages > 0


def zone_layout(memory_pfn_ranges: list[tuple[int, int]]) -> list[ZoneSpan]:
    """Model of ``zone_spanned_pages_in_node`` for node 0 (mm/page_alloc.c, 6.1).

    ``memory_pfn_ranges`` is memblock.memory as [start_pfn, end_pfn) ranges
    (PFN_UP(start), PFN_DOWN(end), as ``for_each_mem_pfn_range`` gives them).
    x86-64 ``zone_sizes_init``: max_zone_pfns = {MAX_DMA_PFN, MAX_DMA32_PFN, max_low_pfn}
    (max_low_pfn == max_pfn after ``init_mem_mapping``), and ``free_area_init``
    makes arch_zone_lowest_possible_pfn of each zone the previous zone's end,
    starting from the start of DRAM.
    """
    ranges = sorted((s, e) for s, e in memory_pfn_ranges if e > s)
    if not ranges:
        raise ValueError("no memory ranges")
    node_start = ranges[0][0]
    node_end = max(e for _, e in ranges)
    limits = [min(MAX_DMA_PFN, node_end), min(MAX_DMA32_PFN, node_end), node_end]
    out = []
    low = node_start
    for idx in range(MAX_NR_ZONES):
        high = max(limits[idx], low)
        zs = min(max(node_start, low), high)
        ze = min(max(node_end, low), high)
        present = sum(max(0, min(e, ze) - max(s, zs)) for s, e in ranges)
        out.append(ZoneSpan(idx, zs, ze, present))
        low = high
    return out


PAGES_PER_SECTION = 1 << (27 - 12)  # SECTION_SIZE_BITS 27 on x86-64: 128 MiB


def first_deferred_pfn(memory_pfn_ranges: list[tuple[int, int]]) -> int | None:
    """Where CONFIG_DEFERRED_STRUCT_PAGE_INIT stops memmap_init() (6.1 ``defer_init()``):
    only the node's highest zone defers, after one section's worth of its memory pfns,
    at the next section-aligned pfn. None when that zone is too small to defer.
    deferred_init_memmap() (the pgdatinit kthread) frees the rest later."""
    spans = [z for z in zone_layout(memory_pfn_ranges) if z.end_pfn > z.start_pfn]
    top = spans[-1]  # end_pfn == pgdat_end_pfn(): the only zone defer_init() defers
    nr_initialised = 0
    for s, e in sorted(memory_pfn_ranges):
        s, e = max(s, top.start_pfn), min(e, top.end_pfn)
        if s >= e:
            continue
        # the first pfn p in [s, e) with nr_initialised + (p - s + 1) > PAGES_PER_SECTION,
        # then the first section-aligned pfn from there
        p = max(s, s + PAGES_PER_SECTION - nr_initialised)
        p = -(-p // PAGES_PER_SECTION) * PAGES_PER_SECTION
        if p < e:
            return p
        nr_initialised += e - s
    return None


def zone_batchsize(managed_pages: int) -> int:
    """``zone_batchsize`` (mm/page_alloc.c, 6.1): ~0.1% of the zone or 1 MiB, a quarter
    of it, clamped to 2^n - 1; the caller applies max(1, ...). Plain integer code, so
    the core compiles this same function (core/buddy.py)."""
    batch = min(managed_pages >> 10, (1 << 20) // 4096) // 4
    if batch < 1:
        batch = 1
    batch = batch + batch // 2
    p = 1  # rounddown_pow_of_two()
    while p * 2 <= batch:
        p *= 2
    return p - 1


LOWMEM_RESERVE_RATIO = (256, 256, 32)  # sysctl_lowmem_reserve_ratio[] (DMA, DMA32, Normal)
WATERMARK_SCALE_FACTOR = 10  # watermark_scale_factor


def nr_free_buffer_pages(managed: list[int], high_wmarks: list[int]) -> int:
    """``nr_free_buffer_pages``: sum of managed - high watermark over the zones up to
    gfp_zone(GFP_USER) (``nr_free_zone_pages``; all three zones here)."""
    return sum(max(0, m - h) for m, h in zip(managed, high_wmarks, strict=True))


def calculate_min_free_kbytes(free_buffer_pages: int) -> int:
    """``calculate_min_free_kbytes``: int_sqrt(lowmem_kbytes * 16) clamped to [128, 262144]
    (no user_min_free_kbytes at boot)."""
    return max(128, min(math.isqrt(free_buffer_pages * 4 * 16), 262144))


def recommended_min_free_kbytes(nr_populated_zones: int, free_buffer_pages: int) -> int:
    """khugepaged's ``set_recommended_min_free_kbytes`` (mm/khugepaged.c, 6.1), THP enabled:
    2 free pageblocks per populated zone plus MIGRATE_PCPTYPES^2 pageblocks per zone for
    fallbacks, capped at 5% of nr_free_buffer_pages(); the caller raises min_free_kbytes to
    it only when it is larger."""
    rec = PAGEBLOCK_NR_PAGES * nr_populated_zones * 2
    rec += PAGEBLOCK_NR_PAGES * nr_populated_zones * MIGRATE_PCPTYPES * MIGRATE_PCPTYPES
    return min(rec, free_buffer_pages // 20) * 4


def watermarks(managed: list[int], min_free_kbytes: int,
               watermark_scale_factor: int = WATERMARK_SCALE_FACTOR):
    """``__setup_per_zone_wmarks``: (min, low, high) per zone, in pages.

    min = pages_min * managed / lowmem_pages; low = min + tmp, high = low + tmp with
    tmp = max(min / 4, mult_frac(managed, watermark_scale_factor, 10000)).
    """
    pages_min = min_free_kbytes >> 2
    lowmem = sum(managed)
    out = []
    for m in managed:
        wmin = (pages_min * m) // lowmem if lowmem else 0
        tmp = max(wmin >> 2, (m * watermark_scale_factor) // 10000)
        low = wmin + tmp
        out.append((wmin, low, low + tmp))
    return out


def lowmem_reserve(managed: list[int], ratios=LOWMEM_RESERVE_RATIO) -> list[list[int]]:
    """``setup_per_zone_lowmem_reserve`` (6.1): out[i][j] = zone i's lowmem_reserve[j].

    For j > i: the managed pages of zones i+1..j over sysctl_lowmem_reserve_ratio[i], or 0
    when the ratio is 0 or zone i has no managed pages; 0 for j <= i.
    """
    n = len(managed)
    out = [[0] * n for _ in range(n)]
    for i in range(n - 1):
        clear = not ratios[i] or not managed[i]
        upper = 0
        for j in range(i + 1, n):
            upper += managed[j]
            out[i][j] = 0 if clear else upper // ratios[i]
    return out


def zone_highsize(low_wmark: int, batch: int, nr_cpus: int = 1) -> int:
    """``zone_highsize`` with percpu_pagelist_high_fraction == 0: the low watermark split
    over the node's CPUs (cpu_online == 0, as from ``setup_per_zone_wmarks``), at least
    batch * 4."""
    return max(low_wmark // max(1, nr_cpus), batch << 2)


@dataclass(frozen=True)
class ZoneSizing:
    """What boot leaves in each zone: min_free_kbytes, _watermark[], lowmem_reserve[] and
    the pcp (batch, high), all from the managed pages of each zone."""

    min_free_kbytes: int
    wmarks: list[tuple[int, int, int]]  # (min, low, high) per zone
    lowmem_reserve: list[list[int]]  # [zone][j]
    pcp: list[tuple[int, int]]  # (batch, high) per zone


def boot_sizing(managed: list[int], present: list[int] | None = None, *, nr_cpus: int = 1,
                thp: bool = True, min_free_kbytes: int | None = None,
                watermark_scale_factor: int = WATERMARK_SCALE_FACTOR) -> ZoneSizing:
    """The boot sequence that sizes the zones (6.1), from each zone's managed pages.

    1. ``init_per_zone_wmark_min`` (postcore_initcall): ``calculate_min_free_kbytes``
       (nr_free_buffer_pages() with the watermarks still 0), ``setup_per_zone_wmarks``,
       ``setup_per_zone_lowmem_reserve``.
    2. ``hugepage_init`` (subsys_initcall) -> ``start_stop_khugepaged`` ->
       ``set_recommended_min_free_kbytes`` when THP is enabled ("always" or "madvise"):
       nr_free_buffer_pages() now net of the high watermarks of step 1; then
       ``setup_per_zone_wmarks`` again.
    ``setup_per_zone_wmarks`` ends with ``zone_pcp_update(zone, 0)`` for every zone:
    ``zone_set_pageset_high_and_batch``: batch = max(1, zone_batchsize()), high =
    ``zone_highsize``. Unpopulated zones keep the boot pageset: (1, 0).
    ``present``: present pages per zone (populated_zone()); None: populated = managed.
    ``min_free_kbytes`` / ``watermark_scale_factor``: values written to vm.min_free_kbytes /
    vm.watermark_scale_factor after boot (``min_free_kbytes_sysctl_handler``,
    ``watermark_scale_factor_sysctl_handler``: ``setup_per_zone_wmarks`` again; the
    lowmem_reserve[] stays). min_free_kbytes=0 with watermark_scale_factor=1 (the sysctls'
    lower bounds) gives watermarks of 0 on a zone below 10000 managed pages.
    """
    if present is None:
        present = managed
    populated = [p > 0 for p in present]
    mfk = calculate_min_free_kbytes(nr_free_buffer_pages(managed, [0] * len(managed)))
    if thp:
        first = watermarks(managed, mfk)
        rec = recommended_min_free_kbytes(
            sum(populated), nr_free_buffer_pages(managed, [h for _, _, h in first]))
        mfk = max(mfk, rec)
    if min_free_kbytes is not None:
        mfk = min_free_kbytes
    wm = watermarks(managed, mfk, watermark_scale_factor)
    pcp = []
    for m, pop, (_wmin, low, _high) in zip(managed, populated, wm, strict=True):
        if not pop:
            pcp.append((1, 0))
            continue
        batch = max(1, zone_batchsize(m))
        pcp.append((batch, zone_highsize(low, batch, nr_cpus)))
    return ZoneSizing(mfk, wm, lowmem_reserve(managed), pcp)


def pcp_defaults(managed: list[int], nr_cpus: int = 1, thp_recommended: bool = True,
                 present: list[int] | None = None):
    """Per-zone (batch, high) as 6.1 sets them after boot (``boot_sizing``); unpopulated
    zones get (1, 0), the boot pageset."""
    return boot_sizing(managed, present, nr_cpus=nr_cpus, thp=thp_recommended).pcp
