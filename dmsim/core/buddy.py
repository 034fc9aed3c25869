"""The page allocator of Linux 6.1 (mm/page_alloc.c) as numba kernels over plain arrays.

Semantics are those of the 6.1.y stable tree (the Debian 6.1 kernel the real traces were
recorded on), read from mm/page_alloc.c; each kernel below names the function it models.

State (``BuddyState``; every field an array so the kernels take them as they are):

per pfn, for pfn in [0, nr_pfns) (nr_pfns = max_pfn rounded up to MAX_ORDER_NR_PAGES):
  ``page_next``/``page_prev`` int32   the page's list_head (``buddy_list`` and ``pcp_list``
                                      share it, as in struct page); -1 ends a list
  ``page_order``  uint8   low nibble: buddy_order() of a free block, the order of a page on
                          a pcp list, the order of an allocated block's head;
                          high nibble: the free list's migratetype (buddy pages) or
                          page->index = get_pcppage_migratetype() (pcp pages)
  ``page_flags``  uint8   PG_BUDDY, PG_PCP, PG_LRU (an allocated movable page: what
                          move_freepages() counts as PageLRU), PG_HEAD (head of an allocated
                          block), PG_RESERVED (never given to the allocator)
per pageblock (pfn >> pageblock_order):
  ``pageblock_mt`` uint8  get_pageblock_migratetype()
per zone, order and migratetype, list id ``lid = (zone * MAX_ORDER + order) * MIGRATE_TYPES + mt``:
  ``free_ends`` int32[nlists, 2]  head and tail pfn of free_area[order].free_list[mt]
  ``free_count`` int64[nlists]    length of that list (pagetypeinfo; nr_free is the sum over mt)
per zone and pcp list, ``pid = zone * NR_PCP_LISTS + pindex``:
  ``pcp_ends`` int32[MAX_NR_ZONES * NR_PCP_LISTS, 2]
``zone_info`` int64[MAX_NR_ZONES, NR_ZONE_FIELDS]  (Z_* columns: span, present and managed
    pages, pcp count/high/batch/free_factor, watermarks)
``fallbacks`` int8[MIGRATE_TYPES, 4]  the fallbacks[] table, -1 terminated
``cfg`` int64[NR_CFG]  (C_* switches)   ``stats`` int64[NR_STATS]  (S_* counters)

About 10 bytes per 4K page (``bytes_per_page``).

Kernels take the arrays as arguments and return scalars; nothing compiles at import
(``@njit(cache=True)``, compiled on first call, cached under ~/.cache/dmsim/). The small
per-operation helpers are ``inline="always"``: every call of an njit function with a dozen
array arguments costs reference-count traffic, and inlining the hot path tripled the
throughput (about 3 million mixed alloc/free operations per second on this machine) at
the price of a longer first compile (about 2 minutes of CPU, measured: README, "Tests").

Not modelled (each is a choice, said here once): watermark reclaim, kswapd, compaction,
watermark boosting (it only raises watermarks), highatomic reservations (only the slow path
of a high-order atomic allocation reserves; the lists exist), CMA and isolation (no such
pageblocks), page shuffling (off unless page_alloc.shuffle=1), deferred struct page init
(boot frees all memory in max-order blocks, as without CONFIG_DEFERRED_STRUCT_PAGE_INIT),
more than one node or CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from .zones import MAX_NR_ZONES, ZONE_DMA, ZONE_DMA32, ZONE_NORMAL, boot_sizing, zone_layout
from .zones import zone_batchsize as _zone_batchsize

# include/linux/mmzone.h (6.1)
MAX_ORDER = 11  # orders 0..MAX_ORDER-1
MAX_ORDER_NR_PAGES = 1 << (MAX_ORDER - 1)
PAGEBLOCK_ORDER = 9  # pageblock_order == HUGETLB_PAGE_ORDER on x86-64
PAGEBLOCK_NR_PAGES = 1 << PAGEBLOCK_ORDER
PAGE_ALLOC_COSTLY_ORDER = 3

MIGRATE_UNMOVABLE = 0
MIGRATE_MOVABLE = 1
MIGRATE_RECLAIMABLE = 2
MIGRATE_PCPTYPES = 3  # the number of types on the pcp lists
MIGRATE_HIGHATOMIC = MIGRATE_PCPTYPES
MIGRATE_SPARE = 4  # free slot for a policy type
# Rapoport's Jan 2022 RFC puts MIGRATE_UNMAPPED before MIGRATE_PCPTYPES (a pcp type);
# dmsim keeps HIGHATOMIC at 3 and gives UNMAPPED the spare slot, pcp slot 3
MIGRATE_UNMAPPED = MIGRATE_SPARE
MIGRATE_TYPES = 5  # array dimension; 6.1 has CMA and ISOLATE here, which are never used

# NR_PCP_LISTS = MIGRATE_PCPTYPES * (PAGE_ALLOC_COSTLY_ORDER + 1 + NR_PCP_THP)
NR_LOWORDER_PCP_LISTS = MIGRATE_PCPTYPES * (PAGE_ALLOC_COSTLY_ORDER + 1)
NR_PCP_LISTS = NR_LOWORDER_PCP_LISTS + 1  # the THP list (CONFIG_TRANSPARENT_HUGEPAGE)
PCP_STRIDE = 4 * (PAGE_ALLOC_COSTLY_ORDER + 1) + 1  # lists per zone with MIGRATE_UNMAPPED

# page_flags bits
PG_BUDDY = 1  # PageBuddy(): head of a free block on a free list
PG_PCP = 2  # on a pcp list
PG_LRU = 4  # allocated as movable: PageLRU() || __PageMovable() in move_freepages()
PG_HEAD = 8  # head of an allocated block (order in the low nibble of page_order)
PG_RESERVED = 16  # PageReserved(): not RAM, or reserved at boot

# alloc_flags (mm/internal.h); only the bits the fast path uses
ALLOC_WMARK_MIN = 0
ALLOC_WMARK_LOW = 1
ALLOC_WMARK_MASK = 3
ALLOC_NOFRAGMENT = 0x100

# fpi_t
FPI_NONE = 0
FPI_TO_TAIL = 2

# zone_info columns
Z_START_PFN = 0  # zone_start_pfn
Z_END_PFN = 1  # zone_end_pfn() = start + spanned_pages
Z_PRESENT = 2  # present_pages: RAM in the span (populated_zone())
Z_MANAGED = 3  # managed_pages: pages given to the buddy allocator
Z_PCP_COUNT = 4  # pcp->count (pages)
Z_PCP_HIGH = 5  # pcp->high
Z_PCP_BATCH = 6  # pcp->batch
Z_PCP_FREE_FACTOR = 7  # pcp->free_factor
Z_WMARK_MIN = 8  # _watermark[WMARK_MIN] (zones.boot_sizing(); watermark_boost stays 0)
Z_WMARK_LOW = 9  # _watermark[WMARK_LOW]
Z_LOWMEM_RESERVE = 10  # lowmem_reserve[j] for j = this + 1 .. (3 columns)
Z_UNMAPPED_COLLAPSE = 13  # 1: migrate_unmapped with its FIXME in __free_one_page() enabled
Z_PCP_BATCH_SETUP = 14  # while the boot pageset is on: the batch setup_per_cpu_pageset() sets
Z_PCP_HIGH_SETUP = 15  # ... and the high (core/pretrace.py)
Z_PCP_BATCH_FINAL = 16  # with deferred struct page init: the batch init_per_zone_wmark_min() sets
Z_PCP_HIGH_FINAL = 17  # ... and the high (until then, setup_per_cpu_pageset()'s early sizes)
NR_ZONE_FIELDS = 18

# cfg switches
C_PCP = 0  # 1: orders 0-3 (and 9 with C_PCP_THP) go through the per-CPU lists
C_PCP_THP = 1  # 1: CONFIG_TRANSPARENT_HUGEPAGE: order-9 pages have a pcp list too
C_NOFRAGMENT = 2  # 1: alloc_flags_nofragment() sets ALLOC_NOFRAGMENT for Normal
C_PCP_BATCH_SCALE_MAX = 3  # CONFIG_PCP_BATCH_SCALE_MAX (5; backported to 6.1.y)
C_NR_PCP_LISTS = 4  # NR_PCP_LISTS for the configuration
C_PCPTYPES = 5  # MIGRATE_PCPTYPES: 3, or 4 with MIGRATE_UNMAPPED
C_UNMAPPED = 6  # 1: migrate_unmapped policy (MIGRATE_UNMAPPED lists, fallbacks)
NR_CFG = 8

# stats: vm_event / zone counters, and the simulator's own
S_NR_FREE_PAGES = 0  # + zone: NR_FREE_PAGES of each zone (buddy lists only, not pcp)
S_PGALLOC = 3  # + zone: PGALLOC_DMA, PGALLOC_DMA32, PGALLOC_NORMAL
S_PGFREE = 6  # PGFREE (counted by __free_pages_ok and free_unref_page_commit; boot too)
S_ALLOC_FAIL = 7  # allocations that found no page anywhere (out of memory)
S_ALLOC_FAIL_PAGES = 8  # pages those failed allocations asked for
S_EXTFRAG = 9  # trace_mm_page_alloc_extfrag() events (__rmqueue_fallback steals)
S_EXTFRAG_FRAGMENTING = 10  # ... with fallback_order < pageblock_order
S_PAGEBLOCK_CLAIMED = 11  # pageblocks whose type a steal changed
S_PCP_REFILL = 12  # rmqueue_bulk() calls
S_PCP_DRAIN = 13  # free_pcppages_bulk() calls
S_BAD_FREE = 14  # free of a pfn that is not the head of an allocated block of that order
S_NR_ALLOC = 15  # successful allocations
S_NR_FREE_CALLS = 16  # frees
S_PB_LOG_OVERFLOW = 17  # collapse variant: pageblocks the log had no room for (a bug if > 0)
S_PRETRACE_PAGES = 18  # pages allocated before the trace began (core/pretrace.py)
S_PRETRACE_MISS = 19  # pretrace_fill() calls that found no count reaching their target
S_PB_LOG_LEN = 23  # collapse variant: pageblocks given back to MOVABLE since last read
S_PB_LOG = 24  # ... their indexes, from here
PB_LOG_CAPACITY = 256
NR_STATS = S_PB_LOG + PB_LOG_CAPACITY
STAT_NAMES = {
    "nr_free_pages_dma": 0, "nr_free_pages_dma32": 1, "nr_free_pages_normal": 2,
    "pgalloc_dma": 3, "pgalloc_dma32": 4, "pgalloc_normal": 5, "pgfree": 6,
    "alloc_fail": 7, "alloc_fail_pages": 8, "extfrag": 9, "extfrag_fragmenting": 10,
    "pageblock_claimed": 11, "pcp_refill": 12, "pcp_drain": 13, "bad_free": 14,
    "nr_alloc": 15, "nr_free_calls": 16,
}
# recorded traces' placement (core/pretrace.py): stat() only, not the allocator's counters()
PRETRACE_STAT_NAMES = {"pretrace_pages": S_PRETRACE_PAGES, "pretrace_miss": S_PRETRACE_MISS}

# The 6.1 fallbacks[] table (mm/page_alloc.c), -1 where it says MIGRATE_TYPES.
FALLBACKS_6_1 = np.array([
    [MIGRATE_RECLAIMABLE, MIGRATE_MOVABLE, -1, -1],  # MIGRATE_UNMOVABLE
    [MIGRATE_RECLAIMABLE, MIGRATE_UNMOVABLE, -1, -1],  # MIGRATE_MOVABLE
    [MIGRATE_UNMOVABLE, MIGRATE_MOVABLE, -1, -1],  # MIGRATE_RECLAIMABLE
    [-1, -1, -1, -1],  # MIGRATE_HIGHATOMIC: never falls back
    [-1, -1, -1, -1],  # spare type
], dtype=np.int8)

# fallbacks[] with CONFIG_ARCH_WANTS_GFP_UNMAPPED (Rapoport, Jan 2022 RFC): every type
# falls back to MIGRATE_UNMAPPED last; UNMAPPED to UNMOVABLE, RECLAIMABLE, MOVABLE.
FALLBACKS_UNMAPPED = np.array([
    [MIGRATE_RECLAIMABLE, MIGRATE_MOVABLE, MIGRATE_UNMAPPED, -1],  # MIGRATE_UNMOVABLE
    [MIGRATE_RECLAIMABLE, MIGRATE_UNMOVABLE, MIGRATE_UNMAPPED, -1],  # MIGRATE_MOVABLE
    [MIGRATE_UNMOVABLE, MIGRATE_MOVABLE, MIGRATE_UNMAPPED, -1],  # MIGRATE_RECLAIMABLE
    [-1, -1, -1, -1],  # MIGRATE_HIGHATOMIC
    [MIGRATE_UNMOVABLE, MIGRATE_RECLAIMABLE, MIGRATE_MOVABLE, -1],  # MIGRATE_UNMAPPED
], dtype=np.int8)

# gfp bits (include/linux/gfp_types.h, 6.1)
__GFP_DMA = 0x01
__GFP_HIGHMEM = 0x02
__GFP_DMA32 = 0x04
__GFP_MOVABLE = 0x08
__GFP_RECLAIMABLE = 0x10
GFP_MOVABLE_SHIFT = 3


def gfp_migratetype(gfp: int) -> int:
    """``gfp_migratetype`` (include/linux/gfp.h): __GFP_MOVABLE -> 1, __GFP_RECLAIMABLE -> 2.

    Example: GFP_HIGHUSER_MOVABLE (0x100cca) & 0x18 = 0x08, >> 3 = MIGRATE_MOVABLE.
    """
    return (gfp & (__GFP_MOVABLE | __GFP_RECLAIMABLE)) >> GFP_MOVABLE_SHIFT


def gfp_zone(gfp: int) -> int:
    """``gfp_zone`` (include/linux/gfp.h) without ZONE_MOVABLE: the highest zone allowed.

    __GFP_DMA -> DMA, __GFP_DMA32 -> DMA32, else Normal (__GFP_HIGHMEM|__GFP_MOVABLE
    means ZONE_MOVABLE, which is empty here, so the zonelist starts at Normal).
    """
    if gfp & __GFP_DMA:
        return ZONE_DMA
    if gfp & __GFP_DMA32:
        return ZONE_DMA32
    return ZONE_NORMAL


# ---------------------------------------------------------------------------
# list_head helpers over the intrusive arrays
# ---------------------------------------------------------------------------

@njit(cache=True, inline="always")
def _list_add(nxt, prv, ends, lid, pfn, tail):
    """list_add() (tail=False) or list_add_tail() (tail=True) of pfn on list lid."""
    head = ends[lid, 0]
    if head < 0:
        nxt[pfn] = -1
        prv[pfn] = -1
        ends[lid, 0] = pfn
        ends[lid, 1] = pfn
    elif tail:
        last = ends[lid, 1]
        prv[pfn] = last
        nxt[pfn] = -1
        nxt[last] = pfn
        ends[lid, 1] = pfn
    else:
        nxt[pfn] = head
        prv[pfn] = -1
        prv[head] = pfn
        ends[lid, 0] = pfn


@njit(cache=True, inline="always")
def _list_del(nxt, prv, ends, lid, pfn):
    """list_del() of pfn from list lid."""
    n = nxt[pfn]
    p = prv[pfn]
    if p >= 0:
        nxt[p] = n
    else:
        ends[lid, 0] = n
    if n >= 0:
        prv[n] = p
    else:
        ends[lid, 1] = p
    nxt[pfn] = -1
    prv[pfn] = -1


@njit(cache=True, inline="always")
def _lid(zone, order, mt):
    return (zone * MAX_ORDER + order) * MIGRATE_TYPES + mt


@njit(cache=True, inline="always")
def page_zonenum(zone_info, pfn):
    """page_zonenum(): the zone whose span holds pfn, -1 for none."""
    for z in range(MAX_NR_ZONES):
        if zone_info[z, Z_START_PFN] <= pfn < zone_info[z, Z_END_PFN]:
            return z
    return -1


# ---------------------------------------------------------------------------
# free lists
# ---------------------------------------------------------------------------

@njit(cache=True, inline="always")
def add_to_free_list(nxt, prv, order_, flags, free_ends, free_count, pfn, zone, order, mt, tail):
    """add_to_free_list() / add_to_free_list_tail() plus set_buddy_order()."""
    lid = _lid(zone, order, mt)
    _list_add(nxt, prv, free_ends, lid, pfn, tail)
    free_count[lid] += 1
    order_[pfn] = order | (mt << 4)
    flags[pfn] = (flags[pfn] & ~(PG_PCP | PG_HEAD)) | PG_BUDDY


@njit(cache=True, inline="always")
def del_page_from_free_list(nxt, prv, order_, flags, free_ends, free_count, pfn, zone, order):
    """del_page_from_free_list(): list_del, __ClearPageBuddy, nr_free--."""
    mt = order_[pfn] >> 4
    lid = _lid(zone, order, mt)
    _list_del(nxt, prv, free_ends, lid, pfn)
    free_count[lid] -= 1
    flags[pfn] &= ~PG_BUDDY


@njit(cache=True, inline="always")
def move_to_free_list(nxt, prv, order_, free_ends, free_count, pfn, zone, order, mt):
    """move_to_free_list(): list_move_tail to free_list[mt] of the same order."""
    old = _lid(zone, order, order_[pfn] >> 4)
    _list_del(nxt, prv, free_ends, old, pfn)
    free_count[old] -= 1
    lid = _lid(zone, order, mt)
    _list_add(nxt, prv, free_ends, lid, pfn, True)
    free_count[lid] += 1
    order_[pfn] = order | (mt << 4)


@njit(cache=True, inline="always")
def page_is_buddy(order_, flags, zone_info, page_pfn, buddy_pfn, order):
    """page_is_buddy(): buddy is PageBuddy with buddy_order() == order, in the same zone."""
    if buddy_pfn >= flags.shape[0]:
        return False
    if not (flags[buddy_pfn] & PG_BUDDY):
        return False
    if (order_[buddy_pfn] & 15) != order:
        return False
    return page_zonenum(zone_info, page_pfn) == page_zonenum(zone_info, buddy_pfn)


@njit(cache=True, inline="always")
def buddy_merge_likely(order_, flags, zone_info, pfn, buddy_pfn, order):
    """buddy_merge_likely(): is the next-order buddy of the merged block free?

    Example: pfn 0x200, order 0, buddy 0x201 busy: higher_page_pfn = 0x201 & 0x200 = 0x200,
    whose order-1 buddy is 0x202; if 0x202 is a free order-1 block, go to the tail.
    """
    if order >= MAX_ORDER - 2:
        return False
    higher = buddy_pfn & pfn
    return page_is_buddy(order_, flags, zone_info, higher, higher ^ (1 << (order + 1)), order + 1)


@njit(cache=True, inline="always")
def _mergeable(mt):
    """migratetype_is_mergeable(): mt < MIGRATE_PCPTYPES (which MIGRATE_UNMAPPED is)."""
    return mt < MIGRATE_PCPTYPES or mt == MIGRATE_UNMAPPED


@njit(cache=True, inline="always")
def __free_one_page(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info, stats,
                    pfn, zone, order, mt, fpi):
    """__free_one_page(): merge with free buddies up to MAX_ORDER-1, then head or tail.

    The buddy of a block is pfn ^ (1 << order): for pfn 0x208 at order 3 it is 0x200;
    the merged block starts at buddy_pfn & pfn = 0x200.
    """
    stats[S_NR_FREE_PAGES + zone] += 1 << order  # __mod_zone_freepage_state
    buddy_pfn = 0
    while order < MAX_ORDER - 1:
        buddy_pfn = pfn ^ (1 << order)
        if not page_is_buddy(order_, flags, zone_info, pfn, buddy_pfn, order):
            break  # done_merging: buddy busy, on a pcp list, split or in another zone
        if order >= PAGEBLOCK_ORDER:
            buddy_mt = pb_mt[buddy_pfn >> PAGEBLOCK_ORDER]
            if mt != buddy_mt and (not _mergeable(mt) or not _mergeable(buddy_mt)):
                break  # done_merging: no merging into or out of highatomic/isolate blocks
        del_page_from_free_list(nxt, prv, order_, flags, free_ends, free_count, buddy_pfn, zone, order)
        pfn = buddy_pfn & pfn
        order += 1
    if order >= PAGEBLOCK_ORDER and zone_info[zone, Z_UNMAPPED_COLLAPSE] != 0:
        # done_merging: the Jan 2022 RFC's `#if 0` FIXME: "collapse PMD-size page in the
        # direct map and move the pageblock from MIGRATE_UNMAPPED to another migrate type"
        for pb in range(pfn >> PAGEBLOCK_ORDER, (pfn >> PAGEBLOCK_ORDER) + (1 << (order - PAGEBLOCK_ORDER))):
            if pb_mt[pb] == MIGRATE_UNMAPPED:
                pb_mt[pb] = MIGRATE_MOVABLE  # set_pageblock_migratetype(page, MIGRATE_MOVABLE)
                n = stats[S_PB_LOG_LEN]
                if n < PB_LOG_CAPACITY:
                    stats[S_PB_LOG + n] = pb  # the caller restores its 2M leaf
                    stats[S_PB_LOG_LEN] = n + 1
                else:
                    stats[S_PB_LOG_OVERFLOW] += 1
    if fpi & FPI_TO_TAIL:
        to_tail = True
    else:
        to_tail = buddy_merge_likely(order_, flags, zone_info, pfn, buddy_pfn, order)
    # (the FIXME changes the pageblock's type only: the block goes on the list of the
    # migratetype it was freed with)
    add_to_free_list(nxt, prv, order_, flags, free_ends, free_count, pfn, zone, order, mt, to_tail)


@njit(cache=True, inline="always")
def expand(nxt, prv, order_, flags, free_ends, free_count, pfn, zone, low, high, mt):
    """expand(): split a 2^high block down to 2^low; upper halves go to the head of mt's lists.

    Example: an order-3 block at 0x100 for an order-0 request leaves 0x104 (order 2),
    0x102 (order 1), 0x101 (order 0) free and returns 0x100.
    """
    size = 1 << high
    while high > low:
        high -= 1
        size >>= 1
        add_to_free_list(nxt, prv, order_, flags, free_ends, free_count, pfn + size, zone, high, mt, False)


@njit(cache=True, inline="always")
def __rmqueue_smallest(nxt, prv, order_, flags, free_ends, free_count, zone, order, mt):
    """__rmqueue_smallest(): first block of the smallest order >= order on mt's lists."""
    for current_order in range(order, MAX_ORDER):
        pfn = free_ends[_lid(zone, current_order, mt), 0]
        if pfn < 0:
            continue
        del_page_from_free_list(nxt, prv, order_, flags, free_ends, free_count, pfn, zone, current_order)
        expand(nxt, prv, order_, flags, free_ends, free_count, pfn, zone, order, current_order, mt)
        order_[pfn] = order | (mt << 4)  # set_pcppage_migratetype(page, migratetype)
        return pfn
    return -1


