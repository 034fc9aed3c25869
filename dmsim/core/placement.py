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
  alloc_pages(GFP_KERNEL, 0), and merges and collapses free theirs with
  __free_page(): the core logs them in order (cpa.pt_log) and settle() gives
  them to / takes them from the allocator right after the call.

The allocation policies of docs/design-policies.md hook in where their patches
do: alloc_hook() (get_page_from_freelist(), post_alloc_hook(),
unmapped_pages_alloc()) and free_hook() (free_pages_prepare()).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import constants as C
from . import state as S
from .buddy import (
    MAX_ORDER,
    MIGRATE_UNMAPPED,
    MIGRATE_UNMOVABLE,
    PAGEBLOCK_ORDER,
    S_PB_LOG,
    S_PB_LOG_LEN,
    S_PRETRACE_MISS,
    claim_block,
    defer_struct_pages,
    deferred_free_range,
    init_per_zone_wmark_min,
    move_freepages_block,
    page_zonenum,
)
from .buddy import alloc_pages as _alloc_pages
from .buddy import free_pages as _free_pages
from .cpa import NX, ZERO, cpa_apply, set_direct_map_pmd
from .pretrace import pretrace_fill, setup_per_cpu_pageset
from .shadow import shadow_decide, shadow_follow
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
EV_H_FILL = 14
EV_H_PCP_SETUP = 15
EV_H_DEFER = 16
EV_H_WMARK_INIT = 17
FREE_DEFERRED_INIT = 1
FILL_BOOT_PAGESET = 1 << 16
CPAF_PRIMARY = 1
CPAF_FORCE_SPLIT = 2
CPAF_RAW = 4
CPAF_COLLAPSE = 8
VFREE_RESET_PERMS = 1
UNMAPPED_SHIFT = 12
H_RECORDED = 1 << 16
H_PT_PAGE = 1 << 17
H_REBUILT = 1 << 18

# allocation policies (dmsim/policy.py ALLOC_POLICIES)
ALLOC_BASELINE = 0
ALLOC_MIGRATE_UNMAPPED = 1
ALLOC_UNMAPPED_CACHE = 2
# pol[] (an int64 array the loop takes)
POL_ALLOC = 0
POL_UNMAPPED_MASK = 1  # 1 << group for each user group that asks for __GFP_UNMAPPED
# cpa_process_alias()'s masks: 0 = Linux 6.1, the alias call copies them whole;
# 1 = 6.2 and later, commit 127960a05548 "x86/mm: Inhibit _PAGE_NX changes from
# cpa_process_alias()" clears _PAGE_NX from both (the direct map stays NX)
POL_ALIAS_NO_NX = 2
NR_POL = 4

# The allocator's entry points, inlined into this loop only: a call of an njit
# function with a dozen array arguments costs reference-count traffic on each,
# which was a quarter of simulated placement's time (4.1 -> 5.7 M events/s);
# buddy.py's own kernels keep calling them out of line (compile time).
# (getattr: under NUMBA_DISABLE_JIT=1, for debugging, they are plain functions)
alloc_pages = njit(cache=True, inline="always")(getattr(_alloc_pages, "py_func", _alloc_pages))
free_pages = njit(cache=True, inline="always")(getattr(_free_pages, "py_func", _free_pages))

H_NONE = 0
H_PAGES = 1
H_VMALLOC = 2
P_INVALID = np.uint64(C._PAGE_PRESENT | C._PAGE_RW)  # set_direct_map_invalid/default


@njit(cache=True, inline="always")
def cpa1(vpfn, numpages, mask_set, mask_clr, cpa_flags, dm):
    (pud_state, pud_prot, pmd_state, pmd_prot, pmd_table, pte, nr_tables, counters, params,
     pfn_mapped) = dm
    cpa_apply(vpfn, numpages, mask_set, mask_clr, cpa_flags, pud_state, pud_prot, pmd_state,
              pmd_prot, pmd_table, pte, nr_tables, counters, params, pfn_mapped)


