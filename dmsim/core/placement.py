"""Simulated placement: the replay loop with the page allocator deciding where
each allocation lands (numba). Events name allocations by handle
(dmsim/trace/events.py EV_H_*); CPA calls on a handle's pages follow the
kernel's alias rules (docs/design-simulated-placement.md):

- pages from alloc_pages() are direct-map memory: one call on their pfn range,
  primary = checkalias;
- vmalloc pages (module_alloc, BPF packs) are reached through
  cpa_process_alias(): one call per page on its direct-map pfn, numpages 1,
  _PAGE_NX removed from both masks, primary 0, force_split copied; a call
  that changes only NX processes no alias (change_page_attr_set_clr());
- vfree() of a VM_FLUSH_RESET_PERMS area is vm_reset_perms():
  set_direct_map_invalid_noflush() on every page, then
  set_direct_map_default_noflush() on every page, then the pages are freed;
- split_large_page() takes each new page-table page with
  alloc_pages(GFP_KERNEL, 0); nothing else allocates during a CPA call, so the
  call's new tables are allocated right after it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import constants as C
from .buddy import MIGRATE_UNMOVABLE, claim_block
from .buddy import alloc_pages as _alloc_pages
from .buddy import free_pages as _free_pages
from .cpa import NX, ZERO, change_page_attr_set_clr
from .zones import ZONE_NORMAL

# mirrored from dmsim/trace/events.py (tests/test_events.py pins them)
EV_CPA = 1
EV_SYSTEM_RUNNING = 2
EV_KERNEL_RO = 3
EV_CHECKPOINT = 4
EV_H_ALLOC = 7
EV_H_FREE = 8
EV_H_VMALLOC = 9
EV_H_VFREE = 10
EV_H_CPA = 11
EV_H_CLAIM = 12
CPAF_PRIMARY = 1
CPAF_FORCE_SPLIT = 2
CPAF_RAW = 4
VFREE_RESET_PERMS = 1

# The allocator's entry points, inlined into this loop only: a call of an njit
# function with a dozen array arguments costs reference-count traffic on each,
# which was a quarter of simulated placement's time (4.1 -> 5.7 M events/s);
# buddy.py's own kernels keep calling them out of line (compile time).
alloc_pages = njit(cache=True, inline="always")(_alloc_pages.py_func)
free_pages = njit(cache=True, inline="always")(_free_pages.py_func)

H_NONE = 0
H_PAGES = 1
H_VMALLOC = 2
P_INVALID = np.uint64(C._PAGE_PRESENT | C._PAGE_RW)  # set_direct_map_invalid/default


@njit(cache=True)
def _cpa(vpfn, numpages, mask_set, mask_clr, primary, force_split, dm, buddy):
    """One __change_page_attr_set_clr() call, then its page-table pages from the buddy."""
    (pud_state, pud_prot, pmd_state, pmd_prot, pmd_table, pte, nr_tables, counters, params,
     pfn_mapped) = dm
    before = counters[C.NR_PTE_TABLES]
    change_page_attr_set_clr(vpfn, numpages, mask_set, mask_clr, primary, force_split,
                             pud_state, pud_prot, pmd_state, pmd_prot, pmd_table, pte,
                             nr_tables, counters, params, pfn_mapped)
    (nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends, zone_info, stats,
     fallbacks, cfg) = buddy
    for _ in range(counters[C.NR_PTE_TABLES] - before):  # split_large_page(): alloc_pages()
        if alloc_pages(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends,
                       zone_info, stats, fallbacks, cfg, ZONE_NORMAL, 0, MIGRATE_UNMOVABLE) < 0:
            counters[C.NR_PT_ALLOC_FAIL] += 1


@njit(cache=True, inline="always")
def h_pages(h_kind, h_len, h):
    """Pages behind a handle (0 when it is not live)."""
    if h_kind[h] == H_PAGES:
        return 1 << h_len[h]
    if h_kind[h] == H_VMALLOC:
        return h_len[h]
    return 0


@njit(cache=True)
def place_events(kind, arg0, arg1, mask_set, mask_clr, flags, start, stop, dm, buddy,
                 h_kind, h_base, h_len, pool, pool_used, snapshots):
    """Apply events[start:stop] with simulated placement. Returns the index it
    stopped at: stop, or earlier when the pte pool cannot hold the next event's
    worst case (the caller grows it and calls again)."""
    (pud_state, pud_prot, pmd_state, pmd_prot, pmd_table, pte, nr_tables, counters, params,
     pfn_mapped) = dm
    (nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends, zone_info, stats,
     fallbacks, cfg) = buddy
    for i in range(start, stop):
        k = kind[i]
        h = arg0[i]
        # worst case of new pte tables: every 2M leaf covered splits, plus both ends;
        # one per page for calls made page by page (vmalloc aliases)
        need = 0
        if k == EV_CPA:
            need = (arg1[i] >> 9) + 3
        elif k == EV_H_CPA:
            need = h_pages(h_kind, h_len, h) + 3
        elif k == EV_H_VFREE:
            need = h_pages(h_kind, h_len, h) + 3
        if nr_tables[0] + need > pte.shape[0]:
            return i
        if k == EV_CPA:
            _cpa(h, arg1[i], mask_set[i], mask_clr[i], (flags[i] & CPAF_PRIMARY) != 0,
                 (flags[i] & CPAF_FORCE_SPLIT) != 0, dm, buddy)
        elif k == EV_H_ALLOC:
            order = arg1[i]
            pfn = alloc_pages(nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends,
                              zone_info, stats, fallbacks, cfg, flags[i] >> 8, order,
                              flags[i] & 0xFF)
            if pfn >= 0:
                h_kind[h] = H_PAGES
                h_base[h] = pfn
                h_len[h] = order
            else:
                h_kind[h] = H_NONE  # out of memory: counted by the allocator
        elif k == EV_H_CLAIM:  # allocated before the trace began: stays where it was
            if claim_block(nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends,
                           zone_info, stats, cfg, np.int64(mask_set[i]), arg1[i]) == 0:
                h_kind[h] = H_PAGES
                h_base[h] = np.int64(mask_set[i])
                h_len[h] = arg1[i]
            else:
                counters[C.NR_HANDLE_ERRORS] += 1
        elif k == EV_H_FREE:
            if h_kind[h] != H_PAGES:
                counters[C.NR_HANDLE_ERRORS] += 1
                continue
            free_pages(nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends,
                       zone_info, stats, cfg, h_base[h], h_len[h])
            h_kind[h] = H_NONE
        elif k == EV_H_VMALLOC:
            n = arg1[i]
            base = pool_used[0]
            pool_used[0] += n
            for j in range(n):  # __vmalloc_area_node(): order-0 pages, GFP_KERNEL
                pool[base + j] = alloc_pages(nxt, prv, order_, bflags, pb_mt, free_ends,
                                             free_count, pcp_ends, zone_info, stats, fallbacks,
                                             cfg, ZONE_NORMAL, 0, MIGRATE_UNMOVABLE)
            h_kind[h] = H_VMALLOC
            h_base[h] = base
            h_len[h] = n
        elif k == EV_H_VFREE:
            if h_kind[h] != H_VMALLOC:
                counters[C.NR_HANDLE_ERRORS] += 1
                continue
            base = h_base[h]
            n = h_len[h]
            if flags[i] & VFREE_RESET_PERMS:  # vm_reset_perms()
                for j in range(n):
                    if pool[base + j] >= 0:
                        _cpa(pool[base + j], 1, ZERO, P_INVALID, False, False, dm, buddy)
                for j in range(n):
                    if pool[base + j] >= 0:
                        _cpa(pool[base + j], 1, P_INVALID, ZERO, False, False, dm, buddy)
            for j in range(n):
                if pool[base + j] >= 0:
                    free_pages(nxt, prv, order_, bflags, pb_mt, free_ends, free_count,
                               pcp_ends, zone_info, stats, cfg, pool[base + j], 0)
            h_kind[h] = H_NONE
        elif k == EV_H_CPA:
            first = arg1[i] >> 32
            n = arg1[i] & 0xFFFFFFFF
            ms = mask_set[i]
            mc = mask_clr[i]
            force = (flags[i] & CPAF_FORCE_SPLIT) != 0
            checkalias = (ms | mc) != NX
            if n == 0:
                n = h_pages(h_kind, h_len, h) - first  # the rest of the handle
            if h_kind[h] == H_PAGES:
                if first + n > (1 << h_len[h]):
                    counters[C.NR_HANDLE_ERRORS] += 1
                    continue
                primary = checkalias
                if flags[i] & CPAF_RAW:  # a recorded call, moved: its own primary argument
                    primary = (flags[i] & CPAF_PRIMARY) != 0
                _cpa(h_base[h] + first, n, ms, mc, primary, force, dm, buddy)
            elif h_kind[h] == H_VMALLOC:
                if first + n > h_len[h]:
                    counters[C.NR_HANDLE_ERRORS] += 1
                    continue
                if not checkalias:
                    continue  # NX only: the vmalloc mapping changes, no alias is processed
                for j in range(first, first + n):  # cpa_process_alias(), one per 4K step
                    pfn = pool[h_base[h] + j]
                    if pfn >= 0:
                        _cpa(pfn, 1, ms & ~NX, mc & ~NX, False, force, dm, buddy)
            else:
                counters[C.NR_HANDLE_ERRORS] += 1
        elif k == EV_SYSTEM_RUNNING:
            counters[C.SYSTEM_RUNNING] = 1
        elif k == EV_KERNEL_RO:
            counters[C.KERNEL_SET_TO_READONLY] = 1
        elif k == EV_CHECKPOINT:
            snapshots[h, :] = counters
    return stop
