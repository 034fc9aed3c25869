"""Hand-worked tests of the 6.1 page allocator rules, one rule each (dmsim.core.buddy).

Most tests use a 32 MiB machine: pfns [0x1000, 0x3000) in ZONE_DMA32 only, eight
max-order blocks (0x1000, 0x1400, ..., 0x2c00), sixteen pageblocks (8 .. 23), all
MIGRATE_MOVABLE after boot, per-CPU lists off unless a test is about them.
"""

import numpy as np
import pytest

from dmsim.core import buddy as b
from dmsim.core.zones import (
    ZONE_DMA,
    ZONE_DMA32,
    ZONE_NORMAL,
    pcp_defaults,
    zone_batchsize,
    zone_layout,
)

U, M, R = b.MIGRATE_UNMOVABLE, b.MIGRATE_MOVABLE, b.MIGRATE_RECLAIMABLE
BASE = 0x1000
SMALL = [(BASE, BASE + 8 * 1024)]


# vm.min_free_kbytes=0 and vm.watermark_scale_factor=1 (the sysctls' lowest values): every
# watermark of the 8192-page zone is 0, so a rule test can fill the zone; the watermark
# tests below use the boot-time sizes
WMARK_ZERO = {"min_free_kbytes": 0, "watermark_scale_factor": 1}


def small(pcp=False, **kw):
    return b.buddy_init(SMALL, pcp=pcp, **{**WMARK_ZERO, **kw})


def free_pages_in(st, zone=ZONE_DMA32):
    return sum(len(v) << o for (z, o, _t), v in st.free_lists().items() if z == zone)


def test_boot_frees_max_order_blocks_to_tail_in_pfn_order():
    # memblock_free_all -> __free_pages_core(FPI_TO_TAIL): ascending pfns, all movable
    st = small()
    assert st.free_lists() == {(ZONE_DMA32, 10, M): [BASE + 1024 * i for i in range(8)]}
    assert st.pageblock_mt[8:24].tolist() == [M] * 16
    assert st.stat("nr_free_pages_dma32") == 8192
    assert st.stat("pgfree") == 8192  # __free_pages_ok counts PGFREE at boot too
    assert st.zone_info[ZONE_DMA32, b.Z_MANAGED] == 8192


def test_boot_unaligned_range_is_freed_in_largest_aligned_pieces():
    # __free_pages_memory: order = min(MAX_ORDER - 1, __ffs(start)), shrunk to fit the end
    st = b.buddy_init([(0x1001, 0x1800)], pcp=False)
    lists = st.free_lists()
    # memmap_init marks a pageblock movable only if its first pfn is memory: 0x1000 is not,
    # so pageblock 8 keeps type 0 and its pieces land on the unmovable lists
    assert st.pageblock_mt[8] == U and st.pageblock_mt[9] == M
    assert lists[(ZONE_DMA32, 0, U)] == [0x1001]
    assert lists[(ZONE_DMA32, 1, U)] == [0x1002]
    assert lists[(ZONE_DMA32, 8, U)] == [0x1100]
    assert lists[(ZONE_DMA32, 9, M)] == [0x1200]
    assert lists[(ZONE_DMA32, 10, M)] == [0x1400]
    assert st.stat("nr_free_pages_dma32") == 0x1800 - 0x1001


def test_expand_puts_upper_halves_on_the_same_types_lists():
    # __rmqueue_smallest takes the head order-10 block; expand() leaves pfn + 2^k at order k
    st = small()
    pfn = st.alloc(ZONE_DMA32, 0, M)
    assert pfn == BASE
    lists = st.free_lists()
    for k in range(10):
        assert lists[(ZONE_DMA32, k, M)] == [BASE + (1 << k)]
    assert lists[(ZONE_DMA32, 10, M)] == [BASE + 1024 * i for i in range(1, 8)]
    assert st.stat("nr_free_pages_dma32") == 8191
    assert st.stat("pgalloc_dma32") == 1


