"""A slow, obvious model of the Linux 6.1 page allocator, for checking dmsim.core.buddy.

Written from mm/page_alloc.c (6.1.y), not from the numba core: free lists are Python
lists (index 0 is the list head), page state lives in dicts keyed by pfn. Same
semantics as the core, including per-CPU lists, list order and counters; see
dmsim/core/buddy.py for what is deliberately not modelled.

`unmapped=True` adds MIGRATE_UNMAPPED (Rapoport, "[RFC PATCH 1/3] mm/page_alloc:
introduce __GFP_UNMAPPED and MIGRATE_UNMAPPED", 27 Jan 2022;
docs/design-policies.md, migrate_unmapped). In the patch it is enum value 3, before
MIGRATE_PCPTYPES (which becomes 4), so it is a pcp type: it has its own pcp lists,
counts as mergeable in __free_one_page() and as a free list that
__zone_watermark_ok() looks at. dmsim keeps its free lists and pageblock type in
the spare slot 4 (UNMAPPED below); the pcp lists are indexed as the patched
kernel indexes them (order_to_pindex() with 4 pcp types, UNMAPPED's column 3), so
free_pcppages_bulk() visits them in the kernel's round-robin order.
The direct-map side of the policy (set_pageblock_unmapped()'s CPA calls, unmap on
allocation, map back on free) belongs to the caller, dmsim/reference/placement.py;
this allocator only offers set_pageblock_unmapped() for the pageblock part.
`collapse_free_pageblock=True` adds the prototype's disabled FIXME in
__free_one_page(): pageblocks to restore are queued in `collapse_requests`.
"""

from __future__ import annotations

import math

MAX_NR_ZONES = 3
ZONE_NORMAL = 2

MAX_ORDER = 11
PAGEBLOCK_ORDER = 9
PAGEBLOCK_NR_PAGES = 512
COSTLY = 3  # PAGE_ALLOC_COSTLY_ORDER
UNMOVABLE, MOVABLE, RECLAIMABLE, HIGHATOMIC = 0, 1, 2, 3
UNMAPPED = 4  # MIGRATE_UNMAPPED, in dmsim's spare slot (MIGRATE_SPARE in core/buddy.py)
PCPTYPES = 3
NTYPES = 5
NR_LOW_PCP = PCPTYPES * (COSTLY + 1)  # 12 lists for orders 0-3, then one THP list

FALLBACKS = {
    UNMOVABLE: [RECLAIMABLE, MOVABLE],
    MOVABLE: [RECLAIMABLE, UNMOVABLE],
    RECLAIMABLE: [UNMOVABLE, MOVABLE],
}
# fallbacks[] under CONFIG_ARCH_WANTS_GFP_UNMAPPED (RFC 1/3): every type falls back to
# UNMAPPED last; UNMAPPED falls back to UNMOVABLE, RECLAIMABLE, MOVABLE
FALLBACKS_UNMAPPED = {
    UNMOVABLE: [RECLAIMABLE, MOVABLE, UNMAPPED],
    MOVABLE: [RECLAIMABLE, UNMOVABLE, UNMAPPED],
    RECLAIMABLE: [UNMOVABLE, MOVABLE, UNMAPPED],
    UNMAPPED: [UNMOVABLE, RECLAIMABLE, MOVABLE],
}

STAT_KEYS = ("nr_free_pages_dma", "nr_free_pages_dma32", "nr_free_pages_normal",
             "pgalloc_dma", "pgalloc_dma32", "pgalloc_normal", "pgfree", "alloc_fail",
             "alloc_fail_pages", "extfrag", "extfrag_fragmenting", "pageblock_claimed",
             "pcp_refill", "pcp_drain", "bad_free", "nr_alloc", "nr_free_calls")


class Zone:
    def __init__(self, idx, start, end, present):
        self.idx = idx
        self.start = start
        self.end = end
        self.present = present
        self.managed = 0
        self.nr_free_pages = 0  # NR_FREE_PAGES
        # free_area[order].free_list[mt]
        self.free = [[[] for _ in range(NTYPES)] for _ in range(MAX_ORDER)]
        self.pcp = [[] for _ in range(NR_LOW_PCP + 1)]  # pcp->lists[pindex]
        self.pcp_count = 0
        self.pcp_high = 0
        self.pcp_batch = 1
        self.pcp_final = None  # (batch, high) for init_per_zone_wmark_min() (deferred init)
        self.free_factor = 0
        self.watermark = [0, 0, 0]  # _watermark[WMARK_MIN, WMARK_LOW, WMARK_HIGH]
        self.lowmem_reserve = [0] * MAX_NR_ZONES

    @property
    def wmark_min(self):
        return self.watermark[0]

    @property
    def wmark_low(self):
        return self.watermark[1]

    def spans(self, pfn):
        return self.start <= pfn < self.end


