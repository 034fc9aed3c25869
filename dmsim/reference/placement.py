"""A slow, obvious model of simulated placement with the policies, for checking
dmsim.core.placement (docs/design-simulated-placement.md, docs/design-policies.md).

Written from the kernel code and the policy patches, not from the numba core. It
glues the two other reference models together: the direct map
(dmsim/reference/cpa.py, with its merge policy) and the page allocator
(dmsim/reference/buddy.py, with MIGRATE_UNMAPPED), plus unmapped_alloc's cache
(UnmappedCache below). State is plain dicts, lists and sets; events are applied
one at a time, in order.

Events by handle (dmsim/trace/events.py), as the baseline placement loop does them:
- EV_H_ALLOC: alloc_pages() of 2^order pages, migratetype, gfp_zone() and user group
  from the flags (mt | zone << 8 | group << 12);
- EV_H_FREE: __free_pages();
- EV_H_VMALLOC: __vmalloc_area_node(): one alloc_pages(GFP_KERNEL, 0) per page, in
  index order (__alloc_pages_bulk() refuses __GFP_UNMAPPED, and dmsim never uses it);
- EV_H_VFREE: vfree(); with VFREE_RESET_PERMS, vm_reset_perms():
  set_direct_map_invalid_noflush() on every page, then set_direct_map_default_noflush()
  on every page, then the pages are freed;
- EV_H_CLAIM: a block allocated before the trace began (pfn in mask_set, order in
  arg1), claimed where it is (RefBuddy.claim()); a block that is neither free nor
  reserved is a handle error;
- EV_H_DEFER: CONFIG_DEFERRED_STRUCT_PAGE_INIT, [arg0, arg1) not yet given to the
  allocator (RefBuddy.defer_struct_pages()); EV_H_FREE with FREE_DEFERRED_INIT is the
  pgdatinit kthread's free of a claimed block there (RefBuddy.deferred_free_range(),
  no policy hook); EV_H_WMARK_INIT: init_per_zone_wmark_min(), the final pcp sizes;
- EV_H_CPA: set_memory_*() on the handle's pages: one call on the pfn range of a page
  handle (primary = checkalias, or the recorded primary with CPAF_RAW); for vmalloc
  pages one cpa_process_alias() call per page (numpages 1, NX dropped from both
  masks, primary 0), none at all for an NX-only call;
- EV_CPA, EV_SYSTEM_RUNNING, EV_KERNEL_RO, EV_CHECKPOINT as in the replay.
Page-table pages: split_large_page() takes one with alloc_pages(GFP_KERNEL, 0);
merge_splitted_mapping() and cpa_collapse_large_pages() give theirs back with
__free_page(). The direct map logs both in kernel order during a call
(ReferenceDirectMap.pt_log); they are applied to the allocator right after the call
(nothing else touches the allocator during a CPA call, so the allocator sees the
same sequence). A table that init_mem_mapping() built has no allocator page: the
kernel's boot page tables come from memblock and stay PageReserved, so freeing one
gives nothing to the buddy (it is still counted in NR_PT_FREED).

Allocation policies (Policy.alloc; a request asks for __GFP_UNMAPPED when its group
is in Policy.unmapped_users):
- baseline: Linux 6.1.
- migrate_unmapped (RFC 1/3, Jan 2022): the request's migratetype is MIGRATE_UNMAPPED
  (gfp_migratetype()); after rmqueue() get_page_from_freelist() calls
  set_pageblock_unmapped(); post_alloc_hook() calls migrate_unmapped_unmap_pages();
  free_pages_prepare() calls migrate_unmapped_map_pages() before the page reaches the
  pcp or buddy lists. With collapse_free_pageblock, __free_one_page() queues the
  pageblocks it gives back; their 2M leaves are restored after the allocator call
  (ReferenceDirectMap.restore_pmd()), in order, each restore's freed table page
  freed (and its own restores done) before the next: depth first, as a free nests.
- unmapped_alloc (RFC 1/5, Mar 2023): __alloc_pages() hands __GFP_UNMAPPED requests
  to unmapped_pages_alloc() (the cache); free_pages_prepare() hands pages of
  PB_unmapped pageblocks to unmapped_pages_free().
"""

from __future__ import annotations