def test_free_merges_back_up_to_max_order_and_goes_to_the_head():
    st = small()
    pfn = st.alloc(ZONE_DMA32, 0, M)
    assert st.free(pfn, 0) == 0
    # merged 0 -> 10; at order 10 buddy_merge_likely() is false, so list_add (head)
    assert st.free_lists() == {(ZONE_DMA32, 10, M): [BASE] + [BASE + 1024 * i for i in range(1, 8)]}
    second = st.alloc(ZONE_DMA32, 3, M)
    assert st.free(second, 3) == 0
    assert st.nr_free(ZONE_DMA32, 10) == 8


def test_merge_stops_at_max_order_minus_one():
    # two free order-10 buddies (0x1000 and 0x1400) never merge to order 11
    st = small()
    assert st.nr_free(ZONE_DMA32, 10) == 8
    assert all(o <= 10 for (_z, o, _t) in st.free_lists())


def test_tail_placement_when_the_next_order_buddy_is_free():
    st = small()
    a, bb, c, d, e, f = (st.alloc(ZONE_DMA32, 0, M) for _ in range(6))
    assert (a, bb, c, d, e, f) == (BASE, BASE + 1, BASE + 2, BASE + 3, BASE + 4, BASE + 5)
    assert st.free_list(ZONE_DMA32, 1, M) == [BASE + 6]
    # d: buddy c busy; its order-1 pair 0x1000 is not free -> head
    st.free(d, 0)
    assert st.free_list(ZONE_DMA32, 0, M) == [BASE + 3]
    # f: buddy e busy; higher page 0x1004's order-1 buddy 0x1006 is free -> tail
    st.free(f, 0)
    assert st.free_list(ZONE_DMA32, 0, M) == [BASE + 3, BASE + 5]


def _typed_blocks(types):
    """A small machine whose order-10 blocks carry the given pageblock types, all free."""
    st = small()
    pfns = [st.alloc(ZONE_DMA32, 10, t) for t in types]
    for p in pfns:
        st.free(p, 10)  # __free_pages_ok: back to the list of the (stolen) pageblock type
    return st, pfns


def test_fallback_order_follows_the_6_1_table():
    # fallbacks[UNMOVABLE] = {RECLAIMABLE, MOVABLE}
    st, pfns = _typed_blocks([R, M, M, M, M, M, M, M])
    assert st.free_list(ZONE_DMA32, 10, R) == [pfns[0]]
    assert st.alloc(ZONE_DMA32, 10, U) == pfns[0]
    # fallbacks[MOVABLE] = {RECLAIMABLE, UNMOVABLE}
    st, pfns = _typed_blocks([U, R, U, U, U, U, U, U])
    assert st.alloc(ZONE_DMA32, 10, M) == pfns[1]
    # then unmovable: freed order-10 blocks went to the list head, so the last freed is first
    assert st.free_list(ZONE_DMA32, 10, U)[0] == pfns[7]
    assert st.alloc(ZONE_DMA32, 10, M) == pfns[7]
    # fallbacks[RECLAIMABLE] = {UNMOVABLE, MOVABLE}
    st, pfns = _typed_blocks([M, U, M, M, M, M, M, M])
    assert st.alloc(ZONE_DMA32, 10, R) == pfns[1]
    assert st.alloc(ZONE_DMA32, 10, R) == pfns[7]
    assert st.stat("extfrag") >= 2


def test_fallback_scans_from_the_largest_order_down():
    # an unmovable order-0 request steals a whole free max-order block, not a small piece
    st = small()
    st.alloc(ZONE_DMA32, 0, M)  # leaves movable pieces of every order at 0x1001..
    pfn = st.alloc(ZONE_DMA32, 0, U)
    assert pfn == BASE + 1024  # the next order-10 block, claimed whole
    assert st.pageblock_mt[(BASE + 1024) >> 9] == U and st.pageblock_mt[(BASE + 1536) >> 9] == U
    assert st.stat("extfrag") == 1 and st.stat("extfrag_fragmenting") == 0
    assert st.stat("pageblock_claimed") == 2