# -- unmapped_alloc's cache (Rapoport, Mar 2023: mm/unmapped-alloc.c) ---------------
# uc = (c_next int32[nr_pfns], c_prev int32[nr_pfns], c_order int8[nr_pfns]: order of a
#       free cache block at its head or -1, c_heads int64[MAX_ORDER],
#       pb_unmapped int8[nr_pageblocks]: PB_unmapped)

@njit(cache=True)
def cache_add(uc, pfn, order):
    """add_to_free_list() + set_unmapped_order(): list_add(), the head."""
    c_next, c_prev, c_order, c_heads, _ = uc
    head = c_heads[order]
    c_next[pfn] = head
    c_prev[pfn] = -1
    if head >= 0:
        c_prev[head] = pfn
    c_heads[order] = pfn
    c_order[pfn] = order


@njit(cache=True)
def cache_del(uc, pfn, order):
    """del_page_from_free_list()."""
    c_next, c_prev, c_order, c_heads, _ = uc
    n = c_next[pfn]
    p = c_prev[pfn]
    if p >= 0:
        c_next[p] = n
    else:
        c_heads[order] = n
    if n >= 0:
        c_prev[n] = p
    c_order[pfn] = -1


@njit(cache=True)
def cache_free_one(uc, pfn, order, refill):
    """unmapped-alloc.c __free_one_page(): merge with free cache buddies of the
    same order (PageUnmapped and buddy_order() only) up to MAX_ORDER - 1."""
    c_order = uc[2]
    if refill:
        uc[4][pfn >> PAGEBLOCK_ORDER] = 1  # set_pageblock_unmapped(page)
    while order < MAX_ORDER - 1:
        buddy = pfn ^ (1 << order)
        if buddy >= c_order.shape[0] or c_order[buddy] != order:
            break
        cache_del(uc, buddy, order)
        pfn = pfn & buddy
        order += 1
    cache_add(uc, pfn, order)


@njit(cache=True)
def cache_rmqueue_smallest(uc, order):
    """unmapped-alloc.c __rmqueue_smallest() + expand()."""
    c_heads = uc[3]
    for co in range(order, MAX_ORDER):
        pfn = c_heads[co]
        if pfn < 0:
            continue
        cache_del(uc, pfn, co)
        size = 1 << co
        high = co
        while high > order:
            high -= 1
            size >>= 1
            cache_add(uc, pfn + size, high)
        return pfn
    return -1


# -- the allocator side of page-table pages and of the policies ----------------------

@njit(cache=True, inline="always")
def take_table_pfn(row_pfn, pud_pfn, ident, is_pmd):
    """The page behind a page table being freed (-1: memblock's, from boot)."""
    if is_pmd:
        pfn = pud_pfn[ident]
        pud_pfn[ident] = -1
    else:
        pfn = row_pfn[ident]
        row_pfn[ident] = -1
    return pfn


@njit(cache=True, inline="always")
def give_back(pfn, order, buddy, pol, uc):
    """The free proper, after free_pages_prepare(): to unmapped_alloc's cache for a
    PB_unmapped pageblock (unmapped_pages_free(), the buddy never sees it again),
    else to the allocator."""
    if pol[POL_ALLOC] == ALLOC_UNMAPPED_CACHE and uc[4][pfn >> PAGEBLOCK_ORDER] != 0:
        cache_free_one(uc, pfn, order, False)
    else:
        (nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends, zone_info, stats,
         fallbacks, cfg) = buddy
        _free_pages(nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends,
                    zone_info, stats, cfg, pfn, order)


# page-table and free-page work, run depth first as the kernel nests it (tasks on
# an explicit stack: numba has no recursion here). A task is a page being freed
# (order >= 0), or one of:
T_PT_ALLOC = -1  # split_large_page(): alloc_pages(GFP_KERNEL, 0) for table st_pfn
T_PT_FREE = -2  # a merge's or collapse's __free_page() of table st_pfn's page
T_RESTORE = -3  # the collapse variant's set_direct_map_PMD() of pageblock st_pfn
STACK = 256  # depth: a few tasks per nesting level; more is counted as log overflow


