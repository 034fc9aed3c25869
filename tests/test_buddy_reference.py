"""Property tests: the numba allocator (dmsim.core.buddy) against the pure-Python reference
(dmsim.reference.buddy) on random alloc/free streams, plus invariants after every run.

Observable outputs compared: every alloc/free result, every free list in order, every pcp
list in order, pageblock types, all counters and the pcp state of each zone.
"""

import random

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from dmsim.core import buddy as b
from dmsim.reference.buddy import RefBuddy

# Small machines (memory pfn ranges, reserved pfn ranges): a few dozen to ~100 MB each.
MACHINES = [
    # DMA + DMA32, qemu-like low memory, a reserved "kernel image" inside DMA32
    ([(1, 0x9F), (0x100, 0x6000)], [(0, 0x100), (0x1000, 0x1340)]),
    # DMA32 + Normal, Normal ends inside a pageblock (move_freepages_block zone clipping)
    ([(0x1000, 0x3000), (1 << 20, (1 << 20) + 0x2000 - 37)], []),
    # one zone with a hole and unaligned edges (pageblock 8 starts in a hole: unmovable)
    ([(0x1001, 0x2777), (0x3000, 0x5003)], [(0x4000, 0x4010)]),
    # DMA and a little DMA32
    ([(0x100, 0x1800)], []),
    # 8 MiB of DMA32 only: two max-order blocks, so every type soon shares pageblocks
    ([(0x1000, 0x1800)], []),
]

ORDERS = [0, 0, 0, 0, 1, 1, 2, 3, 3, 4, 5, 6, 8, 9, 10]

# (kind, ..., repeat): a repeat > 1 is a burst, so short examples reach full, fragmented states
burst = st.one_of(st.just(1), st.just(1), st.integers(1, 64))
alloc_op = st.tuples(st.just("alloc"), st.integers(0, 2), st.sampled_from(ORDERS), st.integers(0, 2), burst)
free_op = st.tuples(st.just("free"), st.integers(0, 1 << 30), burst)
drain_op = st.tuples(st.just("drain"))
# claim_block(): a block a trace frees without having allocated it, claimed in place; the
# pfn is a fraction of the machine's pfns (free, allocated, pcp, reserved or hole pages)
claim_op = st.tuples(st.just("claim"), st.floats(0, 1, exclude_max=True), st.sampled_from(ORDERS))
op_lists = st.lists(st.one_of(alloc_op, alloc_op, free_op, free_op, drain_op, claim_op),
                    max_size=160)
configs = st.fixed_dictionaries({
    "pcp": st.booleans(),
    "pcp_thp": st.booleans(),
    "nofragment": st.booleans(),
    "pcp_batch_high": st.sampled_from([None, (1, 0), (2, 8), (4, 12), (7, 20), (15, 60), (31, 64)]),
    # the vm sysctls written after boot (None / 10: the boot sizes, each model its own)
    "min_free_kbytes": st.sampled_from([None, None, None, 0, 512, 8192]),
    "watermark_scale_factor": st.sampled_from([10, 10, 1, 300]),
})


def build(machine, cfg):
    mem, res = MACHINES[machine]
    return b.buddy_init(mem, res, **cfg), RefBuddy(mem, res, **cfg)


def replay(core, ref, ops):
    """Run ops through the reference, turning them into the core's op array; then run the
    core in one call and require the same result for every op. A claim (no op code:
    BuddyState.claim()) runs the rows before it first."""
    live = []
    rows = []
    expect = []

    def flush():
        out = core.run(np.array(rows, np.int64).reshape(-1, 4))
        assert out.tolist() == expect
        rows.clear()
        expect.clear()

    for op in ops:
        if op[0] == "alloc":
            _, zone, order, mt, repeat = op
            for _ in range(repeat):
                pfn = ref.alloc(zone, order, mt)
                rows.append((b.OP_ALLOC, zone, order, mt))
                expect.append(pfn)
                if pfn >= 0:
                    live.append((pfn, order))
        elif op[0] == "free":
            _, pick, repeat = op
            for i in range(repeat):
                if not live:
                    break
                pfn, order = live.pop((pick + i * 7919) % len(live))
                rows.append((b.OP_FREE, pfn, order, 0))
                expect.append(ref.free(pfn, order))
        elif op[0] == "claim":
            _, where, order = op
            pfn = int(where * core.nr_pfns) & ~((1 << order) - 1)
            flush()
            got = ref.claim(pfn, order)
            assert core.claim(pfn, order) == got, (pfn, order)
            if got == 0:
                live.append((pfn, order))
        else:
            ref.drain()
            rows.append((b.OP_DRAIN, 0, 0, 0))
            expect.append(0)
    flush()
    return dict(live)