def _unmovable_block_with_pieces(consume_orders):
    """Pageblock 8 unmovable with free pieces 0x1001 (o0), 0x1002 (o1), 0x1004 (o2) ...,
    minus the unmovable allocations of `consume_orders`; no movable memory left."""
    st = small()
    assert st.alloc(ZONE_DMA32, 0, U) == BASE  # steals block 0x1000 whole (both pageblocks)
    for o in consume_orders:
        st.alloc(ZONE_DMA32, o, U)
    for _ in range(7):
        st.alloc(ZONE_DMA32, 10, M)
    return st


def test_can_steal_fallback_rule():
    assert b.can_steal_fallback(9, M) and b.can_steal_fallback(10, M)
    assert b.can_steal_fallback(4, M)  # order >= pageblock_order / 2
    assert not b.can_steal_fallback(3, M)
    assert b.can_steal_fallback(0, U) and b.can_steal_fallback(0, R)


def test_movable_small_fallback_steals_only_the_smallest_block():
    # largest unmovable piece is order 3 < 4: movable may not take the pageblock, so
    # find_smallest picks the order-0 piece and moves just it (single_page)
    st = _unmovable_block_with_pieces([9, 8, 7, 6, 5, 4])
    pfn = st.alloc(ZONE_DMA32, 0, M)
    assert pfn == BASE + 1
    assert st.pageblock_mt[BASE >> 9] == U
    assert st.free_list(ZONE_DMA32, 1, U) == [BASE + 2]
    assert st.free_list(ZONE_DMA32, 3, U) == [BASE + 8]
    assert st.stat("extfrag_fragmenting") == 1


def test_whole_block_moves_but_type_stays_below_256_free_or_compatible():
    # largest unmovable piece is order 4: the block's 31 free pages move to movable,
    # but 31 free + 0 movable < 256, so the pageblock stays unmovable
    st = _unmovable_block_with_pieces([9, 8, 7, 6, 5])
    pfn = st.alloc(ZONE_DMA32, 0, M)
    assert pfn == BASE + 1
    assert st.pageblock_mt[BASE >> 9] == U
    for o, p in [(1, BASE + 2), (2, BASE + 4), (3, BASE + 8), (4, BASE + 16)]:
        assert st.free_list(ZONE_DMA32, o, M) == [p]
        assert st.free_list(ZONE_DMA32, o, U) == []


@pytest.mark.parametrize("nr_movable, claimed", [(200, True), (256, True), (257, False), (300, False)])
def test_type_changes_only_if_free_plus_compatible_reaches_256(nr_movable, claimed):
    # unmovable steal from a movable pageblock with nr_movable LRU pages allocated:
    # alike = 512 - (free + movable) = 0, so the block is claimed iff free = 512 - nr_movable >= 256
    st = small()
    for i in range(nr_movable):
        assert st.alloc(ZONE_DMA32, 0, M) == BASE + i  # sequential from a fresh block
    assert st.alloc(ZONE_DMA32, 9, M) == BASE + 512
    for _ in range(7):
        assert st.alloc(ZONE_DMA32, 10, M) >= 0
    pfn = st.alloc(ZONE_DMA32, 0, U)
    assert BASE <= pfn < BASE + 512
    assert (st.pageblock_mt[BASE >> 9] == U) == claimed
    # every free page of the pageblock moved to the unmovable lists either way
    assert all(t == U for (_z, _o, t) in st.free_lists())
    assert free_pages_in(st) == 512 - nr_movable - 1