@njit(cache=True, inline="always")
def maps_back(pfn, pol, pb_mt):
    """free_pages_prepare() -> migrate_unmapped_map_pages(): is the page's pageblock
    UNMAPPED (under migrate_unmapped), so that its pages are mapped back first?"""
    return pol[POL_ALLOC] == ALLOC_MIGRATE_UNMAPPED and \
        pb_mt[pfn >> PAGEBLOCK_ORDER] == MIGRATE_UNMAPPED


@njit(cache=True, inline="always")
def task_stack():
    """(st_pfn, st_order, st_next) for run_tasks()."""
    return (np.empty(STACK, np.int64), np.empty(STACK, np.int64),
            np.empty(STACK, np.int64))


@njit(cache=True, inline="always")
def push_log(nr_tables, mark, st_pfn, st_order, top):
    """The page-table pages a call took or gave back since `mark` (cpa.pt_log()),
    pushed last first so that they run in the call's order; the log is emptied."""
    k = nr_tables[S.NT_LOG_LEN] - 1
    while k >= mark:
        e = nr_tables[S.NT_LOG + k]
        k -= 1
        if top == STACK:
            nr_tables[S.NT_LOG_OVERFLOW] += 1
            continue
        st_pfn[top] = ((e >> 2) << 1) | ((e >> 1) & 1)  # table ident << 1 | is_pmd
        st_order[top] = T_PT_FREE if e & 1 else T_PT_ALLOC
        top += 1
    nr_tables[S.NT_LOG_LEN] = mark
    return top


@njit(cache=True, inline="always")
def push_restores(stats, nr_tables, st_pfn, st_order, top):
    """The pageblocks a free gave back to MOVABLE (collapse variant), first first."""
    k = stats[S_PB_LOG_LEN] - 1
    while k >= 0:
        if top == STACK:
            nr_tables[S.NT_LOG_OVERFLOW] += 1
        else:
            st_pfn[top] = stats[S_PB_LOG + k]
            st_order[top] = T_RESTORE
            top += 1
        k -= 1
    stats[S_PB_LOG_LEN] = 0
    return top


@njit(cache=True)
def run_tasks(st_pfn, st_order, st_next, top, dm, buddy, row_pfn, pud_pfn, pol, uc):
    """Run the stack's tasks to the end.
    - A page being freed is __free_pages(): free_pages_prepare() maps an UNMAPPED
      pageblock's pages back one CPA call each (migrate_unmapped_map_pages()); a call
      that splits allocates a table page, one that makes a split table whole again
      (cpa_merge) frees one, inside that call, so each call's page-table work runs
      before the next call. Then the free proper, and the pageblocks it gave back
      (collapse variant) get their 2M leaf again, first first, each with its work.
    - A freed table page is a page being freed like any other."""
    (pud_state, pud_prot, pmd_state, pmd_prot, pmd_table, pte, nr_tables, counters, params,
     pfn_mapped) = dm
    (nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends, zone_info, stats,
     fallbacks, cfg) = buddy
    while top > 0:
        t = top - 1
        p = st_pfn[t]
        o = st_order[t]
        if o == T_PT_FREE:
            tp = take_table_pfn(row_pfn, pud_pfn, p >> 1, p & 1)
            if tp < 0:  # a table init_mem_mapping() built from memblock
                top -= 1
            else:
                st_pfn[t] = tp
                st_order[t] = 0
                st_next[t] = -1
            continue
        if o == T_PT_ALLOC:
            top -= 1
            tp = _alloc_pages(nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends,
                              zone_info, stats, fallbacks, cfg, ZONE_NORMAL, 0, MIGRATE_UNMOVABLE)
            if tp < 0:
                counters[C.NR_PT_ALLOC_FAIL] += 1
            if p & 1:
                pud_pfn[p >> 1] = tp
            else:
                row_pfn[p >> 1] = tp
            continue
        if o == T_RESTORE:
            top -= 1
            mark = nr_tables[S.NT_LOG_LEN]
            set_direct_map_pmd(p, pmd_state, pmd_prot, pmd_table, pte, nr_tables, counters,
                               params, pfn_mapped)
            top = push_log(nr_tables, mark, st_pfn, st_order, top)
            continue
        j = st_next[t]
        if j < 0:  # free_pages_prepare(): the policy's hook?
            j = 0 if maps_back(p, pol, pb_mt) else 1 << o
        if j < (1 << o):
            # migrate_unmapped_map_pages(): set_direct_map_default_noflush(page + j)
            st_next[t] = j + 1
            mark = nr_tables[S.NT_LOG_LEN]
            cpa1(p + j, 1, P_INVALID, ZERO, 0, dm)
            top = push_log(nr_tables, mark, st_pfn, st_order, top)
            continue
        st_next[t] = j
        top -= 1
        give_back(p, o, buddy, pol, uc)
        if stats[S_PB_LOG_LEN] != 0:
            top = push_restores(stats, nr_tables, st_pfn, st_order, top)