def assert_same(core, ref):
    assert core.free_lists() == ref.free_lists()
    assert core.pcp_lists() == ref.pcp_lists()
    assert core.pageblock_mt.tolist() == ref.pageblock_types(core.pageblock_mt.shape[0])
    assert core.counters() == ref.counters()
    for z in ref.zones:
        # boot sizing: zones.boot_sizing() against the reference's own page_alloc.c reading
        assert core.zone_info[z.idx, b.Z_WMARK_MIN] == z.watermark[0]
        assert core.zone_info[z.idx, b.Z_WMARK_LOW] == z.watermark[1]
        for j in range(z.idx + 1, 3):
            assert core.zone_info[z.idx, b.Z_LOWMEM_RESERVE + j - z.idx - 1] == z.lowmem_reserve[j]
        assert core.zone_info[z.idx, b.Z_PCP_HIGH] == z.pcp_high
        assert core.zone_info[z.idx, b.Z_PCP_BATCH] == z.pcp_batch
        assert core.zone_info[z.idx, b.Z_PCP_COUNT] == z.pcp_count
        assert core.zone_info[z.idx, b.Z_PCP_FREE_FACTOR] == z.free_factor
        assert core.zone_info[z.idx, b.Z_MANAGED] == z.managed


def managed_mask(core, machine, unreserved=()):
    """Pages the allocator manages: memory minus reserved, plus reserved pages (or holes)
    a claim handed to it."""
    mem, res = MACHINES[machine]
    mask = np.zeros(core.nr_pfns, bool)
    for s, e in mem:
        mask[s:e] = True
    for s, e in res:
        mask[s:e] = False
    mask[list(unreserved)] = True
    return mask


def check_invariants(core, live, machine, unreserved=()):
    """Every managed pfn is in exactly one free block, pcp page or allocation; free counts
    add up; list links and flags agree; no two free buddies of one order below MAX_ORDER-1."""
    cover = np.zeros(core.nr_pfns, np.int16)
    heads = {}
    zi = core.zone_info
    for (z, o, t), pfns in core.free_lists().items():
        lid = b._lid_py(z, o, t)
        assert core.free_count[lid] == len(pfns)
        assert core.free_ends[lid, 1] == pfns[-1]
        prev = -1
        for p in pfns:
            assert core.page_prev[p] == prev
            prev = p
            assert core.page_flags[p] & b.PG_BUDDY
            assert core.page_order[p] & 15 == o and core.page_order[p] >> 4 == t
            assert p % (1 << o) == 0
            assert zi[z, b.Z_START_PFN] <= p and p + (1 << o) <= zi[z, b.Z_END_PFN]
            cover[p:p + (1 << o)] += 1
            heads[p] = (o, z)
    assert sorted(heads) == np.flatnonzero(core.page_flags & b.PG_BUDDY).tolist()
    pcp_pages = [0] * 3
    for (z, i), pfns in core.pcp_lists().items():
        o = b.PAGEBLOCK_ORDER if i == b.NR_LOWORDER_PCP_LISTS else i // b.MIGRATE_PCPTYPES
        for p in pfns:
            assert core.page_flags[p] & b.PG_PCP
            cover[p:p + (1 << o)] += 1
            pcp_pages[z] += 1 << o
    alloc_pages = [0] * 3
    for p, o in live.items():
        assert core.page_flags[p] & b.PG_HEAD and core.page_order[p] & 15 == o
        cover[p:p + (1 << o)] += 1
        alloc_pages[b.page_zonenum(zi, p)] += 1 << o
    mask = managed_mask(core, machine, unreserved)
    assert (cover[mask] == 1).all(), "a managed pfn is lost or owned twice"
    assert (cover[~mask] == 0).all(), "a reserved pfn was handed out"
    for z in range(3):
        free = sum(len(v) << o for (zz, o, _t), v in core.free_lists().items() if zz == z)
        assert free == core.stats[b.S_NR_FREE_PAGES + z]
        assert pcp_pages[z] == zi[z, b.Z_PCP_COUNT]
        assert free + pcp_pages[z] + alloc_pages[z] == zi[z, b.Z_MANAGED]
    for p, (o, z) in heads.items():
        if o < b.MAX_ORDER - 1:
            assert heads.get(p ^ (1 << o)) != (o, z), f"free buddies {p:#x}/{p ^ (1 << o):#x} at order {o}"