def test_pcp_batch_refill_and_drain_above_high():
    st = small(pcp=True, pcp_batch_high=(4, 12))
    pfns = [st.alloc(ZONE_DMA32, 0, M) for _ in range(13)]
    assert pfns == [BASE + i for i in range(13)]
    # rmqueue_bulk took 4 pages per refill, to the list tail; 13 = 4 * 3 + 1
    assert st.stat("pcp_refill") == 4
    assert st.pcp_list(ZONE_DMA32, 3 * 0 + M) == [BASE + 13, BASE + 14, BASE + 15]
    assert st.zone_info[ZONE_DMA32, b.Z_PCP_COUNT] == 3
    assert st.stat("nr_free_pages_dma32") == 8192 - 16
    assert st.stat("pgalloc_dma32") == 13
    for p in pfns[:9]:
        st.free(p, 0)  # list_add: newest at the head
    # the 9th free reached high = 12: free_pcppages_bulk drained batch = 4 from the tail
    assert st.pcp_list(ZONE_DMA32, M) == [BASE + 8 - i for i in range(8)]
    assert st.zone_info[ZONE_DMA32, b.Z_PCP_COUNT] == 8
    assert st.zone_info[ZONE_DMA32, b.Z_PCP_FREE_FACTOR] == 1
    assert st.stat("nr_free_pages_dma32") == 8192 - 16 + 4
    for p in pfns[9:]:
        st.free(p, 0)
    # 12 again: batch << free_factor = 8, clamped to high - batch = 8
    assert st.pcp_list(ZONE_DMA32, M) == [BASE + 12, BASE + 11, BASE + 10, BASE + 9]
    assert st.zone_info[ZONE_DMA32, b.Z_PCP_COUNT] == 4
    st.drain()
    assert st.zone_info[ZONE_DMA32, b.Z_PCP_COUNT] == 0
    assert st.free_lists() == {(ZONE_DMA32, 10, M): [BASE + 1024 * i for i in range(8)]}


def test_pcp_high_order_free_drains_everything_after_a_drain():
    # free_high: free_factor != 0 and 0 < order <= 3 -> nr_pcp_high() = 0, free all
    st = small(pcp=True, pcp_batch_high=(4, 12))
    zero = [st.alloc(ZONE_DMA32, 0, M) for _ in range(12)]
    two = st.alloc(ZONE_DMA32, 2, M)
    for p in zero:
        st.free(p, 0)
    assert st.zone_info[ZONE_DMA32, b.Z_PCP_FREE_FACTOR] == 1
    st.free(two, 2)
    assert st.zone_info[ZONE_DMA32, b.Z_PCP_COUNT] == 0
    assert st.pcp_lists() == {}


def test_pcp_off_goes_straight_to_the_buddy_lists():
    st = small(pcp=False)
    p = st.alloc(ZONE_DMA32, 0, M)
    assert st.pcp_lists() == {} and st.stat("pcp_refill") == 0
    st.free(p, 0)
    assert st.nr_free(ZONE_DMA32, 10) == 8


# DMA [0x100, 0x1000) = 3840 pages and DMA32 [0x1000, 0x1800) = 2048 pages, sized at boot:
# calculate_min_free_kbytes: int_sqrt(5888 * 4 * 16) = 613 kB -> pages_min 153: DMA min 99,
# high 147; DMA32 min 53, high 79. set_recommended_min_free_kbytes: min(11264,
# nr_free_buffer_pages (3693 + 1969) / 20 = 283) pages = 1132 kB > 613, so pages_min 283:
# DMA min 283*3840/5888 = 184, low 184 + 46 = 230; DMA32 min 98, low 98 + 24 = 122.
# lowmem_reserve: DMA's for DMA32/Normal requests = 2048 / 256 = 8.
DMA_DMA32 = [(0x100, 0x1800)]


def test_boot_sizes_watermarks_and_lowmem_reserve():
    st = b.buddy_init(DMA_DMA32, pcp=False)
    zi = st.zone_info
    assert zi[ZONE_DMA, b.Z_WMARK_MIN] == 184 and zi[ZONE_DMA, b.Z_WMARK_LOW] == 230
    assert zi[ZONE_DMA32, b.Z_WMARK_MIN] == 98 and zi[ZONE_DMA32, b.Z_WMARK_LOW] == 122
    assert zi[ZONE_DMA, b.Z_LOWMEM_RESERVE:b.Z_LOWMEM_RESERVE + 2].tolist() == [8, 8]
    assert zi[ZONE_DMA32, b.Z_LOWMEM_RESERVE] == 0  # Normal has no managed pages
    # pcp: batch max(1, zone_batchsize()) = 1, high = the low watermark (one CPU)
    pcp = b.buddy_init(DMA_DMA32)
    assert pcp.zone_info[ZONE_DMA, b.Z_PCP_HIGH] == 230 and pcp.zone_info[ZONE_DMA32, b.Z_PCP_HIGH] == 122
    assert pcp.zone_info[ZONE_DMA32, b.Z_PCP_BATCH] == 1