@njit(cache=True)
def free_hook(pfn, order, dm, buddy, row_pfn, pud_pfn, pol, uc):
    """__free_pages() under an allocation policy (run_tasks())."""
    if not maps_back(pfn, pol, buddy[4]):
        give_back(pfn, order, buddy, pol, uc)  # nothing to prepare: the caller settles
        return
    st_pfn, st_order, st_next = task_stack()
    st_pfn[0] = pfn
    st_order[0] = order
    st_next[0] = -1
    run_tasks(st_pfn, st_order, st_next, 1, dm, buddy, row_pfn, pud_pfn, pol, uc)


@njit(cache=True)
def settle(dm, buddy, row_pfn, pud_pfn, pol, uc):
    """After a CPA call or a plain free: the page-table pages the direct map took and
    gave back, in its order (a call over a GiB logs hundreds: one at a time, each
    with its nested work), then the pageblocks a free gave back (collapse variant)."""
    nr_tables = dm[6]
    stats = buddy[9]
    st_pfn, st_order, st_next = task_stack()
    n = nr_tables[S.NT_LOG_LEN]
    for j in range(n):  # nested work logs after n, and empties its part again
        e = nr_tables[S.NT_LOG + j]
        st_pfn[0] = ((e >> 2) << 1) | ((e >> 1) & 1)
        st_order[0] = T_PT_FREE if e & 1 else T_PT_ALLOC
        run_tasks(st_pfn, st_order, st_next, 1, dm, buddy, row_pfn, pud_pfn, pol, uc)
    nr_tables[S.NT_LOG_LEN] = 0
    top = push_restores(stats, nr_tables, st_pfn, st_order, 0)
    run_tasks(st_pfn, st_order, st_next, top, dm, buddy, row_pfn, pud_pfn, pol, uc)


@njit(cache=True, inline="always")
def unsettled(dm, buddy):
    """Page-table work or restored pageblocks waiting for settle()."""
    return dm[6][S.NT_LOG_LEN] != 0 or buddy[9][S_PB_LOG_LEN] != 0


@njit(cache=True, inline="always")
def cpa_settled(vpfn, numpages, mask_set, mask_clr, cpa_flags, dm, buddy, row_pfn, pud_pfn,
                pol, uc):
    """One __change_page_attr_set_clr() call, then its page-table pages."""
    cpa1(vpfn, numpages, mask_set, mask_clr, cpa_flags, dm)
    if unsettled(dm, buddy):
        settle(dm, buddy, row_pfn, pud_pfn, pol, uc)


# the same, out of line: the loop calls it from many sites (each inline copy costs
# compile time); alloc_hook()'s per-page loops use the inline one (no call per page)
_cpa = njit(cache=True)(getattr(cpa_settled, "py_func", cpa_settled))