@njit(cache=True)
def move_freepages_block(nxt, prv, order_, flags, free_ends, free_count, zone_info, pfn, zone, mt):
    """move_freepages_block() + move_freepages(): (pages moved, movable pages counted)."""
    start_pfn = pfn & ~(PAGEBLOCK_NR_PAGES - 1)
    end_pfn = start_pfn + PAGEBLOCK_NR_PAGES - 1
    zs = zone_info[zone, Z_START_PFN]
    ze = zone_info[zone, Z_END_PFN]
    if not (zs <= start_pfn < ze):
        start_pfn = pfn  # do not cross zone boundaries
    if not (zs <= end_pfn < ze):
        return 0, 0  # the block's end is outside the zone
    moved = 0
    movable = 0
    p = start_pfn
    while p <= end_pfn:
        if not (flags[p] & PG_BUDDY):
            if flags[p] & PG_LRU:
                movable += 1
            p += 1
            continue
        o = order_[p] & 15
        move_to_free_list(nxt, prv, order_, free_ends, free_count, p, zone, o, mt)
        p += 1 << o
        moved += 1 << o
    return moved, movable


@njit(cache=True, inline="always")
def can_steal_fallback(order, start_mt):
    """can_steal_fallback(): whole-pageblock stealing allowed for this block order?"""
    if order >= PAGEBLOCK_ORDER:
        return True
    if (order >= PAGEBLOCK_ORDER // 2 or start_mt == MIGRATE_RECLAIMABLE
            or start_mt == MIGRATE_UNMOVABLE or start_mt == MIGRATE_UNMAPPED):
        return True
    return False


