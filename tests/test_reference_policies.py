"""Property test: simulated placement under every policy, the numba core
(`dmsim.simulate.simulate(trace, policy=...)`) against the reference model
(dmsim/reference/placement.py) on random traces by handle.

Required identical: every counter at every checkpoint and at the end, the direct
map's leaves, the allocator's free lists (in order), pcp lists, pageblock types and
statistics, the pcp batch/high. A third of the examples start with
CONFIG_DEFERRED_STRUCT_PAGE_INIT's EV_H_DEFER, claims in the deferred range freed
FREE_DEFERRED_INIT, and EV_H_WMARK_INIT (see traces()). The traces are native text (shown on failure), on small machines so one
example costs milliseconds; the numba kernels compile once per session (every machine
gives them arrays of the same types). HYPOTHESIS_PROFILE (tests/conftest.py) bounds
the number of examples.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from dmsim.core.buddy import (
    Z_MANAGED,
    Z_PCP_BATCH,
    Z_PCP_BATCH_FINAL,
    Z_PCP_HIGH,
    Z_PCP_HIGH_FINAL,
)
from dmsim.core.zones import first_deferred_pfn, zone_layout
from dmsim.policy import Policy
from dmsim.reference.cpa import core_leaves
from dmsim.reference.placement import ALL_COUNTER_NAMES, counters_from_row, place_reference
from dmsim.simulate import simulate
from dmsim.trace.events import (
    EV_H_CLAIM,
    EV_H_DEFER,
    EV_H_FREE,
    EV_H_WMARK_INIT,
    FREE_DEFERRED_INIT,
)
from dmsim.trace.native import parse_native

LOW = "dmsim-trace 1\ne820 0x1000 0x9fc00 usable\n"
# a kernel image at physical 16 MiB (6.5 MiB text, rodata from 24 MiB, 8 MiB data)
KERNEL = ("kernel text=0xffffffff81000000 etext=0xffffffff8168007b "
          "start_rodata=0xffffffff81800000 end_rodata=0xffffffff81b00000 "
          "end_rodata_hpage_align=0xffffffff81c00000 end=0xffffffff82400000 phys_base=0x0\n"
          "reserve 0x1000000 0x2400000\n")
# (header, [(space, first page, end page)] that raw cpa lines may touch)
MACHINES = [
    # 20 MiB: DMA32 is one max-order block, so fallbacks, zone fallback to DMA and
    # allocation failures come fast
    (LOW + "e820 0x100000 0x1400000 usable\n", [("direct", 0x0, 0x1400)]),
    # 64 MiB
    (LOW + "e820 0x100000 0x4000000 usable\n", [("direct", 0x0, 0x4000)]),
    # a GiB mapped by a 1G leaf: 1G splits, PMD-table merges and pud collapses
    (LOW + "e820 0x100000 0x1000000 usable\ne820 0x40000000 0x80000000 usable\n",
     [("direct", 0x0, 0x1000), ("direct", 0x40000, 0x80000)]),
    # the same without gbpages
    ("dmsim-trace 1\ngbpages off\ne820 0x1000 0x9fc00 usable\ne820 0x100000 0x1000000 usable\n"
     "e820 0x40000000 0x80000000 usable\n", [("direct", 0x0, 0x1000), ("direct", 0x40000, 0x80000)]),
    # 64 MiB with a kernel image: its high map (2M leaves, static protections) merges and
    # collapses too, and its direct-map alias is rodata
    (LOW + "e820 0x100000 0x4000000 usable\n" + KERNEL,
     [("direct", 0x0, 0x4000), ("highmap", 0x1000, 0x2400), ("direct", 0x1000, 0x2400)]),
]

POLICIES = [
    Policy(),
    Policy(name="cpa_merge", merge="cpa_merge"),
    Policy(name="rox_collapse", merge="rox_collapse"),
    Policy(name="migrate_unmapped", alloc="migrate_unmapped"),
    Policy(name="migrate_unmapped+collapse", alloc="migrate_unmapped",
           collapse_free_pageblock=True),
    Policy(name="migrate_unmapped+cpa_merge", alloc="migrate_unmapped", merge="cpa_merge",
           unmapped_users=("secretmem", "module", "bpf", "other")),
    Policy(name="migrate_unmapped+collapse+cpa_merge", alloc="migrate_unmapped",
           merge="cpa_merge", collapse_free_pageblock=True),
    Policy(name="migrate_unmapped+collapse+rox", alloc="migrate_unmapped", merge="rox_collapse",
           collapse_free_pageblock=True, unmapped_users=("secretmem",)),
    Policy(name="unmapped_alloc", alloc="unmapped_alloc"),
    Policy(name="unmapped_alloc+cpa_merge", alloc="unmapped_alloc", merge="cpa_merge"),
    Policy(name="unmapped_alloc+rox", alloc="unmapped_alloc", merge="rox_collapse",
           unmapped_users=("module",)),
]

GROUPS = ["", "", " unmapped=secretmem", " unmapped=module", " unmapped=bpf", " unmapped=other"]
ORDERS = [0, 0, 0, 0, 1, 2, 3, 3, 4, 6, 9, 9, 10]
APIS = ["ro", "rw", "x", "nx", "np", "p", "rox", "rox", "4k", "invalid", "default"]
# raw masks for cpa lines: (set, clr); _PAGE_KERNEL_4K (0x800) as 6.15's set_memory_4k()
MASKS = [(0x0, 0x2), (0x2, 0x0), (0x0, 0x8000000000000002), (0x8000000000000000, 0x0),
         (0x0, 0x3), (0x3, 0x0), (0x800, 0x0), (0x0, 0x8000000000000000)]


@st.composite
def traces(draw):
    """(machine index, native text of the events): handles are fresh numbers; the
    generator tracks which it believes live (an allocation may still fail: its later
    events are handle errors, counted alike by both sides)."""
    m = draw(st.integers(0, len(MACHINES) - 1))
    ram = MACHINES[m][1]
    # a free of handle 0 (never allocated: a counted handle error) makes every trace one
    # by handle, so simulate() places it with the allocator
    lines = ["page_free 0"]
    claims: dict[int, tuple[int, int]] = {}  # handle -> (order, pfn): see claim_events()
    max_pfn = max(hi for _, _, hi in ram)
    live: dict[int, int] = {}  # handle -> pages (page handles)
    vlive: dict[int, int] = {}  # handle -> pages (vmalloc handles)
    nxt = 1
    # CONFIG_DEFERRED_STRUCT_PAGE_INIT (see claim_events()): placeholders for EV_H_DEFER
    # and EV_H_WMARK_INIT, the claims whose free is the pgdatinit kthread's
    defer: dict | None = None
    dfree: set[int] = set()
    wmark: list[int] = []

    def claim(order, pfn, deferred_free):
        nonlocal nxt
        lines.append(f"page_free {nxt}")
        claims[nxt] = (order, pfn)
        live[nxt] = 1 << order
        if deferred_free:
            dfree.add(nxt)
        nxt += 1
        if draw(st.booleans()):
            lines.append(f"page_free {nxt - 1}")
            del live[nxt - 1]

    if draw(st.integers(0, 2)) == 0:
        # the memory defer_init() left to the pgdatinit kthread: from the section-aligned
        # pfn of zones.first_deferred_pfn() (when the top zone is big enough), or from
        # any pfn, to the end of the top zone, as trace/retarget.py makes it
        mem = [((s + 4095) >> 12, e >> 12) for s, e in parse_native(
            MACHINES[m][0], "m").machine.ram_ranges()]
        end = [z for z in zone_layout(mem) if z.end_pfn > z.start_pfn][-1].end_pfn
        start = first_deferred_pfn(mem)
        if start is None or draw(st.booleans()):
            start = draw(st.integers(0, end - 1))
            if draw(st.booleans()):
                start &= ~1023
        defer = {"handle": nxt, "start": start, "end": end}
        lines.append(f"page_free {nxt}")
        nxt += 1
        # the kthread's frees: claims in the range, freed FREE_DEFERRED_INIT; all of
        # it in max-order blocks, lowest first, as deferred_init_maxorder() does, or
        # a few random blocks
        if draw(st.booleans()):
            for pfn in range(-(-start // 1024) * 1024, end - 1023, 1024):
                claim(10, pfn, True)
        else:
            for _ in range(draw(st.integers(0, 6))):
                order = draw(st.sampled_from(ORDERS))
                pfn = draw(st.integers(start, end - 1)) & ~((1 << order) - 1)
                claim(order, pfn, draw(st.integers(0, 3)) > 0)
        if draw(st.booleans()):
            wmark.append(nxt)
            lines.append(f"page_free {nxt}")
            nxt += 1
    if draw(st.booleans()):
        lines.append("system_running")
    for _ in range(draw(st.integers(1, 40))):
        op = draw(st.sampled_from(
            ["alloc"] * 5 + ["free"] * 3 + ["vmalloc", "vfree", "cpa_h", "cpa_h", "cpa_h",
                                            "raw", "running", "check", "bad", "claim",
                                            "wmark"]))
        if op == "alloc":
            order = draw(st.sampled_from(ORDERS))
            mt = draw(st.sampled_from([0, 0, 1, 2]))
            zone = draw(st.sampled_from(["", "", "", " zone=dma32", " zone=dma"]))
            for _ in range(draw(st.sampled_from([1, 1, 1, 4, 16]))):
                lines.append(f"page_alloc {nxt} {order} mt={mt}{zone}{draw(st.sampled_from(GROUPS))}")
                live[nxt] = 1 << order
                nxt += 1
        elif op == "free" and live:
            for _ in range(draw(st.sampled_from([1, 1, 4]))):
                if not live:
                    break
                h = draw(st.sampled_from(sorted(live)))
                del live[h]
                lines.append(f"page_free {h}")
        elif op == "vmalloc":
            n = draw(st.sampled_from([1, 2, 3, 16, 64, 512]))
            group = draw(st.sampled_from(["", " unmapped=module", " unmapped=bpf"]))
            lines.append(f"vmalloc {nxt} {n}{group}")
            vlive[nxt] = n
            nxt += 1
        elif op == "vfree" and vlive:
            h = draw(st.sampled_from(sorted(vlive)))
            del vlive[h]
            lines.append(f"vfree {h}{draw(st.sampled_from([' reset_perms', ' reset_perms', '']))}")
        elif op == "cpa_h" and (live or vlive):
            h = draw(st.sampled_from(sorted(live) + sorted(vlive)))
            pages = live.get(h) or vlive[h]
            api = draw(st.sampled_from(APIS + ["kernel_4k"]))
            whole = draw(st.booleans())
            if whole:
                rng = ""
                first, n = 0, 0
            else:
                first = draw(st.integers(0, pages - 1))
                n = draw(st.integers(1, pages - first))
                rng = f" {first} {n}"
            if api == "kernel_4k":
                lines.append(f"hcpa {h} {first} {n} set=0x800 clr=0x0 force_split")
            else:
                lines.append(f"set_memory {api} {h}{rng}")
        elif op == "raw":
            space, lo, hi = draw(st.sampled_from(ram))
            size = draw(st.sampled_from([1, 7, 512, 512, 1024, 1 << 18]))
            size = min(size, hi - lo)
            start = draw(st.integers(lo, hi - size))
            if size >= 512 and draw(st.booleans()):
                start -= start % 512  # 2M-aligned whole leaves, to merge and collapse
            ms, mc = draw(st.sampled_from(MASKS))
            extra = draw(st.sampled_from(["", " primary", " primary collapse", " collapse",
                                          " force_split"]))
            lines.append(f"cpa {space} {start:#x} {size} set={ms:#x} clr={mc:#x}{extra}")
        elif op == "running":
            lines.append(draw(st.sampled_from(["system_running", "kernel_ro"])))
        elif op == "check":
            lines.append("check DirectMap4k 0")
        elif op == "claim":
            # claim_block(): a block allocated before the trace, kept in place. The native
            # format has no line for it (retarget.py makes it): a placeholder page_free
            # of a fresh handle becomes the EV_H_CLAIM (claim_events())
            order = draw(st.sampled_from(ORDERS))
            deferred = defer is not None and draw(st.booleans())
            if deferred:  # in the deferred range, maybe freed by the pgdatinit kthread
                pfn = draw(st.integers(defer["start"], defer["end"] - 1))
            elif draw(st.booleans()):
                _, lo, hi = draw(st.sampled_from(ram))
                pfn = draw(st.integers(lo, max(lo, hi - 1)))
            else:  # anywhere below max_pfn: holes, the reserved first MiB, the image
                pfn = draw(st.integers(0, max_pfn - 1))
            pfn &= ~((1 << order) - 1)
            claim(order, pfn, deferred and draw(st.booleans()))
        elif op == "wmark" and defer is not None:  # init_per_zone_wmark_min()
            wmark.append(nxt)
            lines.append(f"page_free {nxt}")
            nxt += 1
        elif op == "bad":  # events on handles that are not live: counted, not fatal
            lines.append(draw(st.sampled_from([f"page_free {nxt + 7}", f"vfree {nxt + 7}",
                                               f"set_memory ro {nxt + 7}"])))
    lines.append("check DirectMap4k 0")
    return m, "\n".join(lines) + "\n", claims, {"defer": defer, "dfree": dfree, "wmark": wmark}


def claim_events(t, claims, deferred=None) -> None:
    """Each claim's placeholder (the first page_free of its handle) becomes EV_H_CLAIM:
    arg0 handle, arg1 order, mask_set pfn (dmsim/trace/events.py). With `deferred`
    (traces()'s CONFIG_DEFERRED_STRUCT_PAGE_INIT part): the defer placeholder becomes
    EV_H_DEFER (arg0 first deferred pfn, arg1 end pfn), the wmark ones EV_H_WMARK_INIT,
    and the later page_free of a claim in `dfree` gets FREE_DEFERRED_INIT."""
    ev = t.events

    def first_free(h):
        return int(np.flatnonzero((ev.kind == EV_H_FREE) & (ev.arg0 == h))[0])

    for h, (order, pfn) in claims.items():
        i = first_free(h)
        ev.kind[i], ev.arg1[i], ev.mask_set[i] = EV_H_CLAIM, order, pfn
    if not deferred or deferred["defer"] is None:
        return
    d = deferred["defer"]
    i = first_free(d["handle"])
    ev.kind[i], ev.arg0[i], ev.arg1[i] = EV_H_DEFER, d["start"], d["end"]
    for h in deferred["wmark"]:
        ev.kind[first_free(h)] = EV_H_WMARK_INIT
    for h in deferred["dfree"]:
        frees = np.flatnonzero((ev.kind == EV_H_FREE) & (ev.arg0 == h))
        if frees.size:
            ev.flags[frees[0]] |= FREE_DEFERRED_INIT


def diff(a: dict, b: dict) -> str:
    return ", ".join(f"{k}: core {a.get(k)} ref {b.get(k)}" for k in sorted(set(a) | set(b), key=str)
                     if a.get(k) != b.get(k))


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=traces(), policy=st.sampled_from(POLICIES))
def test_core_and_reference_agree_under_every_policy(case, policy):
    m, body, claims, deferred = case
    text = MACHINES[m][0] + body
    note(f"policy {policy}\n{text}\nclaims (handle: order, pfn): {claims}\n"
         f"deferred struct page init: {deferred}")
    t = parse_native(text, "t")
    claim_events(t, claims, deferred)
    ref = place_reference(t, policy)
    ref.dm.check_invariants()
    r = simulate(t, policy=policy)

    for i in range(len(t.checkpoints)):
        core_c, ref_c = counters_from_row(r.snapshots[i]), ref.snapshots[i]
        assert core_c == ref_c, f"checkpoint {i}: {diff(core_c, ref_c)}"
    core_c, ref_c = counters_from_row(r.counters), ref.counters()
    assert core_c == ref_c, f"end: {diff(core_c, ref_c)}"
    assert set(core_c) == set(ALL_COUNTER_NAMES)

    core, mine = core_leaves(r.state), ref.dm.leaves()
    if core != mine:
        a, b = set(core), set(mine)
        raise AssertionError(f"leaves: only in core {sorted(a - b)[:6]}, "
                             f"only in reference {sorted(b - a)[:6]}")

    b = r.buddy
    assert b.free_lists() == ref.buddy.free_lists()
    assert b.pcp_lists() == ref.buddy.pcp_lists()
    n = b.pageblock_mt.shape[0]
    assert b.pageblock_mt.tolist() == ref.buddy.pageblock_types(n)
    core_stats = b.counters()
    ref_stats = ref.buddy.counters()
    assert {k: core_stats[k] for k in ref_stats} == ref_stats, diff(core_stats, ref_stats)
    # claims of reserved blocks add managed pages; deferred init takes some away
    assert [int(v) for v in b.zone_info[:, Z_MANAGED]] == [z.managed for z in ref.buddy.zones]
    # pcp sizes: early ones after EV_H_DEFER, the kept final ones until EV_H_WMARK_INIT
    assert [(int(v[Z_PCP_BATCH]), int(v[Z_PCP_HIGH])) for v in b.zone_info] == \
        [(z.pcp_batch, z.pcp_high) for z in ref.buddy.zones]
    assert [(int(v[Z_PCP_BATCH_FINAL]), int(v[Z_PCP_HIGH_FINAL])) for v in b.zone_info] == \
        [z.pcp_final or (0, 0) for z in ref.buddy.zones]