@njit(cache=True)
def alloc_hook(zone, order, mt, group, dm, buddy, row_pfn, pud_pfn, pol, uc):
    """__alloc_pages() of one request, with the policy's hooks; pfn or -1.
    (One inlined alloc_pages() call site: each one costs compile time.)"""
    (nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends, zone_info, stats,
     fallbacks, cfg) = buddy
    counters = dm[7]
    unmapped = ((pol[POL_UNMAPPED_MASK] >> group) & 1) != 0
    policy = pol[POL_ALLOC] if unmapped else ALLOC_BASELINE
    req_order = order
    req_mt = mt
    if policy == ALLOC_MIGRATE_UNMAPPED:
        req_mt = MIGRATE_UNMAPPED  # gfp_migratetype(): __GFP_UNMAPPED -> MIGRATE_UNMAPPED
    elif policy == ALLOC_UNMAPPED_CACHE:
        # __alloc_pages() -> unmapped_pages_alloc(): the cache first
        pfn = cache_rmqueue_smallest(uc, order)
        if pfn >= 0 or order > PAGEBLOCK_ORDER:
            return pfn  # (above PMD_ORDER the refill loop does not run: NULL)
        req_order = PAGEBLOCK_ORDER  # refill with PMD_ORDER, then smaller until it fits
    while True:
        pfn = alloc_pages(nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends,
                          zone_info, stats, fallbacks, cfg, zone, req_order, req_mt)
        if pfn >= 0 or policy != ALLOC_UNMAPPED_CACHE or req_order <= order:
            break
        req_order -= 1
    if pfn < 0 or policy == ALLOC_BASELINE:
        return pfn
    if policy == ALLOC_UNMAPPED_CACHE:
        counters[C.NR_UNMAPPED_REFILLS] += 1
        for j in range(1 << order):  # the patch's loop: nr_pages = 1 << order
            cpa_settled(pfn + j, 1, ZERO, P_INVALID, 0, dm, buddy, row_pfn, pud_pfn, pol, uc)
        cache_free_one(uc, pfn, req_order, True)
        return cache_rmqueue_smallest(uc, order)
    pb = pfn >> PAGEBLOCK_ORDER
    if pb_mt[pb] != MIGRATE_UNMAPPED:
        # get_page_from_freelist() -> set_pageblock_unmapped(): invalid then default
        # on the page splits its leaf; the pageblock and its free pages go UNMAPPED
        _cpa(pfn, 1, ZERO, P_INVALID, 0, dm, buddy, row_pfn, pud_pfn, pol, uc)
        _cpa(pfn, 1, P_INVALID, ZERO, 0, dm, buddy, row_pfn, pud_pfn, pol, uc)
        pb_mt[pb] = MIGRATE_UNMAPPED
        move_freepages_block(nxt, prv, order_, bflags, free_ends, free_count, zone_info,
                             pfn, page_zonenum(zone_info, pfn), MIGRATE_UNMAPPED)
        counters[C.NR_UNMAPPED_PAGEBLOCKS] += 1
    # post_alloc_hook() -> migrate_unmapped_unmap_pages()
    # (one CPA call per page: each split takes its table page before the next call)
    for j in range(1 << order):
        cpa_settled(pfn + j, 1, ZERO, P_INVALID, 0, dm, buddy, row_pfn, pud_pfn, pol, uc)
    return pfn


@njit(cache=True, inline="always")
def alias_masks(mask_set, mask_clr, pol):
    """cpa_process_alias(): alias_cpa = *cpa, masks and all (6.1); from 6.2 on without
    _PAGE_NX (POL_ALIAS_NO_NX)."""
    if pol[POL_ALIAS_NO_NX] != 0:
        return mask_set & ~NX, mask_clr & ~NX
    return mask_set, mask_clr