from ..core import constants as C
from ..policy import BASELINE, Policy
from ..trace.events import (
    CPAF_COLLAPSE,
    CPAF_FORCE_SPLIT,
    CPAF_PRIMARY,
    CPAF_RAW,
    EV_ALLOC,
    EV_CHECKPOINT,
    EV_CPA,
    EV_FREE,
    EV_H_ALLOC,
    EV_H_CLAIM,
    EV_H_CPA,
    EV_H_DEFER,
    EV_H_FREE,
    EV_H_VFREE,
    EV_H_VMALLOC,
    EV_H_WMARK_INIT,
    EV_KERNEL_RO,
    EV_SYSTEM_RUNNING,
    FREE_DEFERRED_INIT,
    UNMAPPED_SHIFT,
    VFREE_RESET_PERMS,
    Trace,
)
from .buddy import MAX_ORDER, PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER, UNMAPPED, UNMOVABLE, RefBuddy
from .cpa import COUNTER_NAMES, ReferenceDirectMap

ZONE_NORMAL = 2
NX = C._PAGE_NX
P_INVALID = C._PAGE_PRESENT | C._PAGE_RW  # set_direct_map_invalid/default_noflush() (6.1)
PMD_ORDER = PAGEBLOCK_ORDER  # PMD_SHIFT - PAGE_SHIFT

# The placement loop's own counters, after the direct map's (core/constants.py names).
PLACEMENT_COUNTER_NAMES = ("NR_HANDLE_ERRORS", "NR_PT_ALLOC_FAIL", "NR_UNMAPPED_PAGEBLOCKS",
                           "NR_UNMAPPED_REFILLS")
ALL_COUNTER_NAMES = COUNTER_NAMES + PLACEMENT_COUNTER_NAMES


def counters_from_row(row) -> dict[str, int]:
    """A core counters row (or snapshot) keyed like ReferencePlacement.counters()."""
    return {name: int(row[getattr(C, name)]) for name in ALL_COUNTER_NAMES}