@given(machine=st.integers(0, len(MACHINES) - 1), cfg=configs, ops=op_lists)
def test_core_matches_reference(machine, cfg, ops):
    core, ref = build(machine, cfg)
    assert_same(core, ref)
    live = replay(core, ref, ops)
    assert_same(core, ref)
    check_invariants(core, live, machine, ref.unreserved)


@given(machine=st.integers(0, len(MACHINES) - 1), cfg=configs,
       ops=st.lists(st.one_of(alloc_op, free_op, claim_op), min_size=50, max_size=300), data=st.data())
def test_free_everything_restores_boot_lists(machine, cfg, ops, data):
    """Freeing every live allocation (in random order) and draining the pcp lists gives
    back all managed pages, merged into the blocks memblock_free_all() made: every U/M/R
    pageblock is mergeable in __free_one_page(), so the buddies coalesce as far as at
    boot. Both models agree on where they ended up."""
    core, ref = build(machine, cfg)
    boot = core.free_lists()
    boot_pageblocks = core.pageblock_mt.tolist()
    live = replay(core, ref, ops)
    order = data.draw(st.permutations(sorted(live.items())))
    rows = [(b.OP_FREE, p, o, 0) for p, o in order] + [(b.OP_DRAIN, 0, 0, 0)]
    for p, o in order:
        assert ref.free(p, o) == 0
    ref.drain()
    out = core.run(np.array(rows, np.int64).reshape(-1, 4))
    assert (out == 0).all()
    assert_same(core, ref)
    check_invariants(core, {}, machine, ref.unreserved)
    total = sum(int(core.stats[b.S_NR_FREE_PAGES + z]) for z in range(3))
    assert total == int(core.zone_info[:, b.Z_MANAGED].sum())
    if ref.unreserved:
        return  # claimed reserved pages (or holes) joined the allocator: not the boot blocks
    # the boot blocks, whatever list a steal moved them to
    assert _blocks(core.free_lists()) == _blocks(boot)
    if core.pageblock_mt.tolist() == boot_pageblocks:  # no steal claimed a pageblock
        assert _as_sets(core.free_lists()) == _as_sets(boot)


def _blocks(free_lists):
    """(zone, order) -> sorted free block pfns, over all migratetypes."""
    out: dict = {}
    for (z, o, _t), pfns in free_lists.items():
        out.setdefault((z, o), []).extend(pfns)
    return {k: sorted(v) for k, v in out.items()}


def _as_sets(free_lists):
    """Each free list's pfns as a set (the order within a list follows the frees)."""
    return {k: set(v) for k, v in free_lists.items()}


def test_long_random_streams_match():
    """Deeper states than hypothesis reaches: 6000-op streams under memory pressure."""
    for seed in range(4):
        rng = random.Random(seed)
        machine = seed % len(MACHINES)
        cfg = {"pcp": seed % 2 == 0, "pcp_thp": True, "nofragment": True,
               "pcp_batch_high": [None, (15, 60)][seed // 2 % 2]}
        core, ref = build(machine, cfg)
        ops = []
        for _ in range(6000):
            if rng.random() < 0.47:
                ops.append(("free", rng.randrange(1 << 30), 1))
            elif rng.random() < 0.01:
                ops.append(("drain",))
            else:
                ops.append(("alloc", rng.randrange(3), rng.choice(ORDERS), rng.randrange(3), 1))
        live = replay(core, ref, ops)
        assert_same(core, ref)
        check_invariants(core, live, machine)
        assert core.stat("extfrag") > 0