@njit(cache=True)
def highmap_alias(pfn, n, mask_set, mask_clr, force, dm, buddy, row_pfn, pud_pfn, pol, uc):
    """cpa_process_alias()'s second branch: a primary call on direct-map pages that
    the kernel image's high mapping also maps (__cpa_pfn_in_highmap(): freed init and
    gap pages reach the allocator) changes that alias too, primary 0. One call per
    run of such pages (the kernel makes one per step of the primary call; a run
    splits the same high-map leaves)."""
    params = dm[8]
    lo = max(pfn, params[S.P_HIGHMAP_START_PFN])
    hi = min(pfn + n - 1, params[S.P_HIGHMAP_END_PFN])  # within_inclusive()
    if params[S.P_HAVE_KERNEL] == 0 or lo > hi:
        return
    ams, amc = alias_masks(mask_set, mask_clr, pol)
    vpfn = params[S.P_HIGHMAP_VPFN] + lo - params[S.P_HIGHMAP_PFN]
    _cpa(vpfn, hi - lo + 1, ams, amc, force, dm, buddy, row_pfn, pud_pfn, pol, uc)


@njit(cache=True, inline="always")
def h_pages(h_kind, h_len, h):
    """Pages behind a handle (0 when it is not live)."""
    if h_kind[h] == H_PAGES:
        return 1 << h_len[h]
    if h_kind[h] == H_VMALLOC:
        return h_len[h]
    return 0


@njit(cache=True, inline="always")
def event_need(k, h, a1, h_kind, h_len):
    """Worst case of new pte tables for one event: every 2M leaf covered splits,
    plus both ends; two per page for calls made page by page (vmalloc aliases,
    the policies' unmap and map-back). The caller sizes the pool and the log by it."""
    if k == EV_CPA:
        return (a1 >> 9) + 3
    if k == EV_H_CPA or k == EV_H_VFREE or k == EV_H_FREE:
        return 2 * h_pages(h_kind, h_len, h) + 3
    if k == EV_H_ALLOC:
        return 2 * (1 << a1) + 3
    if k == EV_H_VMALLOC:
        return 2 * a1 + 3
    return 0