@njit(cache=True)
def find_suitable_fallback(free_ends, fallbacks, zone, order, mt):
    """find_suitable_fallback(area, order, mt, only_stealable=false): (fallback_mt, can_steal)."""
    nr_free = 0
    for t in range(MIGRATE_TYPES):
        if free_ends[_lid(zone, order, t), 0] >= 0:
            nr_free = 1
            break
    if nr_free == 0:
        return -1, False  # area->nr_free == 0
    for i in range(fallbacks.shape[1]):
        fmt = np.int64(fallbacks[mt, i])
        if fmt < 0:
            break
        if free_ends[_lid(zone, order, fmt), 0] < 0:
            continue  # free_area_empty()
        return fmt, can_steal_fallback(order, mt)
    return -1, False


@njit(cache=True)
def steal_suitable_fallback(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info,
                            stats, pfn, zone, start_type, whole_block):
    """steal_suitable_fallback(): move the block (and maybe its pageblock) to start_type."""
    current_order = order_[pfn] & 15
    pb = pfn >> PAGEBLOCK_ORDER
    old_block_type = pb_mt[pb]
    single_page = False
    if old_block_type == MIGRATE_HIGHATOMIC:
        single_page = True  # never take over highatomic reserves
    elif start_type == MIGRATE_UNMAPPED:
        # Jan 2022 RFC: "the entire pageblock will be moved, but it is handled later in
        # get_page_from_freelist()" (set_pageblock_unmapped(), simulated placement)
        single_page = True
    elif current_order >= PAGEBLOCK_ORDER:
        # change_pageblock_range(): take ownership of every pageblock in the block
        for i in range(1 << (current_order - PAGEBLOCK_ORDER)):
            if pb_mt[pb + i] != start_type:
                stats[S_PAGEBLOCK_CLAIMED] += 1
            pb_mt[pb + i] = start_type
        single_page = True
    elif not whole_block:
        single_page = True  # can_steal_fallback() said no
    if not single_page:
        nr_moved, movable_pages = move_freepages_block(
            nxt, prv, order_, flags, free_ends, free_count, zone_info, pfn, zone, start_type)
        if start_type == MIGRATE_MOVABLE:
            alike_pages = movable_pages
        elif old_block_type == MIGRATE_MOVABLE:
            # unmovable/reclaimable into a movable block: every non-movable page is alike
            alike_pages = PAGEBLOCK_NR_PAGES - (nr_moved + movable_pages)
        else:
            alike_pages = 0
        if nr_moved == 0:
            single_page = True  # moving the whole block failed at a zone boundary
        else:
            # claim the block when half of it is free or compatible (256 of 512 pages)
            if nr_moved + alike_pages >= (1 << (PAGEBLOCK_ORDER - 1)):
                if pb_mt[pb] != start_type:
                    stats[S_PAGEBLOCK_CLAIMED] += 1
                pb_mt[pb] = start_type
            return
    move_to_free_list(nxt, prv, order_, free_ends, free_count, pfn, zone, current_order, start_type)


