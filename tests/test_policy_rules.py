"""One test per policy rule (docs/design-policies.md): a small hand-built trace by
handle, replayed through the numba core (`simulate(trace, policy=...)`) and through
the reference model (dmsim/reference/placement.py); both must give the counters,
page-table leaves and allocator state worked out in each test's comments.

The reference side runs first, so a failure names the side that broke
("reference: ..." or "core: ...").

Machines (all booted the qemu way: low RAM from 0x1000, RAM from 1 MiB):
- SMALL, 20 MiB: ZONE_DMA [0x1, 0x1000) and ZONE_DMA32 = [0x1000, 0x1400), one max-order
  block (pageblocks 8 and 9, MOVABLE after boot; its pcp batch is 1, high 60). Normal
  requests fall back from the empty Normal zone to DMA32, then DMA. Boot sizes the
  watermarks (min_free_kbytes 928 kB: 5% of nr_free_buffer_pages): DMA32 min 48, low 60;
  DMA min 183, low 228, lowmem_reserve 4 for DMA32/Normal requests. An order-10 request
  never gets DMA32's block (1024 - 1023 free pages are not above 60): it takes DMA's. The direct map
  is 4K over the first 2M and 2M leaves above (0x1000-0x11ff is the 2M leaf at 0x1000).
- MID, 64 MiB: ZONE_DMA32 = [0x1000, 0x4000), twelve order-10 blocks 0x1000, 0x1400,
  ... 0x3c00 (pageblocks 8-31), pcp batch 3.
- GIG: RAM below 16 MiB and [1 GiB, 2 GiB): ZONE_DMA32's memory is one GiB mapped by
  a 1G leaf (gbpages on), its first allocations land at pfn 0x40000; pcp batch 63.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from dmsim.core import constants as C
from dmsim.policy import Policy
from dmsim.reference.cpa import core_leaves
from dmsim.reference.placement import counters_from_row, place_reference
from dmsim.simulate import simulate
from dmsim.trace.native import parse_native

LOW = "dmsim-trace 1\ne820 0x1000 0x9fc00 usable\n"
SMALL = LOW + "e820 0x100000 0x1400000 usable\nsystem_running\n"
MID = LOW + "e820 0x100000 0x4000000 usable\nsystem_running\n"
GIG = LOW + "e820 0x100000 0x1000000 usable\ne820 0x40000000 0x80000000 usable\nsystem_running\n"
GIG_NOGB = GIG.replace("dmsim-trace 1\n", "dmsim-trace 1\ngbpages off\n")

UNMOVABLE, MOVABLE, RECLAIMABLE, UNMAPPED = 0, 1, 2, 4  # UNMAPPED: dmsim's slot 4
DMA32 = 1
PRESENT, RW, GLOBAL, NX, PSE = (C._PAGE_PRESENT, C._PAGE_RW, C._PAGE_GLOBAL, C._PAGE_NX,
                                C._PAGE_PSE)
PK = C.PAGE_KERNEL  # a boot pte: PRESENT|RW|ACCESSED|DIRTY|GLOBAL|NX
INVALID = PK & ~(PRESENT | RW | GLOBAL)  # after set_direct_map_invalid_noflush()
# ... and after set_direct_map_default_noflush(): pgprot_clear_protnone_bits() dropped
# _PAGE_GLOBAL while the pte was not present, and nothing sets it again
RESTORED = PK & ~GLOBAL
L4K, L2M, L1G = C.PG_LEVEL_4K, C.PG_LEVEL_2M, C.PG_LEVEL_1G

MIGRATE_UNMAPPED = Policy(name="migrate_unmapped", alloc="migrate_unmapped")
COLLAPSE_FREE = Policy(name="migrate_unmapped+collapse", alloc="migrate_unmapped",
                       collapse_free_pageblock=True)
UNMAPPED_ALLOC = Policy(name="unmapped_alloc", alloc="unmapped_alloc")
CPA_MERGE = Policy(name="cpa_merge", merge="cpa_merge")
ROX_COLLAPSE = Policy(name="rox_collapse", merge="rox_collapse")
BASELINE = Policy()


@dataclass
class View:
    """What one side left behind, in one shape for both."""

    side: str
    delta: dict[str, int]  # counters minus the boot values
    leaves: dict[tuple[int, int], int]  # (level, base vpfn) -> entry flags
    free_lists: dict[tuple[int, int, int], list[int]]  # (zone, order, mt) -> pfns, head first
    pageblocks: list[int]
    stats: dict[str, int]
    snapshots: list[dict[str, int]] = field(default_factory=list)  # absolute counters
    pcp: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (zone, list) -> pfns

    def pb(self, pfn: int) -> int:
        return self.pageblocks[pfn >> 9]

    def zone_lists(self, zone: int, mt: int | None = None) -> dict[tuple[int, int], list[int]]:
        """{(order, mt): pfns} of one zone (and one type)."""
        return {(o, t): v for (z, o, t), v in self.free_lists.items()
                if z == zone and (mt is None or t == mt)}


def _delta(now: dict[str, int], boot: dict[str, int]) -> dict[str, int]:
    return {k: v - boot.get(k, 0) for k, v in now.items()}


def reference_view(t, policy) -> View:
    ref = place_reference(t, policy)
    ref.dm.check_invariants()
    return View("reference", _delta(ref.counters(), ref.boot), dict(ref.dm.leaves_by_key),
                ref.buddy.free_lists(),
                ref.buddy.pageblock_types((max(z.end for z in ref.buddy.zones) >> 9) + 1),
                ref.buddy.counters(), [ref.snapshots[i] for i in range(len(t.checkpoints))],
                ref.buddy.pcp_lists())


def core_view(t, policy) -> View:
    r = simulate(t, policy=policy)
    b = r.buddy
    return View("core", _delta(counters_from_row(r.counters), counters_from_row(r.boot)),
                {(lv, base): fl for lv, base, fl in core_leaves(r.state)},
                b.free_lists(), [int(x) for x in b.pageblock_mt], b.counters(),
                [counters_from_row(row) for row in r.snapshots], b.pcp_lists())


def both(head: str, body: str, policy: Policy, expect) -> None:
    """Run the trace through the reference, then the core; expect(view) on each."""
    t = parse_native(head + body, "t")
    for make in (reference_view, core_view):
        view = make(t, policy)
        try:
            expect(view)
        except AssertionError as e:
            raise AssertionError(f"{view.side}: {e}") from e


def counters_are(v: View, **want: int) -> None:
    got = {k: v.delta[k] for k in want}
    assert got == want, f"counters {got} != {want}"


# --- migrate_unmapped (RFC 1/3, Jan 2022) ------------------------------------------------

CLAIM = """page_alloc 1 0 mt=1
page_alloc 2 9 mt=1
page_alloc 3 0 unmapped=secretmem
page_alloc 4 0 unmapped=secretmem
"""


def test_migrate_unmapped_claims_the_pageblock_with_one_split():
    # SMALL. h1 (movable, order 0) splits the DMA32 block 0x1000 on MOVABLE's lists:
    # h1 = 0x1000, free 0x1001 (o0), 0x1002 (o1), 0x1004 (o2) ... 0x1100 (o8), 0x1200 (o9).
    # h2 (movable, order 9) takes 0x1200: only pageblock 8's fragments are left.
    # h3 (__GFP_UNMAPPED, order 0): no UNMAPPED pages, so __rmqueue_fallback() scans from
    # the largest order: order 8, MOVABLE's 0x1100; can_steal_fallback() is true for
    # UNMAPPED but steal_suitable_fallback() takes only that block (goto single_page).
    # h3 = 0x1100, its halves 0x1101 (o0) ... 0x1180 (o7) on UNMAPPED's lists.
    # set_pageblock_unmapped(): pageblock 8 is MOVABLE, so invalid + default on 0x1100
    # split the 2M leaf at 0x1000 (1 split, 1 page table). That page table is an
    # unmovable order-0 allocation: UNMOVABLE has nothing, the fallback finds order 7
    # first, MOVABLE's 0x1080 before UNMAPPED's 0x1180 (UNMAPPED is last), and steals the
    # whole pageblock: every free page of pageblock 8 moves to UNMOVABLE (510 pages + the
    # movable h1 = 511 >= 256, so pageblock 8 turns UNMOVABLE), the table takes 0x1001.
    # Then pageblock 8 becomes UNMAPPED and move_freepages_block() moves all its free
    # pages, 0x1002 (o1) ... 0x1080 (o7) and 0x1102 (o1) ... 0x1180 (o7), to UNMAPPED.
    # post_alloc_hook() unmaps 0x1100. h4: UNMAPPED's order-0 list is [0x1101]; the
    # pageblock is UNMAPPED already: no new split, one invalid call.
    # CPA calls: 3 for h3 (invalid, default, invalid), 1 for h4.
    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=1, NR_PTE_TABLES=1, NR_CPA_CALLS=4,
                     NR_UNMAPPED_PAGEBLOCKS=1, NR_DIRECT_4K=512, NR_DIRECT_2M=-1)
        assert v.pb(0x1000) == UNMAPPED and v.pb(0x1200) == MOVABLE
        # all of pageblock 8's free pages are on UNMAPPED's lists, two blocks per order
        want = {(o, UNMAPPED): [0x1000 + (1 << o), 0x1100 + (1 << o)] for o in range(1, 8)}
        assert v.zone_lists(DMA32) == want
        assert v.leaves[(L4K, 0x1100)] == INVALID and v.leaves[(L4K, 0x1101)] == INVALID
        assert v.leaves[(L4K, 0x1102)] == PK  # free pages of the block stay mapped
        assert v.stats["pageblock_claimed"] == 1  # the page table's steal, not the claim
    both(SMALL, CLAIM, MIGRATE_UNMAPPED, expect)


def test_under_baseline_the_group_is_ignored():
    # the same trace without the policy: h3 and h4 are plain unmovable pages; no CPA call
    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=0, NR_CPA_CALLS=0, NR_UNMAPPED_PAGEBLOCKS=0)
        assert UNMAPPED not in v.pageblocks
    both(SMALL, CLAIM, BASELINE, expect)


def test_free_of_any_page_in_an_unmapped_pageblock_maps_it_back():
    # CLAIM, then free h1: the movable page 0x1000 was allocated before pageblock 8 turned
    # UNMAPPED and never unmapped, but free_pages_prepare() -> migrate_unmapped_map_pages()
    # looks only at the pageblock: one set_direct_map_default_noflush() (changes nothing).
    # Then h3: default on 0x1100 (present again, without _PAGE_GLOBAL).
    def expect(v: View):
        counters_are(v, NR_CPA_CALLS=6, DIRECT_MAP_LEVEL2_SPLIT=1)
        assert v.leaves[(L4K, 0x1000)] == PK
        assert v.leaves[(L4K, 0x1100)] == RESTORED
        assert v.leaves[(L4K, 0x1101)] == INVALID  # h4 still allocated
    both(SMALL, CLAIM + "page_free 1\npage_free 3\n", MIGRATE_UNMAPPED, expect)


FALLBACK = """page_alloc 9 0
page_alloc 1 10 mt=0
page_alloc 2 10 mt=2
page_free 1
page_free 2
page_alloc 3 10 unmapped=secretmem
page_alloc 4 10 unmapped=secretmem
page_alloc 5 10 unmapped=secretmem
"""


@pytest.mark.parametrize("n, left", [
    (1, {UNMOVABLE: [], RECLAIMABLE: [0x1800], MOVABLE: 0x1c00}),
    (2, {UNMOVABLE: [], RECLAIMABLE: [], MOVABLE: 0x1c00}),
    (3, {UNMOVABLE: [], RECLAIMABLE: [], MOVABLE: 0x2000}),
])
def test_unmapped_falls_back_to_unmovable_then_reclaimable_then_movable(n, left):
    # MID. h9 (unmovable order 0) steals MOVABLE's order-10 block 0x1000 whole
    # (pageblocks 8, 9 UNMOVABLE) and the pcp refill leaves 2 pages for later page tables.
    # h1 (unmovable order 10) steals 0x1400, h2 (reclaimable order 10) 0x1800; freed, they
    # sit at order 10 on UNMOVABLE's and RECLAIMABLE's lists. MOVABLE's order-10 list is
    # 0x1c00, 0x2000, ... Each __GFP_UNMAPPED order-10 request finds nothing of its own
    # and falls back in fallbacks[MIGRATE_UNMAPPED] order: UNMOVABLE (0x1400), then
    # RECLAIMABLE (0x1800), then MOVABLE (0x1c00). Each takes a fresh pageblock, so each
    # makes 2 splits (set_pageblock_unmapped()'s on the first 2M, post_alloc_hook()'s
    # unmapping reaches the second 2M) and 2 + 1024 CPA calls.
    body = "".join(FALLBACK.splitlines(keepends=True)[:5 + n])

    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=2 * n, NR_UNMAPPED_PAGEBLOCKS=n,
                     NR_CPA_CALLS=n * (2 + 1024))
        lists = v.zone_lists(DMA32)
        assert lists.get((10, UNMOVABLE), []) == left[UNMOVABLE]
        assert lists.get((10, RECLAIMABLE), []) == left[RECLAIMABLE]
        assert lists[(10, MOVABLE)][0] == left[MOVABLE]
        taken = [0x1400, 0x1800, 0x1c00][:n]
        # set_pageblock_unmapped() converts the first pageblock of each block only
        assert [v.pb(p) for p in taken] == [UNMAPPED] * n
        assert [v.pb(p + 512) for p in taken] == [UNMOVABLE, RECLAIMABLE, MOVABLE][:n]
    both(MID, body, MIGRATE_UNMAPPED, expect)


def test_other_types_fall_back_to_unmapped_last():
    # MID. h1 (__GFP_UNMAPPED order 10) takes 0x1000 (single steal from MOVABLE) and
    # converts pageblock 8; its page tables come from an unmovable pcp refill that steals
    # MOVABLE's 0x1400 whole. Freed (1024 map-back calls), 0x1000 goes to UNMAPPED's
    # order-10 list. h2 (unmovable order 10): UNMOVABLE has no order-10 block; at order
    # 10 fallbacks[UNMOVABLE] = RECLAIMABLE, MOVABLE, UNMAPPED: MOVABLE's 0x1800 is taken,
    # UNMAPPED's block is left alone.
    body = "page_alloc 1 10 unmapped=secretmem\npage_free 1\npage_alloc 2 10 mt=0\n"

    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=2, NR_CPA_CALLS=2 + 1024 + 1024)
        lists = v.zone_lists(DMA32)
        assert lists[(10, UNMAPPED)] == [0x1000]
        assert lists[(10, MOVABLE)][0] == 0x1c00
        assert v.pb(0x1800) == UNMOVABLE and v.pb(0x1a00) == UNMOVABLE
    both(MID, body, MIGRATE_UNMAPPED, expect)


def test_unmovable_takes_unmapped_pages_when_nothing_else_is_left():
    # SMALL. CLAIM leaves DMA32's free pages on UNMAPPED's lists only (pageblock 8's 508
    # free pages; h2 holds pageblock 9). h5 (unmovable order 0): DMA32 passes its low
    # watermark (508 > 60); UNMOVABLE, RECLAIMABLE and MOVABLE are empty and UNMAPPED is
    # last in fallbacks[UNMOVABLE]: at order 7 (largest first) UNMAPPED's 0x1080 is found;
    # an unmovable request may steal the whole pageblock (can_steal_fallback()): its 508
    # free pages move to UNMOVABLE (>= 256: pageblock 8 turns UNMOVABLE, the second claim)
    # and __rmqueue_smallest() takes the smallest block, 0x1002 (o1): h5 = 0x1002, 0x1003
    # left at order 0. h5 stays mapped (no __GFP_UNMAPPED): no CPA call after CLAIM's 4.
    # (Before watermarks were sized, an order-10 request emptied DMA32 to get here; it
    # now takes DMA's block, 1024 - 1023 free pages not being above DMA32's low of 60.)
    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=1, NR_CPA_CALLS=4, NR_UNMAPPED_PAGEBLOCKS=1)
        assert v.pb(0x1000) == UNMOVABLE and v.pb(0x1200) == MOVABLE
        lists = v.zone_lists(DMA32)
        assert {t for _o, t in lists} == {UNMOVABLE}
        assert lists[(0, UNMOVABLE)] == [0x1003] and lists[(1, UNMOVABLE)] == [0x1102]
        assert lists[(7, UNMOVABLE)] == [0x1080, 0x1180]
        assert v.leaves[(L4K, 0x1002)] == PK
        assert v.stats["pageblock_claimed"] == 2
    both(SMALL, CLAIM + "page_alloc 5 0\n", MIGRATE_UNMAPPED, expect)


UNMAP = "page_alloc 1 1 unmapped=secretmem\n"


@pytest.mark.parametrize("free", [False, True])
def test_unmapped_pages_leave_the_direct_map_while_allocated(free):
    # SMALL. h1 (__GFP_UNMAPPED order 1) = 0x1000 from MOVABLE's block (single steal);
    # set_pageblock_unmapped(): invalid + default on 0x1000 (the split; its page table
    # is an unmovable steal of 0x1200, order 9, whole), then post_alloc_hook() unmaps
    # 0x1000 and 0x1001: 4 calls, ptes not present. page_free: free_pages_prepare() maps
    # both back (2 more calls); they come back without _PAGE_GLOBAL.
    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=1, NR_CPA_CALLS=6 if free else 4)
        want = RESTORED if free else INVALID
        assert [v.leaves[(L4K, 0x1000)], v.leaves[(L4K, 0x1001)]] == [want, want]
        assert v.leaves[(L4K, 0x1002)] == PK
        assert v.pb(0x1000) == UNMAPPED and v.pb(0x1200) == UNMOVABLE
    both(SMALL, UNMAP + ("page_free 1\n" if free else ""), MIGRATE_UNMAPPED, expect)


def test_unmapped_vmalloc_for_modules():
    # SMALL. A module's 3 vmalloc pages with unmapped=module: one order-0 __GFP_UNMAPPED
    # allocation each (the bulk allocator refuses the flag); the first converts
    # pageblock 8 (2 calls, 1 split), each is unmapped (3 calls). vfree with
    # reset_perms: invalid + default on each alias (6), then each free maps back (3).
    body = "vmalloc 1 3 unmapped=module\nvfree 1 reset_perms\n"

    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=1, NR_UNMAPPED_PAGEBLOCKS=1,
                     NR_CPA_CALLS=2 + 3 + 6 + 3)
        assert v.leaves[(L4K, 0x1000)] == RESTORED
    both(SMALL, body, MIGRATE_UNMAPPED, expect)


# --- migrate_unmapped, collapse_free_pageblock ---------------------------------------------

def test_collapse_free_pageblock_restores_the_2m_leaf():
    # SMALL. h1 (__GFP_UNMAPPED order 9) = 0x1000: a single steal of MOVABLE's order-10
    # block, 0x1200 (o9) left on UNMAPPED's list; set_pageblock_unmapped() splits the 2M
    # leaf at 0x1000, whose page table steals that 0x1200 whole (order 9 >= pageblock
    # order: pageblock 9 UNMOVABLE). 2 + 512 calls. page_free 1: 512 map-back calls;
    # order 9 goes through the pcp THP list, which is over its high mark (63) at once
    # and drains one block: __free_one_page(0x1000, 9, UNMAPPED) cannot merge (0x1200 is
    # split), ends at order 9 >= pageblock_order on an UNMAPPED pageblock: the 2M leaf
    # comes back (direct_map_level2_collapses 1, its page table freed), pageblock 8 is
    # MOVABLE again. The block itself stays on the list the free started with, UNMAPPED:
    # the FIXME changes only the pageblock's type and then falls through to
    # add_to_free_list(page, zone, order, migratetype) with migratetype unchanged.
    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=1, DIRECT_MAP_LEVEL2_COLLAPSE=1,
                     NR_PTE_TABLES=1, NR_PT_FREED=1, NR_CPA_CALLS=2 + 512 + 512,
                     NR_DIRECT_4K=0, NR_DIRECT_2M=0)
        assert v.pb(0x1000) == MOVABLE
        assert (L4K, 0x1000) not in v.leaves
        leaf = v.leaves[(L2M, 0x1000)]
        assert leaf & PRESENT and leaf & PSE and leaf & RW
        assert v.zone_lists(DMA32).get((9, UNMAPPED)) == [0x1000]
    both(SMALL, "page_alloc 1 9 unmapped=secretmem\npage_free 1\n", COLLAPSE_FREE, expect)


def test_collapse_free_pageblock_restores_whatever_the_ptes_say():
    # SMALL. As above, but `x` clears NX on page 0's pte while h1 is allocated (an NX-only
    # call on a page handle is still a direct-map call): after the map-back on free, pte 0
    # differs from the other 511. The FIXME's set_direct_map_PMD(page) sets the PMD
    # mapping of a wholly free pageblock; it looks at no pte, so the 2M leaf comes back
    # anyway, as init_mem_mapping() made it (PAGE_KERNEL | PSE; the model's reading of a
    # function the prototype never wrote). Calls: 2 + 512 (alloc), 1 (x), 512 (free).
    body = "page_alloc 1 9 unmapped=secretmem\nset_memory x 1 0 1\npage_free 1\n"

    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_COLLAPSE=1, NR_PT_FREED=1,
                     NR_CPA_CALLS=2 + 512 + 1 + 512)
        assert v.leaves[(L2M, 0x1000)] == PK | PSE
    both(SMALL, body, COLLAPSE_FREE, expect)


def test_without_the_variant_the_pageblock_stays_unmapped_and_split():
    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=1, DIRECT_MAP_LEVEL2_COLLAPSE=0,
                     NR_PT_FREED=0)
        assert v.pb(0x1000) == UNMAPPED
        assert (L2M, 0x1000) not in v.leaves
    both(SMALL, "page_alloc 1 9 unmapped=secretmem\npage_free 1\n", MIGRATE_UNMAPPED, expect)


# --- unmapped_alloc (RFC 1/5, Mar 2023) -----------------------------------------------------

def test_unmapped_alloc_refills_with_one_2m_block_and_frees_to_the_cache():
    # SMALL. h1: the cache is empty: alloc_pages(GFP_KERNEL, PMD_ORDER) (unmovable,
    # order 9, through the THP pcp list) steals DMA32's order-10 block whole and returns
    # 0x1000 (0x1200 left on UNMOVABLE's order-9 list). The patch's loop unmaps
    # 1 << order pages, the request's: only 0x1000 (1 call, 1 split; the page table
    # takes 0x1200, split down). The block goes into the cache (PB_unmapped on
    # pageblock 8) and h1 = 0x1000 comes out of it. h2, h3: cache hits, 0x1001 and 0x1004
    # (order 2), no CPA call: the cache's other pages were never unmapped. page_free 1:
    # a PB_unmapped pageblock: back to the cache, not to the buddy, and not mapped back.
    body = ("page_alloc 1 0 unmapped=secretmem\npage_alloc 2 0 unmapped=secretmem\n"
            "page_alloc 3 2 unmapped=secretmem\npage_free 1\n")

    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=1, NR_PTE_TABLES=1, NR_CPA_CALLS=1,
                     NR_UNMAPPED_REFILLS=1)
        assert v.leaves[(L4K, 0x1000)] == INVALID
        assert v.leaves[(L4K, 0x1001)] == PK and v.leaves[(L4K, 0x1004)] == PK
        # the buddy gave two blocks (the refill, the page table) and got none back
        assert v.stats["nr_alloc"] == 2 and v.stats["nr_free_calls"] == 0
        assert v.pb(0x1000) == UNMOVABLE and v.pb(0x1200) == UNMOVABLE
        # pageblock 8 is the cache's: none of it is on the buddy's lists
        assert all(not 0x1000 <= p < 0x1200 for pfns in v.free_lists.values() for p in pfns)
    both(SMALL, body, UNMAPPED_ALLOC, expect)


def test_unmapped_alloc_above_pmd_order_fails_on_an_empty_cache():
    # SMALL. unmapped_pages_alloc(gfp, 10): the cache is empty and the refill loop runs
    # `while (cache_order >= order)` from cache_order = PMD_ORDER = 9: not once. The
    # request fails without asking the buddy (no refill, no CPA call); the handle is not
    # live, so the set_memory on it is a handle error.
    body = "page_alloc 1 10 unmapped=secretmem\nset_memory ro 1\n"

    def expect(v: View):
        counters_are(v, NR_UNMAPPED_REFILLS=0, NR_CPA_CALLS=0, NR_HANDLE_ERRORS=1,
                     DIRECT_MAP_LEVEL2_SPLIT=0)
        assert v.stats["nr_alloc"] == 0
    both(SMALL, body, UNMAPPED_ALLOC, expect)


# --- cpa_merge (Aaron Lu, Aug 2022) ---------------------------------------------------------

def test_cpa_merge_pte_table_merges_when_all_512_agree():
    # SMALL. h1 = 0x1000 (unmovable). ro splits the 2M leaf at 0x1000 (a table made by
    # __split_large_page(): tracked); rw makes pte 0x1000 equal to the other 511 again,
    # present: merge_splitted_mapping() puts back the 2M leaf (PAGE_KERNEL | PSE, the
    # boot leaf), frees the table, direct_map_level1_merges 1. The PMD table above was
    # built at boot: not tracked, no cascade.
    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=1, DIRECT_MAP_LEVEL1_MERGE=1,
                     DIRECT_MAP_LEVEL2_MERGE=0, NR_PTE_TABLES=1, NR_PT_FREED=1,
                     NR_DIRECT_4K=0, NR_DIRECT_2M=0)
        assert v.leaves[(L2M, 0x1000)] == PK | PSE
    both(SMALL, "page_alloc 1 0\nset_memory ro 1\nset_memory rw 1\n", CPA_MERGE, expect)


def test_cpa_merge_needs_present_entries():
    # SMALL. h1 = 0x1000, order 9: its own 2M leaf. np on page 0 splits it; np on the
    # other 511: all 512 equal but not present, no merge (checkpoint 0). p on all 512:
    # the last write makes them equal and present, so they merge into a 2M leaf. Each pte
    # lost _PAGE_GLOBAL while not present and got it back when present again (RFC 1/4,
    # "restore global bit when page is present"): the leaf is the boot one, PK | PSE.
    body = ("page_alloc 1 9\nset_memory np 1 0 1\nset_memory np 1 1 511\n"
            "check DirectMap4k 4096\nset_memory p 1\n")

    def expect(v: View):
        assert v.snapshots[0]["DIRECT_MAP_LEVEL1_MERGE"] == 0
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=1, DIRECT_MAP_LEVEL1_MERGE=1, NR_PT_FREED=1)
        assert v.leaves[(L2M, 0x1000)] == PK | PSE
    both(SMALL, body, CPA_MERGE, expect)


def test_cpa_merge_leaves_boot_built_tables_alone():
    # SMALL. h1 = 0x100 in ZONE_DMA, inside the first 2M, which boot maps with 4K ptes
    # (a table init_mem_mapping() built, not PageSplitpgt). ro + rw make all 512 ptes
    # equal again, but only split tables are tracked: nothing merges.
    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=0, DIRECT_MAP_LEVEL1_MERGE=0, NR_CPA_CALLS=2)
        assert v.leaves[(L4K, 0x100)] == PK
        assert (L2M, 0) not in v.leaves
    both(SMALL, "page_alloc 1 0 zone=dma\nset_memory ro 1\nset_memory rw 1\n", CPA_MERGE,
         expect)


CASCADE = """page_alloc 1 0
page_alloc 2 9
set_memory ro 1
set_memory ro 2 0 1
set_memory rw 1
check DirectMap4k 0
set_memory rw 2 0 1
"""


def test_cpa_merge_cascades_to_1g_when_the_pmd_table_is_all_equal_2m_leaves():
    # GIG. h1 = 0x40000 (the first page of the 1G leaf at 1 GiB; the pcp refill takes
    # 63 pages of the block), h2 = 0x40200 (order 9: the next 2M). ro on h1 splits the 1G
    # leaf (a tracked PMD table) and the 2M leaf at 0x40000; ro on h2's first page
    # splits the 2M leaf at 0x40200 (a table pointer written into the tracked PMD
    # table). rw on h1: its PTE table merges (level1_merges 1); the new 2M leaf is a
    # write to the PMD table, but entry 1 still points to h2's table: no 1G merge
    # (checkpoint 0). rw on h2: that table merges too, and now all 512 pmds are equal 2M
    # leaves: the PMD table merges into the 1G leaf (level2_merges 1) before the PTE
    # table's merge is counted. 3 tables made, 3 freed; DirectMap back to boot.
    def expect(v: View):
        s = v.snapshots[0]
        assert s["DIRECT_MAP_LEVEL1_MERGE"] == 1 and s["DIRECT_MAP_LEVEL2_MERGE"] == 0
        counters_are(v, DIRECT_MAP_LEVEL3_SPLIT=1, DIRECT_MAP_LEVEL2_SPLIT=2,
                     DIRECT_MAP_LEVEL1_MERGE=2, DIRECT_MAP_LEVEL2_MERGE=1, NR_PTE_TABLES=3,
                     NR_PT_FREED=3, NR_DIRECT_4K=0, NR_DIRECT_2M=0, NR_DIRECT_1G=0)
        assert v.leaves[(L1G, 0x40000)] == PK | PSE
    both(GIG, CASCADE, CPA_MERGE, expect)


@pytest.mark.parametrize("policy, merges", [(CPA_MERGE, 1), (BASELINE, 0)])
def test_module_unload_merges_back_under_cpa_merge(policy, merges):
    # SMALL. A one-page module: vmalloc'd at 0x1000, ro on its alias splits the 2M leaf.
    # vfree with VM_FLUSH_RESET_PERMS: invalid (not present: _PAGE_GLOBAL dropped) then
    # default. 6.1 leaves the pte without _PAGE_GLOBAL, different from its 511 neighbours
    # for good; the cpa merge series (RFC 1/4) sets _PAGE_GLOBAL again on present ptes, so
    # the default makes all 512 equal and the table merges.
    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=1, DIRECT_MAP_LEVEL1_MERGE=merges,
                     NR_PT_FREED=merges, NR_CPA_CALLS=3)
        if merges:
            assert v.leaves[(L2M, 0x1000)] == PK | PSE
        else:
            assert v.leaves[(L4K, 0x1000)] == RESTORED
    both(SMALL, "vmalloc 1 1\nset_memory ro 1\nvfree 1 reset_perms\n", policy, expect)


def test_migrate_unmapped_with_cpa_merge_splits_each_new_pageblock_twice():
    # SMALL. set_pageblock_unmapped()'s invalid splits the 2M leaf, its default makes the
    # table whole again (RFC 1/4 gives _PAGE_GLOBAL back) and cpa_merge merges it at once;
    # post_alloc_hook()'s invalid then splits the leaf a second time.
    policy = Policy(name="mu+merge", alloc="migrate_unmapped", merge="cpa_merge")

    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=2, DIRECT_MAP_LEVEL1_MERGE=1, NR_PTE_TABLES=2,
                     NR_PT_FREED=1, NR_CPA_CALLS=3)
    both(SMALL, "page_alloc 1 0 unmapped=secretmem\n", policy, expect)


def test_a_map_back_merge_frees_its_page_table_before_the_page():
    # SMALL, migrate_unmapped + cpa_merge. 61 module pages at 0x1000-0x103c (pageblock 8,
    # UNMAPPED); the conversion's split/merge/split as above leaves one PTE table, whose
    # page is 0x1200 (an unmovable steal of pageblock 9, its other pages free). vfree
    # frees the pages one by one, each mapped back first (free_pages_prepare()). The 61st
    # map-back makes the table whole: it merges, and __free_page(pgt) runs inside
    # free_pages_prepare(), so 0x1200 reaches the unmovable pcp list before the 61st page
    # reaches the UNMAPPED one. That page table's free lifts the pcp count to high (60,
    # DMA32's low watermark), so the drain starts at its list and gives 0x1200 back to
    # the buddy, where it merges with the rest of pageblock 9: one free order-9 block.
    # (With 64 pages the count reaches 60 three frees earlier and 0x1200 stays on the pcp
    # list.) Calls: 2 + 61 + 61.
    policy = Policy(name="mu+merge", alloc="migrate_unmapped", merge="cpa_merge")

    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=2, DIRECT_MAP_LEVEL1_MERGE=2, NR_PTE_TABLES=2,
                     NR_PT_FREED=2, NR_CPA_CALLS=124)
        assert v.zone_lists(DMA32, UNMOVABLE) == {(9, UNMOVABLE): [0x1200]}
    both(SMALL, "vmalloc 1 61 unmapped=module\nvfree 1\n", policy, expect)


def test_a_map_back_that_splits_and_merges_frees_the_table_it_allocated():
    # SMALL, migrate_unmapped + cpa_merge (found by the property test). h1, order 10,
    # fails DMA32's low watermark and takes DMA's block 0x400-0x7ff; the conversion
    # splits and merges 0x400's leaf (split 1, merge 1), post_alloc_hook()'s 1024
    # invalid calls split 0x400 and 0x600 (splits 2, 3; their tables are unmovable
    # order-0 pages from DMA32, the preferred zone: MOVABLE's block stolen whole, pcp
    # batch 1: 0x1000, then 0x1001). "set_memory p" makes all 1024 ptes PRESENT (still
    # not RW): both tables are whole and merge (merges 2, 3; 0x1000 and 0x1001 go to the
    # unmovable pcp list). The free maps the pages back one call each: 0x400's call
    # splits the 2M leaf again, taking the pcp head 0x1001, and 0x5ff's call merges it,
    # freeing that same page inside the same free_pages_prepare() (split 4, merge 4);
    # 0x600 and 0x7ff likewise (split 5, merge 5). No table page may leak: the pcp list
    # ends as it was after "set_memory p". Calls: 2 + 1024 + 1 + 1024.
    policy = Policy(name="mu+merge", alloc="migrate_unmapped", merge="cpa_merge")

    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=5, DIRECT_MAP_LEVEL1_MERGE=5, NR_PTE_TABLES=5,
                     NR_PT_FREED=5, NR_CPA_CALLS=2051, NR_DIRECT_4K=0, NR_DIRECT_2M=0)
        assert v.pcp == {(DMA32, UNMOVABLE): [0x1001, 0x1000]}
        assert v.leaves[(L2M, 0x400)] == PK | PSE  # RFC 1/4 gave _PAGE_GLOBAL back
        assert v.leaves[(L2M, 0x600)] == PK | PSE
    both(SMALL, "page_alloc 1 10 unmapped=module\nset_memory p 1\npage_free 1\n", policy,
         expect)


def test_alias_calls_merge_under_cpa_merge():
    # SMALL. 512 vmalloc pages land on 0x1000-0x11ff, in order (unmovable, batch 1).
    # ro on the first page's alias splits the 2M leaf; rox on all: one alias call per
    # page (RW and, with 6.1's cpa_process_alias() copying the masks whole, NX cleared):
    # after the last one all 512 ptes are RO and equal: cpa_merge merges (alias calls
    # write ptes like any other).
    body = "vmalloc 1 512\nset_memory ro 1 0 1\nset_memory rox 1\n"

    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=1, DIRECT_MAP_LEVEL1_MERGE=1,
                     DIRECT_MAP_LEVEL2_COLLAPSE=0, NR_CPA_CALLS=1 + 512)
        assert v.leaves[(L2M, 0x1000)] == (PK & ~(RW | NX)) | PSE
    both(SMALL, body, CPA_MERGE, expect)


@pytest.mark.parametrize("policy, alias_prot", [
    (BASELINE, PK & ~(RW | NX)),  # 6.1: alias_cpa = *cpa, NX cleared on the direct map too
    (ROX_COLLAPSE, PK & ~RW),  # 6.2+ (127960a05548): the alias call leaves NX alone
])
def test_alias_masks_follow_the_kernel_version(policy, alias_prot):
    # SMALL. 4 vmalloc pages land on 0x1000-0x1003; rox clears RW|NX through one alias
    # call per page: the first splits the 2M leaf at 0x1000, each writes its pte
    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=1, NR_CPA_CALLS=4)
        for pfn in range(0x1000, 0x1004):
            assert v.leaves[(L4K, pfn)] == alias_prot, hex(pfn)
        assert v.leaves[(L4K, 0x1004)] == PK
    both(SMALL, "vmalloc 1 4\nset_memory rox 1\n", policy, expect)


# --- rox_collapse (6.15, 41d88484c71c) ------------------------------------------------------

ROX = "page_alloc 1 9\nset_memory ro 1 0 1\nset_memory rox 1\n"


@pytest.mark.parametrize("policy, collapses", [(ROX_COLLAPSE, 1), (BASELINE, 0)])
def test_rox_collapse_after_set_memory_rox_on_a_page_handle(policy, collapses):
    # SMALL. h1 = 0x1000, order 9 (its own 2M leaf). ro on page 0 splits it; rox on all
    # 512 changes every pte (NX on all, RW on 511), so cpa_flush() runs and, with
    # CPA_COLLAPSE, collapse_pmd_page(0x1000): aligned, no _PAGE_KERNEL_4K, 511 present
    # ptes equal to the first: one 2M leaf of RO|X|PSE, table freed (level2_collapses 1).
    # collapse_pud_page(): the pud's first pmd (the first 2M, boot's 4K table) is no leaf.
    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=1, DIRECT_MAP_LEVEL2_COLLAPSE=collapses,
                     DIRECT_MAP_LEVEL3_COLLAPSE=0, NR_PT_FREED=collapses, NR_CPA_CALLS=2)
        if collapses:
            assert v.leaves[(L2M, 0x1000)] == (PK & ~(RW | NX)) | PSE
        else:
            assert (L2M, 0x1000) not in v.leaves
    both(SMALL, ROX, policy, expect)


def test_rox_collapse_needs_cpa_collapse():
    # the same masks through hcpa (a raw call: no CPA_COLLAPSE): nothing collapses
    body = ("page_alloc 1 9\nset_memory ro 1 0 1\n"
            "hcpa 1 0 0 set=0x0 clr=0x8000000000000002\n")

    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=1, DIRECT_MAP_LEVEL2_COLLAPSE=0)
    both(SMALL, body, ROX_COLLAPSE, expect)


def test_rox_collapse_never_follows_alias_calls():
    # the vmalloc trace of test_alias_calls_merge_under_cpa_merge: the primary call is on
    # the module mapping; the alias calls never reach cpa_flush(): no collapse, although
    # all 512 ptes end up equal
    body = "vmalloc 1 512\nset_memory ro 1 0 1\nset_memory rox 1\n"

    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=1, DIRECT_MAP_LEVEL2_COLLAPSE=0, NR_PT_FREED=0)
        assert (L2M, 0x1000) not in v.leaves
    both(SMALL, body, ROX_COLLAPSE, expect)


@pytest.mark.parametrize("line, collapses", [
    ("hcpa 1 0 0 set=0x800 clr=0x0", 0),  # _PAGE_KERNEL_4K on all 512 ptes
    ("set_memory 4k 1", 0),  # 6.15's set_memory_4k() sets it itself (force_split)
    ("set_memory nx 1", 1),  # a call that changes nothing else: no mark, collapses
])
def test_page_kernel_4k_blocks_the_collapse(line, collapses):
    # SMALL. h1 = 0x1000, order 9. ro on page 0 splits its 2M leaf. 6.15 marks ptes
    # that must stay 4K with _PAGE_KERNEL_4K (bit 11): set_memory_4k(), the only
    # force_split caller, sets it (under rox_collapse dmsim's force_split calls do too).
    # rox then makes all 512 ptes equal, but when the first carries _PAGE_KERNEL_4K,
    # collapse_pmd_page() refuses.
    body = f"page_alloc 1 9\nset_memory ro 1 0 1\n{line}\nset_memory rox 1\n"

    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=1, DIRECT_MAP_LEVEL2_COLLAPSE=collapses)
        if not collapses:
            assert v.leaves[(L4K, 0x1000)] & C._PAGE_KERNEL_4K
    both(SMALL, body, ROX_COLLAPSE, expect)


def test_rox_collapse_only_when_the_call_changed_something():
    # SMALL. ro on both halves leaves a split table of 512 RO ptes (nothing collapses: no
    # CPA_COLLAPSE); x clears NX everywhere (a page handle's NX-only call is still a
    # direct-map call). rox then changes nothing: change_page_attr_set_clr() returns
    # before cpa_flush() without CPA_FLUSHTLB, so there is no collapse either.
    body = ("page_alloc 1 9\nset_memory ro 1 0 1\nset_memory ro 1 1 511\nset_memory x 1\n"
            "set_memory rox 1\n")

    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_SPLIT=1, DIRECT_MAP_LEVEL2_COLLAPSE=0,
                     NR_CPA_CALLS=4)
    both(SMALL, body, ROX_COLLAPSE, expect)


def test_rox_collapse_also_collapses_boot_built_tables():
    # SMALL. A recorded set_memory_rox() over the first 2M (boot's 4K table): all 512 ptes
    # end RO|X, so the table collapses (any table qualifies). Its page came from memblock,
    # not the buddy: nothing is freed to the allocator (nr_free_calls stays 0).
    # cpa_merge with the same event: boot tables are not tracked, nothing merges.
    # (the page_alloc makes it a trace by handle: simulated placement, with an allocator)
    body = "page_alloc 1 0\ncpa direct 0x0 512 set=0x0 clr=0x8000000000000002 primary collapse\n"

    def expect_rox(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_COLLAPSE=1, NR_PT_FREED=1, NR_DIRECT_4K=-512,
                     NR_DIRECT_2M=1)
        assert v.leaves[(L2M, 0)] == (PK & ~(RW | NX)) | PSE
        assert v.stats["nr_free_calls"] == 0

    def expect_merge(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_COLLAPSE=0, DIRECT_MAP_LEVEL1_MERGE=0, NR_PT_FREED=0)
    both(SMALL, body, ROX_COLLAPSE, expect_rox)
    both(SMALL, body, CPA_MERGE, expect_merge)


@pytest.mark.parametrize("primary, collapses", [(" primary", 1), ("", 0)])
def test_a_recorded_alias_call_never_collapses(primary, collapses):
    # SMALL. A recorded call carries cpa->flags, CPA_COLLAPSE included; an alias call has
    # them too (alias_cpa = *cpa) but is a nested __change_page_attr_set_clr(.., 0) that
    # never reaches cpa_flush(): only the primary one collapses (here boot's first 2M).
    body = f"page_alloc 1 0\ncpa direct 0x0 512 set=0x0 clr=0x8000000000000002{primary} collapse\n"

    def expect(v: View):
        counters_are(v, DIRECT_MAP_LEVEL2_COLLAPSE=collapses)
    both(SMALL, body, ROX_COLLAPSE, expect)


ROX_1G = """page_alloc 1 0
cpa direct 0x40000 1 set=0x0 clr=0x2 primary
cpa direct 0x40000 262144 set=0x0 clr=0x8000000000000002 primary collapse
"""


@pytest.mark.parametrize("head, gb", [(GIG, True), (GIG_NOGB, False)])
def test_pud_collapse_only_with_gbpages(head, gb):
    # GIG. ro on 0x40000 splits the 1G leaf (with gbpages) and the 2M leaf at 0x40000.
    # rox over the whole GiB: the 511 other 2M leaves are rewritten in place, the ptes
    # change one by one; then collapse_pmd_page(0x40000) makes the 2M leaf RO|X|PSE,
    # equal to the other 511, and collapse_pud_page() (direct_gbpages only) makes the
    # 1G leaf. Without gbpages boot mapped that GiB with 2M leaves: one split, one 2M
    # collapse, no 1G.
    def expect(v: View):
        if gb:
            counters_are(v, DIRECT_MAP_LEVEL3_SPLIT=1, DIRECT_MAP_LEVEL2_SPLIT=1,
                         DIRECT_MAP_LEVEL2_COLLAPSE=1, DIRECT_MAP_LEVEL3_COLLAPSE=1,
                         NR_PT_FREED=2, NR_DIRECT_1G=0, NR_DIRECT_2M=0, NR_DIRECT_4K=0)
            assert v.leaves[(L1G, 0x40000)] == (PK & ~(RW | NX)) | PSE
        else:
            counters_are(v, DIRECT_MAP_LEVEL3_SPLIT=0, DIRECT_MAP_LEVEL2_SPLIT=1,
                         DIRECT_MAP_LEVEL2_COLLAPSE=1, DIRECT_MAP_LEVEL3_COLLAPSE=0,
                         NR_PT_FREED=1, NR_DIRECT_1G=0)
            assert v.leaves[(L2M, 0x40000)] == (PK & ~(RW | NX)) | PSE
    both(head, ROX_1G, ROX_COLLAPSE, expect)
