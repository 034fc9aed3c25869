"""Zone layout and per-zone defaults computed at boot (Linux 6.1, x86-64).

Pure Python, no numba: these run once, before the allocator kernels in
``buddy.py`` see the arrays.

- ``zone_layout``: ``free_area_init`` / ``zone_spanned_pages_in_node`` (mm/page_alloc.c):
  each zone spans the node's pfn range clamped to the arch limits
  (``MAX_DMA_PFN`` = 16 MiB, ``MAX_DMA32_PFN`` = 4 GiB on x86-64).
- ``pcp_defaults``: ``zone_batchsize`` / ``zone_highsize`` with the low watermark
  that ``__setup_per_zone_wmarks`` derives from ``min_free_kbytes``
  (``calculate_min_free_kbytes``), optionally raised by khugepaged's
  ``set_recommended_min_free_kbytes`` (mm/khugepaged.c) as on a kernel with
  transparent hugepages enabled (Debian: ``madvise``).
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


def rounddown_pow_of_two(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def zone_batchsize(managed_pages: int) -> int:
    """``zone_batchsize`` (mm/page_alloc.c, 6.1); the caller applies max(1, ...)."""
    batch = min(managed_pages >> 10, (1 << 20) // 4096)
    batch //= 4
    if batch < 1:
        batch = 1
    return rounddown_pow_of_two(batch + batch // 2) - 1


def min_free_kbytes_for(lowmem_pages: int, thp_recommended: bool, nr_populated_zones: int) -> int:
    """``calculate_min_free_kbytes`` then khugepaged's ``set_recommended_min_free_kbytes``.

    calculate_min_free_kbytes: int_sqrt(lowmem_kbytes * 16) clamped to [128, 262144].
    set_recommended_min_free_kbytes (THP enabled, 6.1): 2 free pageblocks per zone
    plus MIGRATE_PCPTYPES^2 pageblocks per zone for fallbacks, capped at 5% of
    lowmem, applied only when larger.
    """
    kbytes = math.isqrt(lowmem_pages * 4 * 16)
    kbytes = max(128, min(kbytes, 262144))
    if thp_recommended:
        rec = PAGEBLOCK_NR_PAGES * nr_populated_zones * 2
        rec += PAGEBLOCK_NR_PAGES * nr_populated_zones * MIGRATE_PCPTYPES * MIGRATE_PCPTYPES
        rec = min(rec, lowmem_pages // 20)
        rec_kb = rec * 4
        if rec_kb > kbytes:
            kbytes = rec_kb
    return kbytes


def watermarks(managed: list[int], min_free_kbytes: int, watermark_scale_factor: int = 10):
    """``__setup_per_zone_wmarks``: (min, low, high) per zone, in pages."""
    pages_min = min_free_kbytes >> 2
    lowmem = sum(managed)
    out = []
    for m in managed:
        wmin = (pages_min * m) // lowmem if lowmem else 0
        tmp = max(wmin >> 2, (m * watermark_scale_factor) // 10000)
        low = wmin + tmp
        out.append((wmin, low, low + tmp))
    return out


def pcp_defaults(managed: list[int], nr_cpus: int = 1, thp_recommended: bool = True):
    """Per-zone (batch, high) as 6.1 sets them after boot: ``zone_set_pageset_high_and_batch``.

    batch = max(1, zone_batchsize(zone)); high = max(low_wmark / nr_split_cpus, batch * 4)
    (``zone_highsize`` with percpu_pagelist_high_fraction == 0, cpu_online == 0 as in
    ``setup_per_zone_wmarks`` -> ``zone_pcp_update(zone, 0)``). The low watermark comes
    from ``__setup_per_zone_wmarks`` with min_free_kbytes from ``min_free_kbytes_for``;
    ``nr_free_buffer_pages`` is approximated by the managed pages (the high watermark is
    still 0 on the first call). Returns [(batch, high)] per zone; unpopulated zones
    get (1, 0), the boot pageset.
    """
    populated = sum(1 for m in managed if m > 0)
    mfk = min_free_kbytes_for(sum(managed), thp_recommended, populated)
    wm = watermarks(managed, mfk)
    out = []
    for m, (_wmin, low, _high) in zip(managed, wm, strict=True):
        if m <= 0:
            out.append((1, 0))
            continue
        batch = max(1, zone_batchsize(m))
        high = max(low // max(1, nr_cpus), batch << 2)
        out.append((batch, high))
    return out