@njit(cache=True)
def __rmqueue_fallback(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info, stats,
                       fallbacks, zone, order, start_mt, alloc_flags):
    """__rmqueue_fallback(): steal from another type's lists, largest block first."""
    min_order = order
    if order < PAGEBLOCK_ORDER and (alloc_flags & ALLOC_NOFRAGMENT):
        min_order = PAGEBLOCK_ORDER  # do not fragment pageblocks in the first pass
    found_order = -1
    fallback_mt = -1
    can_steal = False
    for current_order in range(MAX_ORDER - 1, min_order - 1, -1):
        fmt, cs = find_suitable_fallback(free_ends, fallbacks, zone, current_order, start_mt)
        if fmt < 0:
            continue
        if (not cs) and start_mt == MIGRATE_MOVABLE and current_order > order:
            # find_smallest: a movable request that cannot steal the block splits the
            # smallest suitable block instead
            for co in range(order, MAX_ORDER):
                fmt2, cs2 = find_suitable_fallback(free_ends, fallbacks, zone, co, start_mt)
                if fmt2 >= 0:
                    found_order = co
                    fallback_mt = fmt2
                    can_steal = cs2
                    break
        else:
            found_order = current_order
            fallback_mt = fmt
            can_steal = cs
        break
    if found_order < 0:
        return False
    pfn = free_ends[_lid(zone, found_order, fallback_mt), 0]
    steal_suitable_fallback(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info,
                            stats, pfn, zone, start_mt, can_steal)
    stats[S_EXTFRAG] += 1  # trace_mm_page_alloc_extfrag()
    if found_order < PAGEBLOCK_ORDER:
        stats[S_EXTFRAG_FRAGMENTING] += 1
    return True


@njit(cache=True, inline="always")
def __rmqueue(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info, stats,
              fallbacks, zone, order, mt, alloc_flags):
    """__rmqueue(): own type first, then a fallback steal and a retry (no CMA here)."""
    while True:
        pfn = __rmqueue_smallest(nxt, prv, order_, flags, free_ends, free_count, zone, order, mt)
        if pfn >= 0:
            return pfn
        if not __rmqueue_fallback(nxt, prv, order_, flags, pb_mt, free_ends, free_count,
                                  zone_info, stats, fallbacks, zone, order, mt, alloc_flags):
            return -1


@njit(cache=True, inline="always")
def pcp_allowed_order(cfg, order):
    """pcp_allowed_order(): orders 0..PAGE_ALLOC_COSTLY_ORDER, and pageblock_order with THP."""
    if order <= PAGE_ALLOC_COSTLY_ORDER:
        return True
    return cfg[C_PCP_THP] != 0 and order == PAGEBLOCK_ORDER


@njit(cache=True, inline="always")
def order_to_pindex(cfg, mt, order):
    """order_to_pindex(): MIGRATE_PCPTYPES lists per order; one shared list for THP."""
    if order > PAGE_ALLOC_COSTLY_ORDER:
        return cfg[C_PCPTYPES] * (PAGE_ALLOC_COSTLY_ORDER + 1)
    if mt == MIGRATE_UNMAPPED:
        mt = MIGRATE_PCPTYPES  # its pcp slot: the type after RECLAIMABLE, as in the RFC
    return cfg[C_PCPTYPES] * order + mt


@njit(cache=True, inline="always")
def pindex_to_order(cfg, pindex):
    if pindex == cfg[C_PCPTYPES] * (PAGE_ALLOC_COSTLY_ORDER + 1):
        return PAGEBLOCK_ORDER
    return pindex // cfg[C_PCPTYPES]


@njit(cache=True)
def rmqueue_bulk(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends, zone_info,
                 stats, fallbacks, zone, order, count, pindex, mt, alloc_flags):
    """rmqueue_bulk(): take up to count blocks with __rmqueue, each to the pcp list's tail."""
    pid = zone * PCP_STRIDE + pindex
    i = 0
    while i < count:
        pfn = __rmqueue(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info, stats,
                        fallbacks, zone, order, mt, alloc_flags)
        if pfn < 0:
            break
        _list_add(nxt, prv, pcp_ends, pid, pfn, True)
        flags[pfn] |= PG_PCP
        i += 1
    stats[S_NR_FREE_PAGES + zone] -= i << order
    stats[S_PCP_REFILL] += 1
    return i


@njit(cache=True)
def free_pcppages_bulk(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends,
                       zone_info, stats, cfg, zone, count, pindex):
    """free_pcppages_bulk(): give count pages back, round-robin over lists from pindex."""
    min_pindex = 0
    max_pindex = cfg[C_NR_PCP_LISTS] - 1
    count = min(zone_info[zone, Z_PCP_COUNT], count)
    pindex = pindex - 1  # the requested list is drained first
    stats[S_PCP_DRAIN] += 1
    while count > 0:
        while True:
            pindex += 1
            if pindex > max_pindex:
                pindex = min_pindex
            if pcp_ends[zone * PCP_STRIDE + pindex, 0] >= 0:
                break
            if pindex == max_pindex:
                max_pindex -= 1
            if pindex == min_pindex:
                min_pindex += 1
        pid = zone * PCP_STRIDE + pindex
        order = pindex_to_order(cfg, pindex)
        nr_pages = 1 << order
        while True:
            pfn = pcp_ends[pid, 1]  # list_last_entry()
            mt = order_[pfn] >> 4  # get_pcppage_migratetype()
            _list_del(nxt, prv, pcp_ends, pid, pfn)
            flags[pfn] &= ~PG_PCP
            count -= nr_pages
            zone_info[zone, Z_PCP_COUNT] -= nr_pages
            __free_one_page(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info,
                            stats, pfn, zone, order, mt, FPI_NONE)
            if not (count > 0 and pcp_ends[pid, 0] >= 0):
                break


@njit(cache=True, inline="always")
def rmqueue_pcplist(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends, zone_info,
                    stats, fallbacks, cfg, zone, order, mt, alloc_flags):
    """rmqueue_pcplist() + __rmqueue_pcplist(): head of the pcp list, refilled when empty."""
    zone_info[zone, Z_PCP_FREE_FACTOR] >>= 1
    pindex = order_to_pindex(cfg, mt, order)
    pid = zone * PCP_STRIDE + pindex
    if pcp_ends[pid, 0] < 0:
        batch = zone_info[zone, Z_PCP_BATCH]
        if batch > 1:
            batch = max(batch >> order, 2)  # scale batch to the order
        alloced = rmqueue_bulk(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends,
                               zone_info, stats, fallbacks, zone, order, batch, pindex, mt,
                               alloc_flags)
        zone_info[zone, Z_PCP_COUNT] += alloced << order
        if pcp_ends[pid, 0] < 0:
            return -1
    pfn = pcp_ends[pid, 0]  # list_first_entry()
    _list_del(nxt, prv, pcp_ends, pid, pfn)
    flags[pfn] &= ~PG_PCP
    zone_info[zone, Z_PCP_COUNT] -= 1 << order
    stats[S_PGALLOC + zone] += 1 << order
    return pfn


@njit(cache=True, inline="always")
def rmqueue_buddy(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info, stats,
                  fallbacks, zone, order, mt, alloc_flags):
    """rmqueue_buddy(): __rmqueue under the zone lock (no ALLOC_HIGHATOMIC in the fast path)."""
    pfn = __rmqueue(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info, stats,
                    fallbacks, zone, order, mt, alloc_flags)
    if pfn < 0:
        return -1
    stats[S_NR_FREE_PAGES + zone] -= 1 << order
    stats[S_PGALLOC + zone] += 1 << order
    return pfn