@njit(cache=True, inline="always")
def _place_events(kind, arg0, arg1, mask_set, mask_clr, flags, start, stop, dm, buddy,
                  h_kind, h_base, h_len, pool, pool_used, snapshots, pol, row_pfn, pud_pfn, uc,
                  sh, hooks, shadow):
    """Apply events[start:stop] with simulated placement. Returns the index it
    stopped at: stop, or earlier when the pte pool or the page-table log
    cannot hold the next event's worst case (the caller grows them and calls
    again). `hooks` is a constant of each compiled copy (place_events_plain /
    place_events_hooked): the allocation policy hooks' call sites, even never
    taken, cost the plain loop a quarter of its speed (4.4 -> 3.2 M events/s).
    `shadow` (place_events_shadow): each allocation the kernel's trace placed
    (H_RECORDED) is guessed by the allocator, logged, and moved to the kernel's
    block (core/shadow.py)."""
    (pud_state, pud_prot, pmd_state, pmd_prot, pmd_table, pte, nr_tables, counters, params,
     pfn_mapped) = dm
    (nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends, zone_info, stats,
     fallbacks, cfg) = buddy
    for i in range(start, stop):
        k = kind[i]
        h = arg0[i]
        need = event_need(k, h, arg1[i], h_kind, h_len)
        if nr_tables[S.NT_USED] + need > pte.shape[0] or \
                S.NT_LOG + 2 * need + 16 > nr_tables.shape[0]:
            return i
        if k == EV_CPA:
            _cpa(h, arg1[i], mask_set[i], mask_clr[i], flags[i], dm, buddy, row_pfn, pud_pfn,
                 pol, uc)
        elif k == EV_H_ALLOC:
            order = arg1[i]
            f = flags[i]
            if f & H_PT_PAGE:
                continue  # split_large_page()'s table: the call above took its own
            group = (f >> UNMAPPED_SHIFT) & 0xF
            if hooks and (pol[POL_UNMAPPED_MASK] >> group) & 1:
                pfn = alloc_hook((f >> 8) & 0xF, order, f & 0xFF, group, dm, buddy, row_pfn,
                                 pud_pfn, pol, uc)
            else:  # no policy hook: the plain __alloc_pages(), inlined (the hot path)
                pfn = alloc_pages(nxt, prv, order_, bflags, pb_mt, free_ends, free_count,
                                  pcp_ends, zone_info, stats, fallbacks, cfg, (f >> 8) & 0xF,
                                  order, f & 0xFF)
            if shadow and f & H_RECORDED:
                pfn = shadow_decide(i, pfn, np.int64(mask_set[i]), (f >> 8) & 0xF, order,
                                    f & 0xFF, 0, buddy, sh)
            elif shadow and f & H_REBUILT:  # alloc_pages_bulk()'s: followed, not scored
                pfn = shadow_follow(pfn, np.int64(mask_set[i]), order, f & 0xFF, buddy)
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
        elif k == EV_H_FILL:  # allocations from before the trace began
            if pretrace_fill(buddy, h, (flags[i] >> 8) & 0xF, flags[i] & 0xFF, arg1[i],
                             (flags[i] & FILL_BOOT_PAGESET) != 0) < 0:
                stats[S_PRETRACE_MISS] += 1
        elif k == EV_H_PCP_SETUP:
            setup_per_cpu_pageset(zone_info)
        elif k == EV_H_DEFER:  # the memory deferred_init_memmap() will free
            defer_struct_pages(nxt, prv, order_, bflags, pb_mt, free_ends, free_count, zone_info,
                               stats, h, arg1[i])
        elif k == EV_H_WMARK_INIT:
            init_per_zone_wmark_min(zone_info)
        elif k == EV_H_FREE:
            if h_kind[h] != H_PAGES:
                counters[C.NR_HANDLE_ERRORS] += 1
                continue
            if flags[i] & FREE_DEFERRED_INIT:  # the pgdatinit kthread's, never mapped otherwise
                deferred_free_range(nxt, prv, order_, bflags, pb_mt, free_ends, free_count,
                                    zone_info, stats, h_base[h], h_len[h])
            elif hooks:  # free_pages_prepare()'s hook, and what it left to settle
                free_hook(h_base[h], h_len[h], dm, buddy, row_pfn, pud_pfn, pol, uc)
                if unsettled(dm, buddy):
                    settle(dm, buddy, row_pfn, pud_pfn, pol, uc)
            else:  # no hook: the plain free, inline (a free never touches the direct map)
                free_pages(nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends,
                           zone_info, stats, cfg, h_base[h], h_len[h])
            h_kind[h] = H_NONE
        elif k == EV_H_VMALLOC:
            n = arg1[i]
            group = (flags[i] >> UNMAPPED_SHIFT) & 0xF
            base = pool_used[0]
            pool_used[0] += n
            hooked = hooks and ((pol[POL_UNMAPPED_MASK] >> group) & 1) != 0
            for j in range(n):  # __vmalloc_area_node(): order-0 pages, GFP_KERNEL
                if hooked:
                    pool[base + j] = alloc_hook(ZONE_NORMAL, 0, MIGRATE_UNMOVABLE, group, dm,
                                                buddy, row_pfn, pud_pfn, pol, uc)
                else:
                    pool[base + j] = alloc_pages(nxt, prv, order_, bflags, pb_mt, free_ends,
                                                 free_count, pcp_ends, zone_info, stats,
                                                 fallbacks, cfg, ZONE_NORMAL, 0,
                                                 MIGRATE_UNMOVABLE)
                if shadow and sh[0][base + j] >= 0:
                    pool[base + j] = shadow_decide(i, pool[base + j], sh[0][base + j],
                                                   ZONE_NORMAL, 0, MIGRATE_UNMOVABLE, 1,
                                                   buddy, sh)
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
                        _cpa(pool[base + j], 1, ZERO, P_INVALID, 0, dm, buddy, row_pfn, pud_pfn,
                             pol, uc)
                for j in range(n):
                    if pool[base + j] >= 0:
                        _cpa(pool[base + j], 1, P_INVALID, ZERO, 0, dm, buddy, row_pfn, pud_pfn,
                             pol, uc)
            for j in range(n):
                if pool[base + j] >= 0:
                    if hooks:
                        free_hook(pool[base + j], 0, dm, buddy, row_pfn, pud_pfn, pol, uc)
                        if unsettled(dm, buddy):
                            settle(dm, buddy, row_pfn, pud_pfn, pol, uc)
                    else:
                        free_pages(nxt, prv, order_, bflags, pb_mt, free_ends, free_count,
                                   pcp_ends, zone_info, stats, cfg, pool[base + j], 0)
            h_kind[h] = H_NONE
        elif k == EV_H_CPA:
            first = arg1[i] >> 32
            n = arg1[i] & 0xFFFFFFFF
            ms = mask_set[i]
            mc = mask_clr[i]
            force = flags[i] & CPAF_FORCE_SPLIT
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
                cf = force | (flags[i] & CPAF_COLLAPSE) | (CPAF_PRIMARY if primary else 0)
                _cpa(h_base[h] + first, n, ms, mc, cf, dm, buddy, row_pfn, pud_pfn, pol, uc)
                if primary:
                    highmap_alias(h_base[h] + first, n, ms, mc, force, dm, buddy, row_pfn,
                                  pud_pfn, pol, uc)
            elif h_kind[h] == H_VMALLOC:
                if first + n > h_len[h]:
                    counters[C.NR_HANDLE_ERRORS] += 1
                    continue
                if not checkalias:
                    continue  # NX only: the vmalloc mapping changes, no alias is processed
                ams, amc = alias_masks(ms, mc, pol)
                for j in range(first, first + n):  # cpa_process_alias(), one per 4K step
                    pfn = pool[h_base[h] + j]
                    if pfn >= 0:  # alias calls never collapse
                        _cpa(pfn, 1, ams, amc, force, dm, buddy, row_pfn, pud_pfn, pol, uc)
            else:
                counters[C.NR_HANDLE_ERRORS] += 1
        elif k == EV_SYSTEM_RUNNING:
            counters[C.SYSTEM_RUNNING] = 1
        elif k == EV_KERNEL_RO:
            counters[C.KERNEL_SET_TO_READONLY] = 1
        elif k == EV_CHECKPOINT:
            snapshots[h, :] = counters
    return stop