def test_zone_fallback_normal_dma32_dma():
    st = b.buddy_init(DMA_DMA32, pcp=False)
    assert st.alloc(ZONE_DMA32, 10, M) == 0x1000
    # Normal unpopulated: DMA32 is preferred, but 1024 - 1023 free pages are not above its
    # low watermark (122): the zonelist falls back to DMA (2817 > 230 + lowmem_reserve 8),
    # whose order-10 blocks are 0x400, 0x800, 0xc00 (0x100 and 0x200 are orders 8 and 9)
    assert st.alloc(ZONE_NORMAL, 10, M) == 0x400
    assert st.alloc(ZONE_NORMAL, 10, M) == 0x800
    assert st.stat("pgalloc_dma") == 2048 and st.stat("pgalloc_dma32") == 1024
    # an order-0 request still fits DMA32 (1024 > 122): its preferred zone comes first
    assert st.alloc(ZONE_NORMAL, 0, M) == 0x1400
    # a __GFP_DMA request never leaves ZONE_DMA
    st2 = b.buddy_init(DMA_DMA32, pcp=False)
    assert st2.alloc(ZONE_DMA, 0, M) < 0x1000


def test_watermarks_stop_order0_allocations_at_min():
    # the 8192-page zone at boot: 1584 kB (recommended: 396 pages, 5% of 8192 - 271) so
    # min 396, low 396 + 99 = 495. The fast path (low) serves while free > 495, the slow
    # path's retry at min while free > 396: 8192 - 396 pages, then the zone is refused.
    st = small(min_free_kbytes=None, watermark_scale_factor=10)
    assert st.zone_info[ZONE_DMA32, b.Z_WMARK_MIN] == 396 and st.zone_info[ZONE_DMA32, b.Z_WMARK_LOW] == 495
    ops = np.array([(b.OP_ALLOC, ZONE_DMA32, 0, M)] * 8192, np.int64)
    out = st.run(ops)
    assert (out[:8192 - 396] >= 0).all() and (out[8192 - 396:] == -1).all()
    assert st.stat("nr_free_pages_dma32") == 396 and st.stat("alloc_fail") == 396
    # an order-3 request needs free - 7 > 396: refused at 396 free pages as well
    assert st.alloc(ZONE_DMA32, 3, M) == -1


def test_lowmem_reserve_keeps_dma_for_dma_requests():
    st = b.buddy_init(DMA_DMA32, pcp=False)
    # empty DMA32 down to its min (98), then a Normal request takes DMA pages while DMA's
    # free pages exceed min 184 + lowmem_reserve[Normal] 8 (the slow path's retry at min)
    out = st.run(np.array([(b.OP_ALLOC, ZONE_NORMAL, 0, M)] * 6000, np.int64))
    assert st.stat("nr_free_pages_dma32") == 98 and st.stat("nr_free_pages_dma") == 192
    assert (out >= 0).sum() == (2048 - 98) + (3840 - 192)
    # a __GFP_DMA request (highest_zoneidx DMA) has no lowmem_reserve: down to 184
    out = st.run(np.array([(b.OP_ALLOC, ZONE_DMA, 0, U)] * 20, np.int64))
    assert (out >= 0).sum() == 8 and st.stat("nr_free_pages_dma") == 184


def _dma32_and_normal(nofragment):
    return b.buddy_init([(0x1000, 0x1400), (1 << 20, (1 << 20) + 1024)], pcp=False, nofragment=nofragment)


@pytest.mark.parametrize("nofragment", [True, False])
def test_alloc_nofragment_spreads_to_dma32_before_fragmenting_normal(nofragment):
    st = _dma32_and_normal(nofragment)
    assert st.alloc(ZONE_DMA32, 0, U) == 0x1000  # DMA32 gets unmovable pieces
    assert st.alloc(ZONE_NORMAL, 0, M) == 1 << 20
    assert st.alloc(ZONE_NORMAL, 9, M) == (1 << 20) + 512  # no free pageblock left in Normal
    before = st.stat("extfrag")
    p = st.alloc(ZONE_NORMAL, 0, U)
    if nofragment:
        assert p == 0x1001  # ALLOC_NOFRAGMENT: DMA32's own unmovable list, no steal
        assert st.stat("extfrag") == before
    else:
        assert p >= 1 << 20  # steals from Normal's movable pageblock
        assert st.stat("extfrag") == before + 1