@njit(cache=True, inline="always")
def zone_watermark_ok(free_ends, zone_info, stats, zone, order, mark, highest_zoneidx):
    """zone_watermark_fast() / __zone_watermark_ok() for a plain (non-atomic) request.

    free pages (less 2^order - 1) must exceed mark + lowmem_reserve[highest_zoneidx]
    (buddy_init() sizes both as boot does, zones.boot_sizing()), and for order > 0 a free
    block of at least that order must exist. No nr_reserved_highatomic (highatomic
    reserves are not modelled), no ALLOC_HIGH/ALLOC_HARDER reductions of mark (the slow
    path here retries at the plain min watermark).
    """
    free_pages = stats[S_NR_FREE_PAGES + zone]
    reserve = 0
    if highest_zoneidx > zone:
        reserve = zone_info[zone, Z_LOWMEM_RESERVE + highest_zoneidx - zone - 1]
    if order == 0 and free_pages > mark + reserve:
        return True
    free_pages -= (1 << order) - 1
    if free_pages <= mark + reserve:
        return False
    if order == 0:
        return True
    for o in range(order, MAX_ORDER):
        for mt in range(MIGRATE_TYPES):
            if mt == MIGRATE_HIGHATOMIC:
                continue  # counted only for ALLOC_HARDER/OOM requests
            if free_ends[_lid(zone, o, mt), 0] >= 0:
                return True
    return False


@njit(cache=True, inline="always")
def rmqueue(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends, zone_info, stats,
            fallbacks, cfg, zone, order, mt, alloc_flags):
    """rmqueue(): pcp lists for pcp_allowed_order(), else (or on failure) the buddy lists."""
    if cfg[C_PCP] != 0 and pcp_allowed_order(cfg, order):
        pfn = rmqueue_pcplist(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends,
                              zone_info, stats, fallbacks, cfg, zone, order, mt, alloc_flags)
        if pfn >= 0:
            return pfn
    return rmqueue_buddy(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info, stats,
                         fallbacks, zone, order, mt, alloc_flags)


@njit(cache=True, inline="always")
def get_page_from_freelist(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends,
                           zone_info, stats, fallbacks, cfg, preferred, highest_zoneidx, order,
                           mt, alloc_flags):
    """get_page_from_freelist(): walk the zonelist (Normal, DMA32, DMA) from preferred down.

    A first pass with ALLOC_NOFRAGMENT only steals whole pageblocks; if every zone fails,
    the zonelist is walked again without it ("UMA machine ... fragmented").
    """
    while True:
        no_fallback = (alloc_flags & ALLOC_NOFRAGMENT) != 0
        for zone in range(preferred, -1, -1):
            if zone_info[zone, Z_PRESENT] == 0:
                continue  # not in the zonelist: unpopulated
            if (alloc_flags & ALLOC_WMARK_MASK) == ALLOC_WMARK_LOW:
                mark = zone_info[zone, Z_WMARK_LOW]
            else:
                mark = zone_info[zone, Z_WMARK_MIN]
            if not zone_watermark_ok(free_ends, zone_info, stats, zone, order, mark, highest_zoneidx):
                continue  # no node reclaim: try the next zone
            pfn = rmqueue(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends,
                          zone_info, stats, fallbacks, cfg, zone, order, mt, alloc_flags)
            if pfn >= 0:
                return pfn
        if no_fallback:
            alloc_flags &= ~ALLOC_NOFRAGMENT
            continue
        return -1


@njit(cache=True)
def alloc_pages(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends, zone_info,
                stats, fallbacks, cfg, highest_zoneidx, order, mt):
    """__alloc_pages(): a block of 2^order pages of migratetype mt; its pfn, or -1 (OOM).

    The fast path runs with ALLOC_WMARK_LOW | alloc_flags_nofragment(preferred zone);
    when it fails, the slow path retries once at ALLOC_WMARK_MIN without ALLOC_NOFRAGMENT
    (no reclaim, no compaction), then the failure is counted.
    """
    preferred = -1
    for z in range(highest_zoneidx, -1, -1):
        if zone_info[z, Z_PRESENT] > 0:
            preferred = z  # ac->preferred_zoneref: first populated zone in the zonelist
            break
    pfn = -1
    if preferred >= 0:
        alloc_flags = ALLOC_WMARK_LOW
        if preferred == ZONE_NORMAL and cfg[C_NOFRAGMENT] != 0:
            alloc_flags |= ALLOC_NOFRAGMENT  # alloc_flags_nofragment()
        pfn = get_page_from_freelist(nxt, prv, order_, flags, pb_mt, free_ends, free_count,
                                     pcp_ends, zone_info, stats, fallbacks, cfg, preferred,
                                     highest_zoneidx, order, mt, alloc_flags)
        if pfn < 0:
            pfn = get_page_from_freelist(nxt, prv, order_, flags, pb_mt, free_ends, free_count,
                                         pcp_ends, zone_info, stats, fallbacks, cfg, preferred,
                                         highest_zoneidx, order, mt, ALLOC_WMARK_MIN)
    if pfn < 0:
        stats[S_ALLOC_FAIL] += 1
        stats[S_ALLOC_FAIL_PAGES] += 1 << order
        return -1
    prep_new_page(order_, flags, pfn, order, mt)
    stats[S_NR_ALLOC] += 1
    return pfn


@njit(cache=True, inline="always")
def prep_new_page(order_, flags, pfn, order, mt):
    """prep_new_page(): the block is now allocated; movable pages become LRU pages."""
    flags[pfn] = (flags[pfn] & ~(PG_BUDDY | PG_PCP)) | PG_HEAD
    order_[pfn] = order | (mt << 4)
    if mt == MIGRATE_MOVABLE:
        for p in range(pfn, pfn + (1 << order)):
            flags[p] |= PG_LRU


@njit(cache=True, inline="always")
def __free_pages_ok(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info, stats,
                    pfn, zone, order, fpi):
    """__free_pages_ok(): straight to the buddy lists with the pageblock's type."""
    mt = pb_mt[pfn >> PAGEBLOCK_ORDER]  # get_pfnblock_migratetype()
    __free_one_page(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info, stats,
                    pfn, zone, order, mt, fpi)
    stats[S_PGFREE] += 1 << order


@njit(cache=True, inline="always")
def nr_pcp_free(zone_info, cfg, zone, high, batch, free_high):
    """nr_pcp_free(): how many pages to drain; doubles while frees go on without allocs."""
    if free_high:
        return zone_info[zone, Z_PCP_COUNT]  # free everything after high-order frees
    if high < batch:
        return 1  # pcp disabled or boot pageset
    min_nr_free = batch
    max_nr_free = high - batch
    batch = batch << zone_info[zone, Z_PCP_FREE_FACTOR]
    if batch < max_nr_free and zone_info[zone, Z_PCP_FREE_FACTOR] < cfg[C_PCP_BATCH_SCALE_MAX]:
        zone_info[zone, Z_PCP_FREE_FACTOR] += 1
    return min(max(batch, min_nr_free), max_nr_free)  # clamp()


@njit(cache=True, inline="always")
def free_unref_page(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends, zone_info,
                    stats, cfg, pfn, zone, order):
    """free_unref_page() + free_unref_page_commit(): to the head of a pcp list, drain above high."""
    migratetype = pb_mt[pfn >> PAGEBLOCK_ORDER]  # free_unref_page_prepare()
    order_[pfn] = order | (migratetype << 4)  # set_pcppage_migratetype()
    pcpmigratetype = migratetype
    if migratetype == MIGRATE_HIGHATOMIC:
        pcpmigratetype = MIGRATE_MOVABLE  # highatomic shares movable's list
    stats[S_PGFREE] += 1 << order
    pindex = order_to_pindex(cfg, pcpmigratetype, order)
    _list_add(nxt, prv, pcp_ends, zone * PCP_STRIDE + pindex, pfn, False)
    flags[pfn] |= PG_PCP
    zone_info[zone, Z_PCP_COUNT] += 1 << order
    free_high = (zone_info[zone, Z_PCP_FREE_FACTOR] != 0 and order != 0
                 and order <= PAGE_ALLOC_COSTLY_ORDER)
    high = zone_info[zone, Z_PCP_HIGH]  # nr_pcp_high(), no ZONE_RECLAIM_ACTIVE
    if high == 0 or free_high:
        high = 0
    if zone_info[zone, Z_PCP_COUNT] >= high:
        batch = zone_info[zone, Z_PCP_BATCH]
        n = nr_pcp_free(zone_info, cfg, zone, high, batch, free_high)
        free_pcppages_bulk(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends,
                           zone_info, stats, cfg, zone, n, pindex)