@njit(cache=True)
def place_events_plain(kind, arg0, arg1, mask_set, mask_clr, flags, start, stop, dm, buddy,
                       h_kind, h_base, h_len, pool, pool_used, snapshots, pol, row_pfn, pud_pfn,
                       uc, sh):
    """_place_events() with no allocation policy hook (baseline allocation)."""
    return _place_events(kind, arg0, arg1, mask_set, mask_clr, flags, start, stop, dm, buddy,
                         h_kind, h_base, h_len, pool, pool_used, snapshots, pol, row_pfn,
                         pud_pfn, uc, sh, False, False)


@njit(cache=True)
def place_events_hooked(kind, arg0, arg1, mask_set, mask_clr, flags, start, stop, dm, buddy,
                        h_kind, h_base, h_len, pool, pool_used, snapshots, pol, row_pfn, pud_pfn,
                        uc, sh):
    """_place_events() with the allocation policy's hooks (migrate_unmapped,
    unmapped_alloc)."""
    return _place_events(kind, arg0, arg1, mask_set, mask_clr, flags, start, stop, dm, buddy,
                         h_kind, h_base, h_len, pool, pool_used, snapshots, pol, row_pfn,
                         pud_pfn, uc, sh, True, False)


@njit(cache=True)
def place_events_shadow(kind, arg0, arg1, mask_set, mask_clr, flags, start, stop, dm, buddy,
                        h_kind, h_base, h_len, pool, pool_used, snapshots, pol, row_pfn, pud_pfn,
                        uc, sh):
    """_place_events() scoring baseline allocation against the kernel's
    (--placement shadow)."""
    return _place_events(kind, arg0, arg1, mask_set, mask_clr, flags, start, stop, dm, buddy,
                         h_kind, h_base, h_len, pool, pool_used, snapshots, pol, row_pfn,
                         pud_pfn, uc, sh, False, True)