def test_oom_is_counted_not_raised():
    st = small()
    for _ in range(8):
        assert st.alloc(ZONE_DMA32, 10, M) >= 0
    assert st.alloc(ZONE_DMA32, 0, U) == -1
    assert st.alloc(ZONE_NORMAL, 3, M) == -1
    assert st.stat("alloc_fail") == 2 and st.stat("alloc_fail_pages") == 9
    assert st.stat("nr_free_pages_dma32") == 0


def test_bad_free_is_counted():
    st = small()
    p = st.alloc(ZONE_DMA32, 2, M)
    assert st.free(p + 1, 0) == -1
    assert st.free(p, 1) == -1
    assert st.free(p, 2) == 0
    assert st.free(p, 2) == -1
    assert st.stat("bad_free") == 3


def test_run_ops_matches_single_calls():
    st1, st2 = small(pcp=True), small(pcp=True)
    ops = np.array([[b.OP_ALLOC, ZONE_NORMAL, 0, M], [b.OP_ALLOC, ZONE_NORMAL, 2, U],
                    [b.OP_FREE, -1, 0, 0], [b.OP_FREE, -2, 2, 0], [b.OP_DRAIN, 0, 0, 0]])
    out = st1.run(ops)
    p = st2.alloc(ZONE_NORMAL, 0, M)
    q = st2.alloc(ZONE_NORMAL, 2, U)
    assert out[:2].tolist() == [p, q]
    st2.free(p, 0)
    st2.free(q, 2)
    st2.drain()
    assert st1.free_lists() == st2.free_lists()
    assert st1.counters() == st2.counters()


def test_gfp_to_zone_and_migratetype():
    GFP_KERNEL = 0xCC0
    GFP_HIGHUSER_MOVABLE = 0x100CCA
    assert b.gfp_migratetype(GFP_KERNEL) == U and b.gfp_zone(GFP_KERNEL) == ZONE_NORMAL
    assert b.gfp_migratetype(GFP_HIGHUSER_MOVABLE) == M
    assert b.gfp_zone(GFP_HIGHUSER_MOVABLE) == ZONE_NORMAL
    assert b.gfp_migratetype(GFP_KERNEL | 0x10) == R  # __GFP_RECLAIMABLE
    assert b.gfp_zone(GFP_KERNEL | 0x01) == ZONE_DMA and b.gfp_zone(GFP_KERNEL | 0x04) == ZONE_DMA32


def test_zone_layout_and_pcp_defaults():
    # qemu 2 GiB: memory [1, 0x9f) and [0x100, 0x7ffdd)
    zs = zone_layout([(1, 0x9F), (0x100, 0x7FFDD)])
    assert [(z.start_pfn, z.end_pfn) for z in zs] == [(1, 0x1000), (0x1000, 0x7FFDD), (0x7FFDD, 0x7FFDD)]
    assert not zs[ZONE_NORMAL].populated
    # zone_batchsize: min(managed >> 10, 256) / 4 -> rounddown_pow_of_two(b + b/2) - 1
    assert zone_batchsize(520157) == 63 and zone_batchsize(3840) == 0
    # min_free_kbytes 45056 (2 zones * 11 pageblocks): DMA min 11264 * 3840 / 523997 = 82,
    # low 82 + 20; DMA32 min 11181, low 11181 + 2795; high = low (one CPU)
    batch_high = pcp_defaults([3840, 520157, 0])
    assert batch_high == [(1, 102), (63, 13976), (1, 0)]


def test_memory_budget_is_about_ten_bytes_per_page():
    st = b.buddy_init([(0x100, 0x40000)])  # 1 GiB
    assert st.bytes_per_page() < 10.1