@njit(cache=True, inline="always")
def bad_free(order_, flags, stats, pfn, order):
    """A free of a pfn that is not the head of an allocated block of that order:
    counted (S_BAD_FREE) and ignored by the caller."""
    if (pfn < 0 or pfn >= flags.shape[0] or not (flags[pfn] & PG_HEAD)
            or (order_[pfn] & 15) != order):
        stats[S_BAD_FREE] += 1
        return True
    return False


@njit(cache=True)
def free_pages(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends, zone_info,
               stats, cfg, pfn, order):
    """__free_pages() -> free_the_page(); returns 0, or -1 for a bad free (counted, ignored)."""
    if bad_free(order_, flags, stats, pfn, order):
        return -1
    zone = page_zonenum(zone_info, pfn)
    flags[pfn] &= ~PG_HEAD
    if flags[pfn] & PG_LRU:
        for p in range(pfn, pfn + (1 << order)):
            flags[p] &= ~PG_LRU
    stats[S_NR_FREE_CALLS] += 1
    if cfg[C_PCP] != 0 and pcp_allowed_order(cfg, order):
        free_unref_page(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends,
                        zone_info, stats, cfg, pfn, zone, order)
    else:
        __free_pages_ok(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info, stats,
                        pfn, zone, order, FPI_NONE)
    return 0


@njit(cache=True)
def drain_all_pages(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends, zone_info,
                    stats, cfg):
    """drain_all_pages(NULL) -> drain_pages_zone() per zone, in batch << SCALE_MAX chunks."""
    for zone in range(MAX_NR_ZONES):
        while zone_info[zone, Z_PCP_COUNT] > 0:
            to_drain = min(zone_info[zone, Z_PCP_COUNT],
                           zone_info[zone, Z_PCP_BATCH] << cfg[C_PCP_BATCH_SCALE_MAX])
            free_pcppages_bulk(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends,
                               zone_info, stats, cfg, zone, to_drain, 0)


@njit(cache=True)
def memmap_init(pb_mt, flags, zone_info, mem_ranges):
    """memmap_init() / memmap_init_range(): every pageblock whose first pfn is memory in a
    zone is MIGRATE_MOVABLE; all pfns start PageReserved until memblock frees them."""
    flags[:] = PG_RESERVED
    pb_mt[:] = MIGRATE_UNMOVABLE  # pageblock bitmap starts zeroed
    for r in range(mem_ranges.shape[0]):
        for z in range(MAX_NR_ZONES):
            s = max(mem_ranges[r, 0], zone_info[z, Z_START_PFN])
            e = min(mem_ranges[r, 1], zone_info[z, Z_END_PFN])
            if s >= e:
                continue
            first = (s + PAGEBLOCK_NR_PAGES - 1) & ~(PAGEBLOCK_NR_PAGES - 1)
            for p in range(first, e, PAGEBLOCK_NR_PAGES):
                pb_mt[p >> PAGEBLOCK_ORDER] = MIGRATE_MOVABLE


@njit(cache=True)
def memblock_free_all(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info, stats,
                      free_ranges):
    """memblock_free_all() -> __free_pages_memory(): largest aligned blocks, in pfn order.

    Each block goes through __free_pages_core(): managed_pages += 2^order, then
    __free_pages_ok(page, order, FPI_TO_TAIL). Example: [0x100, 0x7ffdd) frees 0x100 at
    order 8, 0x200 at 9, 0x400 at 10, ... up to 0x7fc00, then 0x7fc00 at 9, ... 0x7ffdc at 0.
    """
    for r in range(free_ranges.shape[0]):
        start = free_ranges[r, 0]
        end = free_ranges[r, 1]
        while start < end:
            if start == 0:
                order = MAX_ORDER - 1
            else:
                order = min(MAX_ORDER - 1, _ffs(start))
            while start + (1 << order) > end:
                order -= 1
            zone = page_zonenum(zone_info, start)
            for p in range(start, start + (1 << order)):
                flags[p] = 0  # __ClearPageReserved
            zone_info[zone, Z_MANAGED] += 1 << order
            __free_pages_ok(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info,
                            stats, start, zone, order, FPI_TO_TAIL)
            start += 1 << order


@njit(cache=True)
def defer_struct_pages(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info, stats,
                       start, end):
    """CONFIG_DEFERRED_STRUCT_PAGE_INIT: memmap_init() stopped at `start`
    (zones.first_deferred_pfn()), so [start, end) joins the allocator only as the
    pgdatinit kthread frees it (deferred_free_range()), and reserved memory there is
    released later by its own free. Until then it is not free, and its pageblocks keep
    the zeroed bitmap's MIGRATE_UNMOVABLE: init_reserved_page() sets no migratetype,
    only deferred_free_range() sets MIGRATE_MOVABLE, on the pageblocks it frees the
    first page of. Undoes what memblock_free_all() did here at boot."""
    pfn = start
    while pfn < end:
        if flags[pfn] & PG_BUDDY:
            order = order_[pfn] & 15
            zone = page_zonenum(zone_info, pfn)
            del_page_from_free_list(nxt, prv, order_, flags, free_ends, free_count, pfn, zone,
                                    order)
            stats[S_NR_FREE_PAGES + zone] -= 1 << order
            zone_info[zone, Z_MANAGED] -= 1 << order
            for p in range(pfn, pfn + (1 << order)):
                flags[p] = PG_RESERVED
            pfn += 1 << order
        else:
            flags[pfn] |= PG_RESERVED
            pfn += 1
    first = (start + PAGEBLOCK_NR_PAGES - 1) & ~(PAGEBLOCK_NR_PAGES - 1)
    for p in range(first, end, PAGEBLOCK_NR_PAGES):
        pb_mt[p >> PAGEBLOCK_ORDER] = MIGRATE_UNMOVABLE
    # setup_per_cpu_pageset() sizes the pcp lists from the pages managed by then (the
    # deferred ones are not), with the watermarks still 0: zone_highsize() gives
    # batch * 4. init_per_zone_wmark_min(), after deferred init, sets the sizes
    # the allocator had (kept here until EV_H_WMARK_INIT)
    for z in range(zone_info.shape[0]):
        if zone_info[z, Z_PRESENT] == 0 or zone_info[z, Z_PCP_BATCH_FINAL] != 0:
            continue
        zone_info[z, Z_PCP_BATCH_FINAL] = zone_info[z, Z_PCP_BATCH]
        zone_info[z, Z_PCP_HIGH_FINAL] = zone_info[z, Z_PCP_HIGH]
        batch = max(1, zone_batchsize(zone_info[z, Z_MANAGED]))
        zone_info[z, Z_PCP_BATCH] = batch
        zone_info[z, Z_PCP_HIGH] = batch << 2


zone_batchsize = njit(cache=True)(_zone_batchsize)  # zones.zone_batchsize(), compiled


@njit(cache=True)
def init_per_zone_wmark_min(zone_info):
    """init_per_zone_wmark_min() -> setup_per_zone_wmarks() -> zone_pcp_update(): the
    pcp sizes from the watermarks and all managed pages, once deferred init is done."""
    for z in range(zone_info.shape[0]):
        if zone_info[z, Z_PCP_BATCH_FINAL] == 0:
            continue
        if zone_info[z, Z_PCP_BATCH_SETUP] != 0:  # the boot pageset is still on
            zone_info[z, Z_PCP_BATCH_SETUP] = zone_info[z, Z_PCP_BATCH_FINAL]
            zone_info[z, Z_PCP_HIGH_SETUP] = zone_info[z, Z_PCP_HIGH_FINAL]
        else:
            zone_info[z, Z_PCP_BATCH] = zone_info[z, Z_PCP_BATCH_FINAL]
            zone_info[z, Z_PCP_HIGH] = zone_info[z, Z_PCP_HIGH_FINAL]
        zone_info[z, Z_PCP_BATCH_FINAL] = 0
        zone_info[z, Z_PCP_HIGH_FINAL] = 0


@njit(cache=True)
def deferred_free_range(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info, stats,
                        pfn, order):
    """The pgdatinit kthread's free of a block it initialised (deferred_free_range()):
    MIGRATE_MOVABLE on each pageblock whose first page it holds, then
    __free_pages_core(): straight to the buddy lists' tails (FPI_TO_TAIL), no pcp.
    The block is a claimed one (claim_block() gave it its managed pages). 0, or -1
    for a bad free (counted, ignored)."""
    if bad_free(order_, flags, stats, pfn, order):
        return -1
    zone = page_zonenum(zone_info, pfn)
    flags[pfn] &= ~PG_HEAD
    for p in range(pfn, pfn + (1 << order)):
        flags[p] &= ~PG_LRU
        if (p & (PAGEBLOCK_NR_PAGES - 1)) == 0:
            pb_mt[p >> PAGEBLOCK_ORDER] = MIGRATE_MOVABLE
    stats[S_NR_FREE_CALLS] += 1
    __free_pages_ok(nxt, prv, order_, flags, pb_mt, free_ends, free_count, zone_info, stats,
                    pfn, zone, order, FPI_TO_TAIL)
    return 0