class UnmappedCache:
    """mm/unmapped-alloc.c (RFC 1/5, Mar 2023): a buddy allocator of its own, with
    one free list per order (no migratetypes, no zones) and PB_unmapped pageblocks."""

    def __init__(self):
        self.free_area: list[list[int]] = [[] for _ in range(MAX_ORDER)]  # index 0: head
        self.order_of: dict[int, int] = {}  # PageUnmapped + page_private: free block -> order
        self.pb_unmapped: set[int] = set()  # pageblocks with PB_unmapped set (never cleared)

    def _add(self, pfn: int, order: int) -> None:
        """add_to_free_list() (list_add: at the head) + set_unmapped_order()."""
        self.free_area[order].insert(0, pfn)
        self.order_of[pfn] = order

    def _del(self, pfn: int, order: int) -> None:
        """del_page_from_free_list()."""
        self.free_area[order].remove(pfn)
        del self.order_of[pfn]

    def free_one_page(self, pfn: int, order: int, cache_refill: bool) -> None:
        """__free_one_page() of the cache: a refill marks the pageblock PB_unmapped;
        merge with free cache buddies of the same order up to MAX_ORDER - 1."""
        if cache_refill:
            self.pb_unmapped.add(pfn // PAGEBLOCK_NR_PAGES)  # set_pageblock_unmapped(page)
        while order < MAX_ORDER - 1:
            buddy = pfn ^ (1 << order)  # __find_buddy_pfn()
            if self.order_of.get(buddy) != order:  # page_is_unmapped_buddy()
                break
            self._del(buddy, order)
            pfn = buddy & pfn
            order += 1
        self._add(pfn, order)

    def rmqueue_smallest(self, order: int) -> int:
        """__rmqueue_smallest() of the cache: the head of the smallest non-empty list,
        expand()ed, upper halves to the heads of the lower lists; -1 when empty."""
        for current_order in range(order, MAX_ORDER):
            if not self.free_area[current_order]:
                continue
            pfn = self.free_area[current_order][0]
            self._del(pfn, current_order)
            high = current_order
            while high > order:  # expand()
                high -= 1
                self._add(pfn + (1 << high), high)
            return pfn
        return -1

    def free_blocks(self) -> list[list[int]]:
        return [list(lst) for lst in self.free_area]


class ReferencePlacement:
    """Simulated placement under one policy: apply() events one by one."""

    def __init__(self, machine, policy: Policy = BASELINE, *, reserve_first_mib: bool = True,
                 **buddy_kw):
        self.policy = policy
        self.machine = machine
        # the boot state from reference/layout.py (not the core's init_mem_mapping())
        self.dm = ReferenceDirectMap(machine, merge=policy.merge)
        self.boot = self.dm.counters()
        # buddy_from_machine(): memblock.memory rounded inwards, memblock.reserved
        # rounded outwards, plus the first MiB (early_reserve_memory())
        mem = [((s + 4095) >> 12, e >> 12) for s, e in machine.ram_ranges()]
        reserved = [(s >> 12, (e + 4095) >> 12) for s, e in getattr(machine, "reserved", [])]
        if reserve_first_mib:
            reserved.append((0, 256))
        migrate_unmapped = policy.alloc == "migrate_unmapped"
        self.buddy = RefBuddy(mem, reserved, unmapped=migrate_unmapped,
                              collapse_free_pageblock=migrate_unmapped
                              and policy.collapse_free_pageblock, **buddy_kw)
        self.cache = UnmappedCache() if policy.alloc == "unmapped_alloc" else None
        self.unmapped_mask = policy.unmapped_mask  # 0 under baseline
        # h -> ("pages", pfn, order) or ("vmalloc", [pfn, or -1 for a failed page])
        self.handles: dict[int, tuple] = {}
        self.pt_pages: dict[tuple[int, int], int] = {}  # page table -> its allocator pfn
        self.extra = dict.fromkeys(PLACEMENT_COUNTER_NAMES, 0)
        self.snapshots: dict[int, dict[str, int]] = {}

    # --- observation -------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        out = self.dm.counters()
        out.update(self.extra)
        return out

    # --- the direct map ----------------------------------------------------------------
    def cpa(self, vpfn: int, numpages: int, mask_set: int, mask_clr: int, primary: bool,
            force_split: bool = False, collapse: bool = False) -> int:
        """One __change_page_attr_set_clr() call, then its page-table pages."""
        ret = self.dm.change_page_attr_set_clr(vpfn, numpages, mask_set, mask_clr, primary,
                                               force_split, collapse)
        self._page_table_pages()
        return ret

    def set_direct_map_invalid_noflush(self, pfn: int) -> None:
        """__set_pages_np(page, 1) (6.1): clear PRESENT|RW, primary 0."""
        self.cpa(pfn, 1, 0, P_INVALID, False)

    def set_direct_map_default_noflush(self, pfn: int) -> None:
        """__set_pages_p(page, 1) (6.1): set PRESENT|RW, primary 0."""
        self.cpa(pfn, 1, P_INVALID, 0, False)

    def _page_table_pages(self) -> None:
        """The page-table pages the direct map took and gave back, in its order:
        split_large_page()'s alloc_pages(GFP_KERNEL, 0) (unmovable, Normal with
        fallback, never __GFP_UNMAPPED) and the merges' and collapses' __free_page()."""
        log, self.dm.pt_log = self.dm.pt_log, []
        for op, table in log:
            if op == "alloc":
                pfn = self.buddy.alloc(ZONE_NORMAL, 0, UNMOVABLE)
                if pfn < 0:
                    self.extra["NR_PT_ALLOC_FAIL"] += 1
                else:
                    self.pt_pages[table] = pfn
            else:
                pfn = self.pt_pages.pop(table, None)
                if pfn is not None:  # None: a boot-built table, or its alloc failed
                    self.free_pages(pfn, 0)

    # --- the allocator with the policy hooks -------------------------------------------
    def asks_unmapped(self, group: int) -> bool:
        """Does this user group's allocation carry __GFP_UNMAPPED under the policy?"""
        return bool(self.unmapped_mask >> group & 1)

    def alloc_pages(self, zone: int, order: int, mt: int, group: int = 0) -> int:
        """__alloc_pages(): a pfn or -1."""
        if not self.asks_unmapped(group):
            return self.buddy.alloc(zone, order, mt)
        if self.policy.alloc == "unmapped_alloc":
            # __alloc_pages(): if (alloc_gfp & __GFP_UNMAPPED) unmapped_pages_alloc()
            return self.unmapped_pages_alloc(zone, order, mt)
        # migrate_unmapped: gfp_migratetype() returns MIGRATE_UNMAPPED first
        pfn = self.buddy.alloc(zone, order, UNMAPPED)
        if pfn < 0:
            return -1
        # get_page_from_freelist(): rmqueue() then set_pageblock_unmapped(), then
        # prep_new_page() -> post_alloc_hook() -> migrate_unmapped_unmap_pages()
        self.set_pageblock_unmapped(pfn)
        self.migrate_unmapped_unmap_pages(pfn, order)
        return pfn

    def set_pageblock_unmapped(self, pfn: int) -> None:
        """set_pageblock_unmapped(zone, page, order) (RFC 1/3): once per pageblock,
        invalid then default on the allocated page (the split, and the 1G one
        above it), the pageblock becomes UNMAPPED and its free pages move."""
        if self.buddy.pageblock_mt(pfn) == UNMAPPED:
            return  # is_migrate_unmapped_page(page)
        self.set_direct_map_invalid_noflush(pfn)
        self.set_direct_map_default_noflush(pfn)
        self.buddy.set_pageblock_unmapped(pfn)
        self.extra["NR_UNMAPPED_PAGEBLOCKS"] += 1

    def migrate_unmapped_unmap_pages(self, pfn: int, order: int) -> None:
        """migrate_unmapped_unmap_pages() (post_alloc_hook(), RFC 1/3): with
        __GFP_UNMAPPED (the caller checked) and an UNMAPPED pageblock, every page
        set_direct_map_invalid_noflush()."""
        if self.buddy.pageblock_mt(pfn) != UNMAPPED:
            return
        for i in range(1 << order):
            self.set_direct_map_invalid_noflush(pfn + i)

    def unmapped_pages_alloc(self, zone: int, order: int, mt: int) -> int:
        """unmapped_pages_alloc(gfp, order) (RFC 1/5, Mar 2023)."""
        pfn = self.cache.rmqueue_smallest(order)
        if pfn >= 0:
            return pfn  # post_alloc_hook(page, order, GFP_KERNEL): nothing to model
        # refill: alloc_pages(gfp & ~__GFP_UNMAPPED | __GFP_ZERO, cache_order) from
        # PMD_ORDER down to the request's order
        cache_order = PMD_ORDER
        while cache_order >= order:
            pfn = self.alloc_pages(zone, cache_order, mt)  # group 0: no __GFP_UNMAPPED
            if pfn >= 0:
                break
            cache_order -= 1
        if pfn < 0:
            return -1
        self.extra["NR_UNMAPPED_REFILLS"] += 1
        # "for (int i = 0; i < nr_pages; i++) set_direct_map_invalid_noflush(page + i)"
        # with nr_pages = 1 << order: the request's order, not cache_order
        for i in range(1 << order):
            self.set_direct_map_invalid_noflush(pfn + i)
        self.cache.free_one_page(pfn, cache_order, True)
        return self.cache.rmqueue_smallest(order)

    def free_pages(self, pfn: int, order: int) -> None:
        """__free_pages() -> free_the_page(): free_pages_prepare() first."""
        if self.cache is not None and pfn // PAGEBLOCK_NR_PAGES in self.cache.pb_unmapped:
            # free_pages_prepare(): get_pageblock_unmapped() -> unmapped_pages_free();
            # the pages stay out of the direct map and out of the buddy
            self.cache.free_one_page(pfn, order, False)
            return
        if self.buddy.unmapped and self.buddy.pageblock_mt(pfn) == UNMAPPED:
            # migrate_unmapped_map_pages(): whoever allocated it
            for i in range(1 << order):
                self.set_direct_map_default_noflush(pfn + i)
        self.buddy.free(pfn, order)
        self._collapse_free_pageblocks()

    def _collapse_free_pageblocks(self) -> None:
        """collapse_free_pageblock: the pageblocks __free_one_page() gave back get
        their 2M leaf (set_direct_map_PMD()), after the allocator call that freed
        them; the freed page-table page goes back to the allocator in turn."""
        batch, self.buddy.collapse_requests = self.buddy.collapse_requests, []
        for pfn in batch:  # each one's page-table work (its frees) before the next
            self.dm.restore_pmd(pfn)
            self._page_table_pages()

    # --- handles -------------------------------------------------------------------------
    def h_pages(self, h: int) -> int:
        """Pages behind a handle (0 when it is not live)."""
        entry = self.handles.get(h)
        if entry is None:
            return 0
        if entry[0] == "pages":
            return 1 << entry[2]
        return len(entry[1])

    def apply(self, kind: int, arg0: int, arg1: int, mask_set: int, mask_clr: int,
              flags: int) -> None:
        """One event."""
        h = arg0
        if kind == EV_CPA:
            primary = bool(flags & CPAF_PRIMARY)
            # a recorded call with CPA_COLLAPSE is set_memory_rox()'s own (primary);
            # an alias call copies the flags but never reaches cpa_flush()
            self.cpa(arg0, arg1, mask_set, mask_clr, primary, bool(flags & CPAF_FORCE_SPLIT),
                     bool(flags & CPAF_COLLAPSE) and primary)
        elif kind == EV_H_ALLOC:
            mt, zone, group = flags & 0xFF, (flags >> 8) & 0xF, (flags >> UNMAPPED_SHIFT) & 0xF
            pfn = self.alloc_pages(zone, arg1, mt, group)
            if pfn >= 0:
                self.handles[h] = ("pages", pfn, arg1)
            else:
                self.handles.pop(h, None)  # out of memory: counted by the allocator
        elif kind == EV_H_FREE:
            entry = self.handles.get(h)
            if entry is None or entry[0] != "pages":
                self.extra["NR_HANDLE_ERRORS"] += 1
                return
            if flags & FREE_DEFERRED_INIT:
                # the pgdatinit kthread's free (deferred_free_range() ->
                # __free_pages_core()): no caller's hook, a block never mapped otherwise
                self.buddy.deferred_free_range(entry[1], entry[2])
                self._collapse_free_pageblocks()
            else:
                self.free_pages(entry[1], entry[2])
            del self.handles[h]
        elif kind == EV_H_VMALLOC:
            group = (flags >> UNMAPPED_SHIFT) & 0xF
            # __vmalloc_area_node(): order-0 pages, GFP_KERNEL (| __GFP_UNMAPPED)
            pfns = [self.alloc_pages(ZONE_NORMAL, 0, UNMOVABLE, group) for _ in range(arg1)]
            self.handles[h] = ("vmalloc", pfns)
        elif kind == EV_H_VFREE:
            entry = self.handles.get(h)
            if entry is None or entry[0] != "vmalloc":
                self.extra["NR_HANDLE_ERRORS"] += 1
                return
            pfns = [p for p in entry[1] if p >= 0]
            if flags & VFREE_RESET_PERMS:  # vm_reset_perms()
                for pfn in pfns:
                    self.set_direct_map_invalid_noflush(pfn)
                for pfn in pfns:
                    self.set_direct_map_default_noflush(pfn)
            for pfn in pfns:
                self.free_pages(pfn, 0)
            del self.handles[h]
        elif kind == EV_H_CPA:
            self._handle_cpa(h, arg1 >> 32, arg1 & 0xFFFFFFFF, mask_set, mask_clr, flags)
        elif kind == EV_SYSTEM_RUNNING:
            self.dm.system_running()
        elif kind == EV_KERNEL_RO:
            self.dm.kernel_set_to_readonly()
        elif kind == EV_CHECKPOINT:
            self.snapshots[arg0] = self.counters()
        elif kind == EV_H_CLAIM:
            # a block the recorded trace frees without having allocated it: allocated
            # before the trace began, it stays where it was (trace/retarget.py); the
            # allocator takes it off its free lists or out of the reserved pages
            pfn = mask_set
            if self.buddy.claim(pfn, arg1) == 0:
                self.handles[h] = ("pages", pfn, arg1)
            else:
                self.extra["NR_HANDLE_ERRORS"] += 1
        elif kind == EV_H_DEFER:
            # CONFIG_DEFERRED_STRUCT_PAGE_INIT: [arg0, arg1) joins the allocator only
            # through the pgdatinit kthread's frees (RefBuddy.defer_struct_pages())
            self.buddy.defer_struct_pages(arg0, arg1)
        elif kind == EV_H_WMARK_INIT:
            # init_per_zone_wmark_min() after deferred init: the final pcp sizes
            self.buddy.init_per_zone_wmark_min()
        elif kind in (EV_ALLOC, EV_FREE):
            pass  # recorded placement events: the placement loop has no use for them

    def _handle_cpa(self, h: int, first: int, n: int, mask_set: int, mask_clr: int,
                    flags: int) -> None:
        """set_memory_*() on a handle's pages."""
        force = bool(flags & CPAF_FORCE_SPLIT)
        # change_page_attr_set_clr(): checkalias = (set | clr) != _PAGE_NX
        checkalias = (mask_set | mask_clr) != NX
        if n == 0:
            n = self.h_pages(h) - first  # the rest of the handle
        entry = self.handles.get(h)
        if entry is None:
            self.extra["NR_HANDLE_ERRORS"] += 1
        elif entry[0] == "pages":
            _, pfn, order = entry
            if first + n > 1 << order:
                self.extra["NR_HANDLE_ERRORS"] += 1
                return
            primary = checkalias
            if flags & CPAF_RAW:  # a recorded call, moved: its own primary argument
                primary = bool(flags & CPAF_PRIMARY)
            # direct-map memory: the call itself is on these pages; with CPA_COLLAPSE
            # (set_memory_rox()) cpa_flush() collapses this very range
            self.cpa(pfn + first, n, mask_set, mask_clr, primary, force,
                     bool(flags & CPAF_COLLAPSE) and primary)
            if primary:
                self._highmap_alias(pfn + first, n, mask_set, mask_clr, force)
        else:
            pfns = entry[1]
            if first + n > len(pfns):
                self.extra["NR_HANDLE_ERRORS"] += 1
                return
            if not checkalias:
                return  # NX only: the vmalloc mapping changes, no alias is processed
            a_set, a_clr = self._alias_masks(mask_set, mask_clr)
            for j in range(first, first + n):  # cpa_process_alias(), one per 4K step
                if pfns[j] >= 0:
                    self.cpa(pfns[j], 1, a_set, a_clr, False, force)

    def _alias_masks(self, mask_set: int, mask_clr: int) -> tuple[int, int]:
        """alias_cpa = *cpa: 6.1 keeps the masks; 6.2+ (127960a05548) drops _PAGE_NX."""
        if self.policy.merge == "rox_collapse":  # a 6.15 policy: the later kernel's rule
            return mask_set & ~NX, mask_clr & ~NX
        return mask_set, mask_clr

    def _highmap_alias(self, pfn: int, n: int, mask_set: int, mask_clr: int,
                       force: bool) -> None:
        """cpa_process_alias(), x86-64 branch: the pfns the kernel image's high mapping
        covers, [__pa_symbol(_text), __pa_symbol(roundup(_brk_end, 2M))] inclusive
        (_brk_end taken as _end), are changed there too, primary 0."""
        k = self.machine.kernel
        if k is None:
            return
        start = k.pa(k.text) >> 12
        end = k.pa(-(-k.end // (2 << 20)) * (2 << 20)) >> 12
        pfns = [p for p in range(pfn, pfn + n) if start <= p <= end]
        if pfns:
            # high-map address of pfn: (pfn << 12) + __START_KERNEL_map - phys_base
            phys_base = k.phys_base - (1 << 64) if k.phys_base >> 63 else k.phys_base
            vpfn = self.machine.highmap_vpfn() + pfns[0] - (phys_base >> 12)
            a_set, a_clr = self._alias_masks(mask_set, mask_clr)
            self.cpa(vpfn, len(pfns), a_set, a_clr, False, force)

    def run(self, trace: Trace) -> ReferencePlacement:
        ev = trace.events
        for row in zip(*(c.tolist() for c in ev.columns()), strict=True):
            self.apply(*row)
        return self


def place_reference(trace: Trace, policy: Policy = BASELINE, **kw) -> ReferencePlacement:
    """The reference model of simulate(trace, policy=...) for a trace by handle."""
    return ReferencePlacement(trace.machine, policy, **kw).run(trace)