class RefBuddy:
    """The allocator after memblock_free_all(); alloc()/free() mirror __alloc_pages/__free_pages."""

    def __init__(self, memory_pfn_ranges, reserved_pfn_ranges=(), *, pcp=True, pcp_thp=True,
                 pcp_batch_high=None, nr_cpus=1, nofragment=True, pcp_batch_scale_max=5,
                 unmapped=False, collapse_free_pageblock=False, min_free_kbytes=None,
                 watermark_scale_factor=10):
        self.pcp_on = pcp
        self.thp = pcp_thp
        self.nofragment = nofragment
        self.scale_max = pcp_batch_scale_max
        self.unmapped = unmapped
        self.collapse_free_pageblock = collapse_free_pageblock
        self.fallbacks = FALLBACKS_UNMAPPED if unmapped else FALLBACKS
        # MIGRATE_PCPTYPES of the kernel: 4 with MIGRATE_UNMAPPED
        self.pcptypes = PCPTYPES + 1 if unmapped else PCPTYPES
        self.nr_low_pcp = self.pcptypes * (COSTLY + 1)
        self.nr_pcp_lists = self.nr_low_pcp + 1 if pcp_thp else self.nr_low_pcp
        # pageblocks the FIXME in __free_one_page() gave back (their first pfns), for
        # the caller to restore in the direct map (set_direct_map_PMD())
        self.collapse_requests: list[int] = []
        mem = sorted((int(s), int(e)) for s, e in memory_pfn_ranges if e > s)
        self.zones = _zones(mem)
        for zone in self.zones:
            zone.pcp = [[] for _ in range(self.nr_low_pcp + 1)]  # pcp->lists[pindex]
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        self.buddy = {}  # pfn -> order for PageBuddy heads
        self.list_mt = {}  # pfn -> the free list (mt) the buddy page sits on
        self.pcp_mt = {}  # pfn -> page->index of a page on a pcp list
        self.allocated = {}  # pfn -> order of allocated blocks
        self.lru = set()  # pfns that move_freepages() counts as movable
        self.pageblock = {}  # pageblock number -> migratetype; absent means 0
        # memmap_init(): pageblock-aligned pfns of memory get MIGRATE_MOVABLE
        for s, e in mem:
            for zone in self.zones:
                lo, hi = max(s, zone.start), min(e, zone.end)
                first = -(-lo // PAGEBLOCK_NR_PAGES) * PAGEBLOCK_NR_PAGES
                for pfn in range(first, hi, PAGEBLOCK_NR_PAGES):
                    self.pageblock[pfn // PAGEBLOCK_NR_PAGES] = MOVABLE
        # memblock_free_all(): memory minus reserved, lowest first
        reserved = sorted((int(s), int(e)) for s, e in reserved_pfn_ranges)
        self.boot_free: list[tuple[int, int]] = []  # what memblock_free_all() gave
        for s, e in mem:
            for start, end in _minus(s, e, reserved):
                self.boot_free.append((start, end))
                self._free_pages_memory(start, end)
        # PageReserved pages that claim() handed to the allocator (free_reserved_area())
        self.unreserved: set[int] = set()
        # CONFIG_DEFERRED_STRUCT_PAGE_INIT: the [start, end) ranges defer_struct_pages()
        # took back, whose pages are PageReserved again
        self.deferred: list[tuple[int, int]] = []
        self.sizing = ZoneSizer(self.zones, nr_cpus)
        self.sizing.boot(pcp_thp, min_free_kbytes, watermark_scale_factor)
        if pcp_batch_high is not None:
            bh = [pcp_batch_high] * MAX_NR_ZONES if isinstance(pcp_batch_high, tuple) else pcp_batch_high
            for zone, (batch, high) in zip(self.zones, bh, strict=True):
                zone.pcp_batch, zone.pcp_high = batch, high

    # ---- helpers ------------------------------------------------------------------
    def zone_of(self, pfn):
        for zone in self.zones:
            if zone.spans(pfn):
                return zone
        return None

    def pageblock_mt(self, pfn):
        return self.pageblock.get(pfn // PAGEBLOCK_NR_PAGES, UNMOVABLE)

    def _free_pages_memory(self, start, end):
        """__free_pages_memory(): order = min(MAX_ORDER - 1, __ffs(start)), shrunk to fit."""
        while start < end:
            order = MAX_ORDER - 1 if start == 0 else min(MAX_ORDER - 1, (start & -start).bit_length() - 1)
            while start + (1 << order) > end:
                order -= 1
            zone = self.zone_of(start)
            zone.managed += 1 << order  # __free_pages_core()
            self._free_pages_ok(start, order, to_tail=True)
            start += 1 << order

    # ---- free lists -----------------------------------------------------------------
    def _add(self, zone, pfn, order, mt, tail):
        lst = zone.free[order][mt]
        if tail:
            lst.append(pfn)
        else:
            lst.insert(0, pfn)
        self.buddy[pfn] = order
        self.list_mt[pfn] = mt

    def _del(self, zone, pfn, order):
        zone.free[order][self.list_mt[pfn]].remove(pfn)
        del self.buddy[pfn]
        del self.list_mt[pfn]

    def _move_tail(self, zone, pfn, order, mt):
        zone.free[order][self.list_mt[pfn]].remove(pfn)
        zone.free[order][mt].append(pfn)
        self.list_mt[pfn] = mt

    def _is_buddy(self, page, buddy, order):
        if self.buddy.get(buddy) != order:
            return False
        return self.zone_of(page) is self.zone_of(buddy)

    def _free_one_page(self, zone, pfn, order, mt, to_tail=False):
        """__free_one_page()."""
        zone.nr_free_pages += 1 << order
        buddy_pfn = 0
        while order < MAX_ORDER - 1:
            buddy_pfn = pfn ^ (1 << order)
            if not self._is_buddy(pfn, buddy_pfn, order):
                break
            if order >= PAGEBLOCK_ORDER:
                bmt = self.pageblock_mt(buddy_pfn)
                if mt != bmt and (not self._mergeable(mt) or not self._mergeable(bmt)):
                    break
            self._del(zone, buddy_pfn, order)
            pfn = pfn & buddy_pfn
            order += 1
        if self.collapse_free_pageblock and order >= PAGEBLOCK_ORDER:
            # RFC 1/3's "#if 0" FIXME at done_merging, with order >= pageblock_order
            # (docs/design-policies.md): each UNMAPPED pageblock of the merged block
            # gets its 2M leaf back (queued for the caller) and becomes MOVABLE; the
            # block still goes on the list of `mt`, as in the FIXME
            for pb in range(pfn // PAGEBLOCK_NR_PAGES, (pfn + (1 << order)) // PAGEBLOCK_NR_PAGES):
                if self.pageblock.get(pb, UNMOVABLE) == UNMAPPED:
                    self.pageblock[pb] = MOVABLE  # set_pageblock_migratetype()
                    self.collapse_requests.append(pb * PAGEBLOCK_NR_PAGES)
        if not to_tail and order < MAX_ORDER - 2:
            # buddy_merge_likely(): is the merged block's own buddy free one order up?
            higher = buddy_pfn & pfn
            to_tail = self._is_buddy(higher, higher ^ (1 << (order + 1)), order + 1)
        self._add(zone, pfn, order, mt, to_tail)

    def _mergeable(self, mt):
        """migratetype_is_mergeable(): mt < MIGRATE_PCPTYPES (UNMAPPED is a pcp type)."""
        return mt < PCPTYPES or (self.unmapped and mt == UNMAPPED)

    def _is_pcptype(self, mt):
        return self._mergeable(mt)

    def _free_pages_ok(self, pfn, order, to_tail=False):
        """__free_pages_ok()."""
        zone = self.zone_of(pfn)
        self._free_one_page(zone, pfn, order, self.pageblock_mt(pfn), to_tail)
        self.stats["pgfree"] += 1 << order

    # ---- allocation -----------------------------------------------------------------
    def _rmqueue_smallest(self, zone, order, mt):
        for co in range(order, MAX_ORDER):
            lst = zone.free[co][mt]
            if not lst:
                continue
            pfn = lst[0]
            self._del(zone, pfn, co)
            # expand(): upper halves to the head of mt's lists
            high = co
            while high > order:
                high -= 1
                self._add(zone, pfn + (1 << high), high, mt, tail=False)
            self.pcp_mt[pfn] = mt  # set_pcppage_migratetype()
            return pfn
        return None

    def _find_fallback(self, zone, order, mt):
        """find_suitable_fallback(only_stealable=false)."""
        if not any(zone.free[order][t] for t in range(NTYPES)):
            return None, False
        for fmt in self.fallbacks.get(mt, []):
            if zone.free[order][fmt]:
                # can_steal_fallback(); RFC 1/3 adds is_migrate_unmapped(start_mt)
                can = (order >= PAGEBLOCK_ORDER or order >= PAGEBLOCK_ORDER // 2
                       or mt in (RECLAIMABLE, UNMOVABLE) or mt == UNMAPPED)
                return fmt, can
        return None, False

    def _set_pb(self, pb, mt):
        if self.pageblock.get(pb, UNMOVABLE) != mt:
            self.stats["pageblock_claimed"] += 1
        self.pageblock[pb] = mt

    def _steal(self, zone, pfn, start_type, whole_block):
        """steal_suitable_fallback()."""
        order = self.buddy[pfn]
        pb = pfn // PAGEBLOCK_NR_PAGES
        old = self.pageblock_mt(pfn)
        if old == HIGHATOMIC:
            self._move_tail(zone, pfn, order, start_type)
            return
        if start_type == UNMAPPED:
            # RFC 1/3: "the entire pageblock will be moved, but it is handled later in
            # get_page_from_freelist()": goto single_page, before taking ownership
            self._move_tail(zone, pfn, order, start_type)
            return
        if order >= PAGEBLOCK_ORDER:
            for i in range(1 << (order - PAGEBLOCK_ORDER)):
                self._set_pb(pb + i, start_type)
            self._move_tail(zone, pfn, order, start_type)
            return
        if not whole_block:
            self._move_tail(zone, pfn, order, start_type)
            return
        moved, movable = self._move_freepages_block(zone, pfn, start_type)
        if start_type == MOVABLE:
            alike = movable
        elif old == MOVABLE:
            alike = PAGEBLOCK_NR_PAGES - (moved + movable)
        else:
            alike = 0
        if moved == 0:
            self._move_tail(zone, pfn, order, start_type)
            return
        if moved + alike >= PAGEBLOCK_NR_PAGES // 2:
            self._set_pb(pb, start_type)

    def _move_freepages_block(self, zone, pfn, mt):
        """move_freepages_block() + move_freepages(): (pages moved, movable pages seen)."""
        start = pfn - pfn % PAGEBLOCK_NR_PAGES
        end = start + PAGEBLOCK_NR_PAGES - 1
        if not zone.spans(start):
            start = pfn  # do not cross zone boundaries
        moved = movable = 0
        if zone.spans(end):
            p = start
            while p <= end:
                if p in self.buddy:
                    o = self.buddy[p]
                    self._move_tail(zone, p, o, mt)
                    moved += 1 << o
                    p += 1 << o
                else:
                    if p in self.lru:
                        movable += 1
                    p += 1
        return moved, movable

    def set_pageblock_unmapped(self, pfn):
        """The pageblock half of set_pageblock_unmapped() (RFC 1/3), after its CPA calls:
        set_pageblock_migratetype(page, MIGRATE_UNMAPPED) and
        move_freepages_block(zone, page, MIGRATE_UNMAPPED, NULL)."""
        self.pageblock[pfn // PAGEBLOCK_NR_PAGES] = UNMAPPED
        self._move_freepages_block(self.zone_of(pfn), pfn, UNMAPPED)

    def _rmqueue_fallback(self, zone, order, mt, nofrag):
        """__rmqueue_fallback()."""
        min_order = PAGEBLOCK_ORDER if (nofrag and order < PAGEBLOCK_ORDER) else order
        chosen = None
        for co in range(MAX_ORDER - 1, min_order - 1, -1):
            fmt, can = self._find_fallback(zone, co, mt)
            if fmt is None:
                continue
            if not can and mt == MOVABLE and co > order:
                for so in range(order, MAX_ORDER):
                    fmt2, can2 = self._find_fallback(zone, so, mt)
                    if fmt2 is not None:
                        chosen = (so, fmt2, can2)
                        break
            else:
                chosen = (co, fmt, can)
            break
        if chosen is None:
            return False
        co, fmt, can = chosen
        self._steal(zone, zone.free[co][fmt][0], mt, can)
        self.stats["extfrag"] += 1
        if co < PAGEBLOCK_ORDER:
            self.stats["extfrag_fragmenting"] += 1
        return True

    def _rmqueue(self, zone, order, mt, nofrag):
        """__rmqueue()."""
        while True:
            pfn = self._rmqueue_smallest(zone, order, mt)
            if pfn is not None:
                return pfn
            if not self._rmqueue_fallback(zone, order, mt, nofrag):
                return None

    def _pcp_ok(self, order):
        return order <= COSTLY or (self.thp and order == PAGEBLOCK_ORDER)

    def _pindex(self, mt, order):
        """order_to_pindex(): MIGRATE_PCPTYPES lists per order; UNMAPPED is the kernel's
        type 3 (column 3), so its lists sit where the patched kernel has them."""
        if order > COSTLY:
            return self.nr_low_pcp
        col = PCPTYPES if mt == UNMAPPED else mt
        return self.pcptypes * order + col

    def pindex_order(self, pindex):
        return PAGEBLOCK_ORDER if pindex == self.nr_low_pcp else pindex // self.pcptypes

    def _rmqueue_pcplist(self, zone, order, mt, nofrag):
        """rmqueue_pcplist() / __rmqueue_pcplist() / rmqueue_bulk()."""
        zone.free_factor >>= 1
        lst = zone.pcp[self._pindex(mt, order)]
        if not lst:
            batch = zone.pcp_batch
            if batch > 1:
                batch = max(batch >> order, 2)
            got = 0
            for _ in range(batch):
                pfn = self._rmqueue(zone, order, mt, nofrag)
                if pfn is None:
                    break
                lst.append(pfn)
                got += 1
            zone.nr_free_pages -= got << order
            self.stats["pcp_refill"] += 1
            zone.pcp_count += got << order
            if not lst:
                return None
        pfn = lst.pop(0)
        zone.pcp_count -= 1 << order
        self.stats["pgalloc_" + ("dma", "dma32", "normal")[zone.idx]] += 1 << order
        return pfn

    def _watermark_ok(self, zone, order, mark, highest):
        """zone_watermark_fast() / __zone_watermark_ok(): no highatomic reserve, no ALLOC_HIGH."""
        free = zone.nr_free_pages
        if order == 0:
            return free > mark + zone.lowmem_reserve[highest]
        free -= (1 << order) - 1
        if free <= mark + zone.lowmem_reserve[highest]:
            return False
        # for (mt = 0; mt < MIGRATE_PCPTYPES; mt++): UNMAPPED included when it exists
        types = [t for t in range(NTYPES) if self._is_pcptype(t)]
        return any(zone.free[o][t] for o in range(order, MAX_ORDER) for t in types)

    def _get_page_from_freelist(self, preferred, highest, order, mt, low_wmark, nofrag):
        while True:
            for zi in range(preferred, -1, -1):
                zone = self.zones[zi]
                if zone.present == 0:
                    continue
                mark = zone.wmark_low if low_wmark else zone.wmark_min
                if not self._watermark_ok(zone, order, mark, highest):
                    continue
                pfn = None
                if self.pcp_on and self._pcp_ok(order):
                    pfn = self._rmqueue_pcplist(zone, order, mt, nofrag)
                if pfn is None:
                    pfn = self._rmqueue(zone, order, mt, nofrag)  # rmqueue_buddy()
                    if pfn is not None:
                        zone.nr_free_pages -= 1 << order
                        self.stats["pgalloc_" + ("dma", "dma32", "normal")[zi]] += 1 << order
                if pfn is not None:
                    return pfn
            if nofrag:
                nofrag = False
                continue
            return None

    def alloc(self, highest_zoneidx, order, mt):
        """__alloc_pages(): pfn or -1."""
        preferred = next((z for z in range(highest_zoneidx, -1, -1) if self.zones[z].present), None)
        pfn = None
        if preferred is not None:
            nofrag = self.nofragment and preferred == ZONE_NORMAL
            pfn = self._get_page_from_freelist(preferred, highest_zoneidx, order, mt, True, nofrag)
            if pfn is None:
                pfn = self._get_page_from_freelist(preferred, highest_zoneidx, order, mt, False, False)
        if pfn is None:
            self.stats["alloc_fail"] += 1
            self.stats["alloc_fail_pages"] += 1 << order
            return -1
        self.allocated[pfn] = order
        self.pcp_mt.pop(pfn, None)
        assert mt in (UNMOVABLE, MOVABLE, RECLAIMABLE) or (self.unmapped and mt == UNMAPPED), mt
        if mt == MOVABLE:
            self.lru.update(range(pfn, pfn + (1 << order)))
        self.stats["nr_alloc"] += 1
        return pfn

    # ---- freeing --------------------------------------------------------------------
    def _nr_pcp_free(self, zone, high, batch, free_high):
        if free_high:
            return zone.pcp_count
        if high < batch:
            return 1
        lo, hi = batch, high - batch
        batch <<= zone.free_factor
        if batch < hi and zone.free_factor < self.scale_max:
            zone.free_factor += 1
        return min(max(batch, lo), hi)

    def _free_pcppages_bulk(self, zone, count, pindex):
        """free_pcppages_bulk(): round robin from pindex, oldest (tail) pages first."""
        count = min(zone.pcp_count, count)
        lo, hi = 0, self.nr_pcp_lists - 1
        pindex -= 1
        self.stats["pcp_drain"] += 1
        while count > 0:
            while True:
                pindex += 1
                if pindex > hi:
                    pindex = lo
                if zone.pcp[pindex]:
                    break
                if pindex == hi:
                    hi -= 1
                if pindex == lo:
                    lo += 1
            lst = zone.pcp[pindex]
            order = self.pindex_order(pindex)
            while True:
                pfn = lst.pop()
                mt = self.pcp_mt.pop(pfn)
                count -= 1 << order
                zone.pcp_count -= 1 << order
                self._free_one_page(zone, pfn, order, mt)
                if not (count > 0 and lst):
                    break

    def _release(self, pfn, order) -> bool:
        """The block stops being allocated; False (counted) for a bad free."""
        if self.allocated.get(pfn) != order:
            self.stats["bad_free"] += 1
            return False
        del self.allocated[pfn]
        self.lru.difference_update(range(pfn, pfn + (1 << order)))
        self.stats["nr_free_calls"] += 1
        return True

    def free(self, pfn, order):
        """__free_pages() -> free_the_page(); 0 or -1 (bad free, counted)."""
        if not self._release(pfn, order):
            return -1
        zone = self.zone_of(pfn)
        if not (self.pcp_on and self._pcp_ok(order)):
            self._free_pages_ok(pfn, order)
            return 0
        # free_unref_page(): page->index = pageblock type; highatomic goes on movable's list
        mt = self.pageblock_mt(pfn)
        self.pcp_mt[pfn] = mt
        # migratetype >= MIGRATE_PCPTYPES (highatomic) shares movable's list; UNMAPPED
        # is a pcp type with lists of its own
        pcp_mt = mt if self._is_pcptype(mt) else MOVABLE
        self.stats["pgfree"] += 1 << order
        pindex = self._pindex(pcp_mt, order)
        zone.pcp[pindex].insert(0, pfn)
        zone.pcp_count += 1 << order
        free_high = zone.free_factor != 0 and 0 < order <= COSTLY
        high = 0 if free_high else zone.pcp_high
        if zone.pcp_count >= high:
            n = self._nr_pcp_free(zone, high, zone.pcp_batch, free_high)
            self._free_pcppages_bulk(zone, n, pindex)
        return 0

    # ---- blocks allocated before a trace began ---------------------------------------
    def page_reserved(self, pfn):
        """PageReserved(): every struct page starts reserved (memmap_init() and
        reserve_bootmem_region(), init_unavailable_range() for holes); only the pages
        memblock_free_all() frees, and those claim() unreserved, are not."""
        if pfn in self.unreserved:
            return False
        if any(s <= pfn < e for s, e in self.deferred):
            return True  # init_reserved_page(), or struct page not initialised yet
        return not any(s <= pfn < e for s, e in self.boot_free)

    def claim(self, pfn, order):
        """A block a trace frees without having allocated it: allocated before the trace
        began, so it is made allocated where it is (0), or -1 when it cannot be.

        - Free in the buddy lists: take_page_off_buddy() for a 2^order block. The free
          block holding it comes off its list (del_page_from_free_list()) and
          break_down_buddy_pages() puts back the halves that do not hold it, each at the
          head of the list of the pageblock type of the free block's first page
          (get_pfnblock_migratetype(page_head)); NR_FREE_PAGES drops by 2^order.
        - Wholly PageReserved (memblock-reserved at boot, e.g. the kernel image's init
          pages, which free_reserved_area() hands to the allocator one by one): its pages
          stop being reserved and join the zone's managed pages
          (adjust_managed_page_count()), as an allocated block its free will give back.
        - Anything else (on a pcp list, allocated, partly free, outside one zone): -1."""
        n = 1 << order
        zone = self.zone_of(pfn)
        if zone is None or pfn % n or not zone.spans(pfn + n - 1):
            return -1
        pages = range(pfn, pfn + n)
        if all(self.page_reserved(p) for p in pages):
            self.unreserved.update(pages)
            zone.managed += n
            self.allocated[pfn] = order
            return 0
        head = next((pfn - pfn % (1 << o) for o in range(MAX_ORDER)
                     if self.buddy.get(pfn - pfn % (1 << o), -1) >= o), None)
        if head is None or head + (1 << self.buddy[head]) < pfn + n:
            return -1  # not in a free block, or the free block holding pfn is smaller
        high = self.buddy[head]
        mt = self.pageblock_mt(head)
        self._del(zone, head, high)
        while high > order:  # break_down_buddy_pages(zone, page_head, page, order, high, mt)
            high -= 1
            if pfn >= head + (1 << high):  # the block is in the upper half
                self._add(zone, head, high, mt, tail=False)
                head += 1 << high
            else:
                self._add(zone, head + (1 << high), high, mt, tail=False)
        zone.nr_free_pages -= n
        self.allocated[pfn] = order
        return 0

    # ---- CONFIG_DEFERRED_STRUCT_PAGE_INIT ---------------------------------------------
    def defer_struct_pages(self, start, end):
        """The allocator as it is when memmap_init() stopped at `start` (defer_init() in
        memmap_init_range(): zones.first_deferred_pfn()) and the pgdatinit kthread has
        freed nothing of [start, end) yet. The allocator was built as if
        memblock_free_all() had freed all of it, so this undoes that here:

        - every free block whose first page is in [start, end) leaves its free list
          and stops counting in NR_FREE_PAGES and the zone's managed pages
          (__free_pages_core() had not run for it yet);
        - every page there is PageReserved (init_reserved_page() for memblock-reserved
          pages; the rest have no initialised struct page until
          deferred_init_memmap()), so a claim of it is a reserved block's claim;
        - pageblocks whose first page is there are MIGRATE_UNMOVABLE: the zeroed
          pageblock bitmap, since only memmap_init_range() (not run there) and
          deferred_free_range() set MIGRATE_MOVABLE;
        - setup_per_cpu_pageset() ran with the deferred pages unmanaged and the
          watermarks still 0: zone_set_pageset_high_and_batch() gives every populated
          zone batch = zone_batchsize(managed) and high = zone_highsize() = batch * 4.
          The sizes the zone had (all memory managed) are what
          init_per_zone_wmark_min() sets after deferred init: kept in pcp_final
          until init_per_zone_wmark_min() below. A zone already deferred keeps its
          first stash."""
        for pfn in range(start, end):
            if pfn in self.buddy:
                order = self.buddy[pfn]
                zone = self.zone_of(pfn)
                self._del(zone, pfn, order)
                zone.nr_free_pages -= 1 << order
                zone.managed -= 1 << order
        self.unreserved.difference_update(range(start, end))
        self.deferred.append((start, end))
        for pfn in range(start, end):
            if pfn % PAGEBLOCK_NR_PAGES == 0:
                self.pageblock[pfn // PAGEBLOCK_NR_PAGES] = UNMOVABLE
        for zone in self.zones:
            if zone.present == 0 or zone.pcp_final is not None:
                continue
            zone.pcp_final = (zone.pcp_batch, zone.pcp_high)
            zone.pcp_batch = max(1, zone_batchsize(zone.managed))
            zone.pcp_high = zone.pcp_batch * 4

    def deferred_free_range(self, pfn, order):
        """The pgdatinit kthread frees a block it initialised (deferred_free_range()):
        set_pageblock_migratetype(MIGRATE_MOVABLE) on every pageblock whose first page
        is in the block, then __free_pages_core(): __free_pages_ok(page, order,
        FPI_TO_TAIL), so the buddy lists' tails and never a pcp list. The block is a
        claimed one: claim() already added its managed pages (__free_pages_core()'s
        atomic_long_add() to managed_pages). 0, or -1 for a bad free (counted)."""
        if not self._release(pfn, order):
            return -1
        for p in range(pfn, pfn + (1 << order)):
            if p % PAGEBLOCK_NR_PAGES == 0:
                self.pageblock[p // PAGEBLOCK_NR_PAGES] = MOVABLE
        self._free_pages_ok(pfn, order, to_tail=True)
        return 0

    def init_per_zone_wmark_min(self):
        """init_per_zone_wmark_min() after deferred init: setup_per_zone_wmarks() ->
        zone_pcp_update() -> zone_set_pageset_high_and_batch() with all memory
        managed again: the sizes defer_struct_pages() kept (the allocator's sizes
        before it, from the whole zone's watermarks). Nothing for a zone never
        deferred. (The core also hands them to a boot pageset still on, which this
        model does not have: no EV_H_FILL / EV_H_PCP_SETUP here.)"""
        for zone in self.zones:
            if zone.pcp_final is not None:
                zone.pcp_batch, zone.pcp_high = zone.pcp_final
                zone.pcp_final = None

    def drain(self):
        """drain_all_pages(NULL)."""
        for zone in self.zones:
            while zone.pcp_count > 0:
                self._free_pcppages_bulk(zone, min(zone.pcp_count, zone.pcp_batch << self.scale_max), 0)

    # ---- observation ----------------------------------------------------------------
    def counters(self):
        out = dict(self.stats)
        for zone in self.zones:
            out["nr_free_pages_" + ("dma", "dma32", "normal")[zone.idx]] = zone.nr_free_pages
        return out

    def free_lists(self):
        return {(z.idx, o, t): list(z.free[o][t]) for z in self.zones
                for o in range(MAX_ORDER) for t in range(NTYPES) if z.free[o][t]}

    def pcp_lists(self):
        return {(z.idx, i): list(z.pcp[i]) for z in self.zones for i in range(len(z.pcp)) if z.pcp[i]}

    def pageblock_types(self, nr_pageblocks):
        return [self.pageblock.get(pb, UNMOVABLE) for pb in range(nr_pageblocks)]


class ZoneSizer:
    """Boot-time zone sizing (mm/page_alloc.c, mm/khugepaged.c; 6.1) on a list of Zones:
    min_free_kbytes, _watermark[], lowmem_reserve[] and the pcp batch/high."""

    def __init__(self, zones, nr_cpus=1):
        self.zones = zones
        self.nr_cpus = nr_cpus
        self.min_free_kbytes = 1024  # int min_free_kbytes = 1024;
        self.watermark_scale_factor = 10

    def boot(self, thp=True, min_free_kbytes=None, watermark_scale_factor=10):
        self._init_per_zone_wmark_min()  # postcore_initcall
        if thp:
            # hugepage_init() -> start_stop_khugepaged(), THP enabled (subsys_initcall)
            self._set_recommended_min_free_kbytes()
        # the vm sysctls written after boot: min_free_kbytes_sysctl_handler(),
        # watermark_scale_factor_sysctl_handler() -> setup_per_zone_wmarks()
        if min_free_kbytes is not None:
            self.min_free_kbytes = min_free_kbytes
            self._setup_per_zone_wmarks()
        if watermark_scale_factor != self.watermark_scale_factor:
            self.watermark_scale_factor = watermark_scale_factor
            self._setup_per_zone_wmarks()

    def _nr_free_buffer_pages(self):
        """nr_free_buffer_pages(): managed - high watermark, summed over the zones <= Normal."""
        return sum(max(0, z.managed - z.watermark[2]) for z in self.zones)

    def _init_per_zone_wmark_min(self):
        """init_per_zone_wmark_min(): calculate_min_free_kbytes(), setup_per_zone_wmarks(),
        setup_per_zone_lowmem_reserve()."""
        lowmem_kbytes = self._nr_free_buffer_pages() * 4
        self.min_free_kbytes = min(max(math.isqrt(lowmem_kbytes * 16), 128), 262144)
        self._setup_per_zone_wmarks()
        self._setup_per_zone_lowmem_reserve()

    def _set_recommended_min_free_kbytes(self):
        """khugepaged's set_recommended_min_free_kbytes() with THP enabled."""
        nr_zones = sum(1 for z in self.zones if z.present)  # for_each_populated_zone
        recommended_min = PAGEBLOCK_NR_PAGES * nr_zones * 2
        recommended_min += PAGEBLOCK_NR_PAGES * nr_zones * PCPTYPES * PCPTYPES
        recommended_min = min(recommended_min, self._nr_free_buffer_pages() // 20)
        recommended_min <<= 2  # PAGE_SHIFT - 10
        if recommended_min > self.min_free_kbytes:
            self.min_free_kbytes = recommended_min
        self._setup_per_zone_wmarks()

    def _setup_per_zone_wmarks(self):
        """setup_per_zone_wmarks(): __setup_per_zone_wmarks(), then zone_pcp_update(zone, 0)."""
        pages_min = self.min_free_kbytes >> 2
        lowmem_pages = sum(z.managed for z in self.zones)
        for zone in self.zones:
            tmp = pages_min * zone.managed // lowmem_pages if lowmem_pages else 0
            zone.watermark[0] = tmp
            tmp = max(tmp >> 2, zone.managed * self.watermark_scale_factor // 10000)
            zone.watermark[1] = zone.watermark[0] + tmp
            zone.watermark[2] = zone.watermark[1] + tmp
        for zone in self.zones:
            if zone.present:  # unpopulated zones keep the boot pageset
                self._zone_set_pageset_high_and_batch(zone)

    def _zone_set_pageset_high_and_batch(self, zone):
        """zone_batchsize() and zone_highsize(zone, batch, cpu_online=0)."""
        zone.pcp_batch = max(1, zone_batchsize(zone.managed))
        zone.pcp_high = max(zone.watermark[1] // self.nr_cpus, zone.pcp_batch * 4)

    def _setup_per_zone_lowmem_reserve(self):
        """setup_per_zone_lowmem_reserve() with sysctl_lowmem_reserve_ratio = {256, 256, 32}."""
        ratio = [256, 256, 32]
        for i, zone in enumerate(self.zones[:-1]):
            clear = ratio[i] == 0 or zone.managed == 0
            managed_pages = 0
            for j in range(i + 1, MAX_NR_ZONES):
                managed_pages += self.zones[j].managed
                zone.lowmem_reserve[j] = 0 if clear else managed_pages // ratio[i]


def zone_batchsize(managed):
    """zone_batchsize() (6.1, CONFIG_MMU): ~0.1% of the zone or 1 MiB, whichever is
    smaller, a quarter of it, then rounddown_pow_of_two(batch + batch / 2) - 1."""
    batch = min(managed >> 10, (1 << 20) // 4096) // 4
    batch = max(batch, 1)
    return (1 << ((batch + batch // 2).bit_length() - 1)) - 1


def _zones(mem):
    """free_area_init() on x86-64: max_zone_pfns = {16 MiB, 4 GiB, max_pfn}; each zone runs
    from the previous zone's limit (the first from the start of DRAM) and is clamped to the
    node's [first, last) memory pfn (zone_spanned_pages_in_node)."""
    node_start, node_end = mem[0][0], max(e for _, e in mem)
    zones = []
    low = node_start
    for idx, limit in enumerate([min(4096, node_end), min(1 << 20, node_end), node_end]):
        high = max(limit, low)
        start = min(max(node_start, low), high)
        end = min(max(node_end, low), high)
        present = sum(max(0, min(e, end) - max(s, start)) for s, e in mem)
        zones.append(Zone(idx, start, end, present))
        low = high
    return zones


def _minus(s, e, holes):
    """[s, e) without the (sorted) holes, as [start, end) pieces in pfn order."""
    out = []
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