@njit(cache=True)
def _ffs(x):
    """__ffs(): index of the lowest set bit (x > 0)."""
    n = 0
    while (x & 1) == 0:
        x >>= 1
        n += 1
    return n


# Operation codes for run_ops()
OP_ALLOC = 0  # (OP_ALLOC, highest_zoneidx, order, migratetype) -> pfn or -1
OP_FREE = 1  # (OP_FREE, pfn, order, 0) -> 0 or -1
OP_DRAIN = 2  # (OP_DRAIN, 0, 0, 0) -> 0


@njit(cache=True)
def run_ops(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends, zone_info, stats,
            fallbacks, cfg, ops, out):
    """Apply ops[i] = (op, a, b, c) in order; out[i] gets each result.

    OP_FREE with a negative pfn frees the block that OP_ALLOC number -a-1 (an index into
    ops) returned, so a stream can free allocations whose pfns it does not know yet.
    """
    for i in range(ops.shape[0]):
        op = ops[i, 0]
        if op == OP_ALLOC:
            out[i] = alloc_pages(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends,
                                 zone_info, stats, fallbacks, cfg, ops[i, 1], ops[i, 2], ops[i, 3])
        elif op == OP_FREE:
            pfn = ops[i, 1]
            if pfn < 0:
                pfn = out[-pfn - 1]
            if pfn < 0:
                out[i] = -1  # the allocation failed: nothing to free
                continue
            out[i] = free_pages(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends,
                                zone_info, stats, cfg, pfn, ops[i, 2])
        elif op == OP_DRAIN:
            drain_all_pages(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends,
                            zone_info, stats, cfg)
            out[i] = 0
        else:
            out[i] = -2


# ---------------------------------------------------------------------------
# Python side: construction, the public wrappers, views for reports and tests
# ---------------------------------------------------------------------------

@dataclass
class BuddyState:
    """All allocator state as arrays (see the module docstring for the layout)."""

    page_next: np.ndarray
    page_prev: np.ndarray
    page_order: np.ndarray
    page_flags: np.ndarray
    pageblock_mt: np.ndarray
    free_ends: np.ndarray
    free_count: np.ndarray
    pcp_ends: np.ndarray
    zone_info: np.ndarray
    stats: np.ndarray
    fallbacks: np.ndarray
    cfg: np.ndarray
    memory: np.ndarray  # int64[n, 2]: memblock.memory pfn ranges (reports; not for kernels)

    def arrays(self) -> tuple:
        """The arrays in the order every kernel takes them."""
        return (self.page_next, self.page_prev, self.page_order, self.page_flags,
                self.pageblock_mt, self.free_ends, self.free_count, self.pcp_ends,
                self.zone_info, self.stats, self.fallbacks, self.cfg)

    # -- operations -------------------------------------------------------------
    def alloc(self, highest_zoneidx: int, order: int, migratetype: int) -> int:
        """alloc_pages(): pfn of a 2^order block, or -1 (counted in stats)."""
        if not (0 <= order < MAX_ORDER):
            raise ValueError(f"order {order} outside 0..{MAX_ORDER - 1}")
        if not (0 <= migratetype < MIGRATE_PCPTYPES or
                (migratetype == MIGRATE_UNMAPPED and self.cfg[C_UNMAPPED])):
            raise ValueError(f"migratetype {migratetype}: requests are 0..2 "
                             "(4 with MIGRATE_UNMAPPED)")
        if not (0 <= highest_zoneidx < MAX_NR_ZONES):
            raise ValueError(f"zone {highest_zoneidx} outside 0..2")
        return int(alloc_pages(*self.arrays(), highest_zoneidx, order, migratetype))

    def alloc_gfp(self, gfp: int, order: int) -> int:
        return self.alloc(gfp_zone(gfp), order, gfp_migratetype(gfp))

    def free(self, pfn: int, order: int) -> int:
        """__free_pages(); 0, or -1 for a pfn that is not an allocated block of that order."""
        return int(free_pages(*self.arrays()[:10], self.cfg, pfn, order))

    def claim(self, pfn: int, order: int) -> int:
        """Mark the free block at pfn allocated where it is (claim_block()); 0 or -1."""
        return int(claim_block(*self.arrays()[:10], self.cfg, pfn, order))

    def drain(self) -> None:
        """drain_all_pages(NULL)."""
        drain_all_pages(*self.arrays()[:10], self.cfg)

    def run(self, ops: np.ndarray) -> np.ndarray:
        """run_ops() over an int64[n, 4] array; returns the per-op results."""
        ops = np.ascontiguousarray(ops, dtype=np.int64)
        out = np.zeros(ops.shape[0], np.int64)
        run_ops(*self.arrays(), ops, out)
        return out

    # -- views ------------------------------------------------------------------
    @property
    def nr_pfns(self) -> int:
        return int(self.page_flags.shape[0])

    def populated_zones(self) -> list[int]:
        return [z for z in range(MAX_NR_ZONES) if self.zone_info[z, Z_PRESENT] > 0]

    def stat(self, name: str) -> int:
        idx = STAT_NAMES[name] if name in STAT_NAMES else PRETRACE_STAT_NAMES[name]
        return int(self.stats[idx])

    def counters(self) -> dict[str, int]:
        return {k: int(self.stats[v]) for k, v in STAT_NAMES.items()}

    def nr_free(self, zone: int, order: int) -> int:
        """free_area[order].nr_free."""
        base = _lid_py(zone, order, 0)
        return int(self.free_count[base:base + MIGRATE_TYPES].sum())

    def free_list(self, zone: int, order: int, mt: int) -> list[int]:
        """The pfns on free_area[order].free_list[mt], head first."""
        return _walk(self.page_next, int(self.free_ends[_lid_py(zone, order, mt), 0]))

    def pcp_list(self, zone: int, pindex: int) -> list[int]:
        return _walk(self.page_next, int(self.pcp_ends[zone * PCP_STRIDE + pindex, 0]))

    def free_lists(self) -> dict[tuple[int, int, int], list[int]]:
        """Every non-empty free list, keyed (zone, order, migratetype)."""
        out = {}
        for z in range(MAX_NR_ZONES):
            for o in range(MAX_ORDER):
                for t in range(MIGRATE_TYPES):
                    if self.free_ends[_lid_py(z, o, t), 0] >= 0:
                        out[(z, o, t)] = self.free_list(z, o, t)
        return out

    def pcp_lists(self) -> dict[tuple[int, int], list[int]]:
        out = {}
        for z in range(MAX_NR_ZONES):
            for i in range(int(self.cfg[C_NR_PCP_LISTS])):
                if self.pcp_ends[z * PCP_STRIDE + i, 0] >= 0:
                    out[(z, i)] = self.pcp_list(z, i)
        return out

    def bytes_per_page(self) -> float:
        """Array bytes per simulated pfn (per-pfn arrays plus the rest, amortised)."""
        total = sum(a.nbytes for a in self.arrays())
        return total / self.nr_pfns


def _lid_py(zone: int, order: int, mt: int) -> int:
    return (zone * MAX_ORDER + order) * MIGRATE_TYPES + mt


def _walk(nxt: np.ndarray, head: int) -> list[int]:
    out = []
    p = head
    while p >= 0:
        out.append(p)
        p = int(nxt[p])
    return out


