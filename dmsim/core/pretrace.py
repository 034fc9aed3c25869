"""The allocations a boot trace cannot show: those made before its events were on.

start_kernel() (init/main.c, 6.1) hands memory to the buddy allocator in
mm_init() -> mem_init() -> memblock_free_all(), then allocates before
trace_init() turns the trace events on: kmem_cache_init()'s first slabs, and
early_trace_init() -> tracer_alloc_buffers() -> ring_buffer_alloc(), whose
trace_buf_size= bytes per CPU are order-0 pages from alloc_pages_node()
(__rb_allocate_pages(), 16384 pages for 64M), kept for good. All of it runs on
the boot pageset (BOOT_PAGESET_HIGH 0, BOOT_PAGESET_BATCH 1: every order-0
request refills one page from the buddy lists), before setup_per_cpu_pageset().

The trace says how much by where the kernel's first traced unmovable order-0
allocation landed: the model allocates order-0 unmovable pages the same way
until its next one would be that pfn. When no count up to the limit gets
there, the model is left as it was (the caller reports it).
"""

from __future__ import annotations

from numba import njit

from .buddy import (
    S_PRETRACE_PAGES,
    Z_PCP_BATCH,
    Z_PCP_BATCH_SETUP,
    Z_PCP_HIGH,
    Z_PCP_HIGH_SETUP,
    alloc_pages,
)
from .zones import MAX_NR_ZONES


@njit(cache=True)
def boot_pageset(zone_info):
    """Every zone's pcp on the boot pageset (BOOT_PAGESET_HIGH 0, BOOT_PAGESET_BATCH 1),
    the sizes setup_per_cpu_pageset() will set kept aside."""
    if zone_info[0, Z_PCP_BATCH_SETUP] != 0:
        return  # on already
    for z in range(MAX_NR_ZONES):
        zone_info[z, Z_PCP_BATCH_SETUP] = zone_info[z, Z_PCP_BATCH]
        zone_info[z, Z_PCP_HIGH_SETUP] = zone_info[z, Z_PCP_HIGH]
        zone_info[z, Z_PCP_BATCH] = 1
        zone_info[z, Z_PCP_HIGH] = 0


@njit(cache=True)
def setup_per_cpu_pageset(zone_info):
    """setup_per_cpu_pageset() -> zone_set_pageset_high_and_batch(): the sizes kept
    aside by boot_pageset(). (The boot pageset holds no page: high 0 drains each free.)"""
    if zone_info[0, Z_PCP_BATCH_SETUP] == 0:
        return
    for z in range(MAX_NR_ZONES):
        zone_info[z, Z_PCP_BATCH] = zone_info[z, Z_PCP_BATCH_SETUP]
        zone_info[z, Z_PCP_HIGH] = zone_info[z, Z_PCP_HIGH_SETUP]
        zone_info[z, Z_PCP_BATCH_SETUP] = 0
        zone_info[z, Z_PCP_HIGH_SETUP] = 0


@njit(cache=True)
def pretrace_fill(buddy, target, zone, mt, limit, keep_boot_pageset):
    """Allocate order-0 pages of migratetype mt (gfp_zone() `zone`) on the boot
    pageset until the next one is `target`; returns how many, or -1 (model unchanged).
    With keep_boot_pageset the boot pageset stays on until setup_per_cpu_pageset()."""
    (nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends, zone_info, stats,
     fallbacks, cfg) = buddy
    # work on copies: kept only when the target is reached
    c_nxt = nxt.copy()
    c_prv = prv.copy()
    c_order = order_.copy()
    c_flags = bflags.copy()
    c_pb = pb_mt.copy()
    c_fe = free_ends.copy()
    c_fc = free_count.copy()
    c_pcp = pcp_ends.copy()
    c_zi = zone_info.copy()
    c_st = stats.copy()
    for z in range(MAX_NR_ZONES):  # the boot pageset
        c_zi[z, Z_PCP_BATCH] = 1
        c_zi[z, Z_PCP_HIGH] = 0
    n = 0
    found = False
    while n <= limit:
        pfn = alloc_pages(c_nxt, c_prv, c_order, c_flags, c_pb, c_fe, c_fc, c_pcp, c_zi, c_st,
                          fallbacks, cfg, zone, 0, mt)
        if pfn < 0:
            break
        if pfn == target:
            found = True
            break
        n += 1
    if not found:
        return -1
    # the target is the trace's own first allocation: run again on the real state,
    # n pages (the same steps, so the same pages)
    boot_pageset(zone_info)
    for _ in range(n):
        alloc_pages(nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends, zone_info,
                    stats, fallbacks, cfg, zone, 0, mt)
    if not keep_boot_pageset:  # (no trace event tells when setup_per_cpu_pageset() ran)
        setup_per_cpu_pageset(zone_info)
    stats[S_PRETRACE_PAGES] += n
    return n