def _subtract(ranges: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    holes = sorted(holes)
    for s, e in sorted(ranges):
        cur = s
        for hs, he in holes:
            if he <= cur or hs >= e:
                continue
            if hs > cur:
                out.append((cur, hs))
            cur = max(cur, he)
        if cur < e:
            out.append((cur, e))
    return out


def buddy_init(memory_pfn_ranges, reserved_pfn_ranges=(), *, pcp: bool = True,
               pcp_thp: bool = True, pcp_batch_high=None, nr_cpus: int = 1,
               nofragment: bool = True, pcp_batch_scale_max: int = 5,
               fallbacks: np.ndarray | None = None, min_free_kbytes: int | None = None,
               watermark_scale_factor: int = 10) -> BuddyState:
    """Build the allocator as 6.1 leaves it after ``memblock_free_all()``.

    ``memory_pfn_ranges``: memblock.memory as [start_pfn, end_pfn) (RAM, pages rounded
    inwards); ``reserved_pfn_ranges``: memblock.reserved, never freed. The free ranges
    are memory minus reserved, freed in ascending order.

    The watermarks (min, low) and lowmem_reserve[] are sized from the managed pages as boot
    sizes them (``zones.boot_sizing``: init_per_zone_wmark_min(), then khugepaged's
    set_recommended_min_free_kbytes() when ``pcp_thp``, i.e. with THP enabled);
    ``min_free_kbytes`` / ``watermark_scale_factor``: the vm sysctls written after boot.
    ``pcp_batch_high``: None for the 6.1 defaults of ``boot_sizing`` (batch from
    zone_batchsize(), high from the zone's low watermark), a (batch, high) pair for every
    zone, or a list of pairs per zone. ``pcp=False`` bypasses the per-CPU lists entirely.
    """
    mem = sorted((int(s), int(e)) for s, e in memory_pfn_ranges if int(e) > int(s))
    spans = zone_layout(mem)
    end_pfn = max(e for _, e in mem)
    nr_pfns = -(-end_pfn // MAX_ORDER_NR_PAGES) * MAX_ORDER_NR_PAGES
    if nr_pfns >= 1 << 31:
        raise ValueError("more than 8 TiB of pfns does not fit the int32 list links")
    nlists = MAX_NR_ZONES * MAX_ORDER * MIGRATE_TYPES
    st = BuddyState(
        page_next=np.full(nr_pfns, -1, np.int32),
        page_prev=np.full(nr_pfns, -1, np.int32),
        page_order=np.zeros(nr_pfns, np.uint8),
        page_flags=np.zeros(nr_pfns, np.uint8),
        pageblock_mt=np.zeros(nr_pfns >> PAGEBLOCK_ORDER, np.uint8),
        free_ends=np.full((nlists, 2), -1, np.int32),
        free_count=np.zeros(nlists, np.int64),
        pcp_ends=np.full((MAX_NR_ZONES * PCP_STRIDE, 2), -1, np.int32),
        zone_info=np.zeros((MAX_NR_ZONES, NR_ZONE_FIELDS), np.int64),
        stats=np.zeros(NR_STATS, np.int64),
        fallbacks=(FALLBACKS_6_1 if fallbacks is None else np.asarray(fallbacks, np.int8)).copy(),
        cfg=np.zeros(NR_CFG, np.int64),
        memory=np.array(mem, np.int64).reshape(-1, 2),
    )
    for zs in spans:
        st.zone_info[zs.idx, Z_START_PFN] = zs.start_pfn
        st.zone_info[zs.idx, Z_END_PFN] = zs.end_pfn
        st.zone_info[zs.idx, Z_PRESENT] = zs.present_pages
    st.cfg[C_PCP] = int(pcp)
    st.cfg[C_PCP_THP] = int(pcp_thp)
    st.cfg[C_NOFRAGMENT] = int(nofragment)
    st.cfg[C_PCP_BATCH_SCALE_MAX] = pcp_batch_scale_max
    st.cfg[C_PCPTYPES] = MIGRATE_PCPTYPES
    st.cfg[C_NR_PCP_LISTS] = NR_PCP_LISTS if pcp_thp else NR_LOWORDER_PCP_LISTS
    mem_arr = np.array(mem, np.int64).reshape(-1, 2)
    memmap_init(st.pageblock_mt, st.page_flags, st.zone_info, mem_arr)
    free = _subtract(mem, [(int(s), int(e)) for s, e in reserved_pfn_ranges])
    free_arr = np.array(free, np.int64).reshape(-1, 2)
    memblock_free_all(st.page_next, st.page_prev, st.page_order, st.page_flags, st.pageblock_mt,
                      st.free_ends, st.free_count, st.zone_info, st.stats, free_arr)
    managed = [int(st.zone_info[z, Z_MANAGED]) for z in range(MAX_NR_ZONES)]
    # init_per_zone_wmark_min() and khugepaged's set_recommended_min_free_kbytes() (THP
    # enabled with pcp_thp): watermarks, lowmem_reserve[] and pcp sizes from managed pages
    present = [int(st.zone_info[z, Z_PRESENT]) for z in range(MAX_NR_ZONES)]
    sizing = boot_sizing(managed, present, nr_cpus=nr_cpus, thp=pcp_thp,
                         min_free_kbytes=min_free_kbytes,
                         watermark_scale_factor=watermark_scale_factor)
    for z in range(MAX_NR_ZONES):
        st.zone_info[z, Z_WMARK_MIN], st.zone_info[z, Z_WMARK_LOW], _high = sizing.wmarks[z]
        for j in range(z + 1, MAX_NR_ZONES):
            st.zone_info[z, Z_LOWMEM_RESERVE + j - z - 1] = sizing.lowmem_reserve[z][j]
    if pcp_batch_high is None:
        bh = sizing.pcp
    elif isinstance(pcp_batch_high, tuple):
        bh = [pcp_batch_high] * MAX_NR_ZONES
    else:
        bh = list(pcp_batch_high)
    for z in range(MAX_NR_ZONES):
        st.zone_info[z, Z_PCP_BATCH], st.zone_info[z, Z_PCP_HIGH] = bh[z]
    return st


def enable_migrate_unmapped(st: BuddyState, collapse_free_pageblock: bool = False) -> None:
    """Turn st into the Jan 2022 RFC's allocator: MIGRATE_UNMAPPED as a fourth pcp
    type with its fallbacks (call before the first allocation: pcp lists must be empty)."""
    if st.zone_info[:, Z_PCP_COUNT].any():
        raise ValueError("enable_migrate_unmapped() after pages went through the pcp lists")
    st.cfg[C_UNMAPPED] = 1
    st.cfg[C_PCPTYPES] = MIGRATE_PCPTYPES + 1
    lowo = (MIGRATE_PCPTYPES + 1) * (PAGE_ALLOC_COSTLY_ORDER + 1)
    st.cfg[C_NR_PCP_LISTS] = lowo + 1 if st.cfg[C_PCP_THP] else lowo
    st.zone_info[:, Z_UNMAPPED_COLLAPSE] = int(collapse_free_pageblock)
    st.fallbacks[:] = FALLBACKS_UNMAPPED


def buddy_from_machine(machine, *, reserve_first_mib: bool = True, **kw) -> BuddyState:
    """``buddy_init`` for a dmsim Machine: memblock.memory from its RAM ranges (pages rounded
    inwards), memblock.reserved from its ``reserved`` list and, as x86 does since 5.13
    (``early_reserve_memory``: "Always reserve the first 1M of RAM"), the first MiB."""
    mem = machine.ram_pfn_ranges()
    reserved = [(s >> 12, (e + 4095) >> 12) for s, e in getattr(machine, "reserved", [])]
    if reserve_first_mib:
        reserved.append((0, 256))
    return buddy_init(mem, reserved, **kw)


@njit(cache=True)
def claim_block(nxt, prv, order_, flags, pb_mt, free_ends, free_count, pcp_ends, zone_info,
                stats, cfg, pfn, order):
    """Take the free block [pfn, pfn + 2^order) off the free lists and mark it
    allocated, splitting the free block that holds it (take_page_off_buddy() +
    break_down_buddy_pages(), for order > 0 too). Used for pages a trace shows
    were allocated before it started; a wholly reserved block becomes an
    allocated one that its free will give to the allocator. 0, or -1 when the
    block is neither (on a pcp list, allocated, partly reserved)."""
    zone = page_zonenum(zone_info, pfn)
    if zone < 0 or pfn & ((1 << order) - 1):
        return -1
    reserved = True
    for p in range(pfn, pfn + (1 << order)):
        if not flags[p] & PG_RESERVED:
            reserved = False
            break
    if reserved:
        # memblock-reserved at boot and handed to the allocator only by this free
        # (free_reserved_area(): the kernel image's init and gap pages): it joins
        # the zone's managed pages (adjust_managed_page_count()) as an allocated block
        for p in range(pfn, pfn + (1 << order)):
            flags[p] &= ~PG_RESERVED
        flags[pfn] |= PG_HEAD
        order_[pfn] = order | (pb_mt[pfn >> PAGEBLOCK_ORDER] << 4)
        zone_info[zone, Z_MANAGED] += 1 << order
        return 0
    for high in range(order, MAX_ORDER):
        head = pfn & ~((1 << high) - 1)
        if (flags[head] & PG_BUDDY) and (order_[head] & 15) == high:
            mt = pb_mt[head >> PAGEBLOCK_ORDER]  # get_pfnblock_migratetype(page_head)
            del_page_from_free_list(nxt, prv, order_, flags, free_ends, free_count, head, zone, high)
            # break_down_buddy_pages(): give back the halves that do not hold the block
            size = 1 << high
            cur = head
            while high > order:
                high -= 1
                size >>= 1
                if pfn >= cur + size:  # the block is in the upper half: free the lower
                    add_to_free_list(nxt, prv, order_, flags, free_ends, free_count, cur, zone,
                                     high, mt, False)
                    cur += size
                else:
                    add_to_free_list(nxt, prv, order_, flags, free_ends, free_count, cur + size,
                                     zone, high, mt, False)
            stats[S_NR_FREE_PAGES + zone] -= 1 << order
            flags[pfn] = (flags[pfn] & ~(PG_BUDDY | PG_PCP)) | PG_HEAD
            order_[pfn] = order | (mt << 4)
            return 0
    return -1
