"""Rules that keep simulated placement on the kernel's path on a recorded trace
(issue 10): what the trace shows twice, what it shows that the core does itself,
and what it cannot show (allocations before its events were on, the boot pageset).
Each test builds a small ftrace text and works its expectation out by hand or
with the reference allocator (dmsim.reference.buddy)."""

from __future__ import annotations

import numpy as np

from dmsim.reference.buddy import RefBuddy
from dmsim.report.shadow import shadow_report
from dmsim.simulate import shadow, simulate
from dmsim.trace.events import (
    EV_FREE,
    EV_H_ALLOC,
    EV_H_DEFER,
    EV_H_FILL,
    EV_H_PCP_SETUP,
    FILL_BOOT_PAGESET,
    H_PT_PAGE,
)
from dmsim.trace.ftrace import parse_ftrace
from dmsim.trace.retarget import to_simulated_placement

E820 = """[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
[    0.000000] BIOS-e820: [mem 0x0000000000100000-0x000000007ffdcfff] usable
"""
POB = "0xffff8c4900000000"
MEM = [(0, 0x9F), (0x100, 0x7FFDD)]  # memblock.memory in pfns (buddy_from_machine())


def alloc(pfn, order=0, mt=0, task="x-1"):
    return (f"  {task} [000] .....  1.0: mm_page_alloc: page=0 pfn={pfn:#x} order={order} "
            f"migratetype={mt} gfp_flags=GFP_KERNEL")


def free(pfn, order=0, event="mm_page_free", task="x-1"):
    return f"  {task} [000] .....  1.0: {event}: page=0 pfn={pfn:#x} order={order}"


def cpa(pfn, n=1, clr=2):
    va = int(POB, 16) + (pfn << 12)
    return (f"  x-1 [000] .....  1.0: cpa: (__change_page_attr_set_clr+0x0/0xf00) vaddr={va:#x} "
            f"numpages={n} set=0x0 clr={clr:#x} flags=0 primary=0 pob={POB} pb=0x0")


RUNNING = "  init-1 [000] .....  2.0: tracing_mark_write: dmsim: system_running"


def trace(*lines):
    return parse_ftrace(E820 + "\n".join(lines) + "\n", "t")


def test_free_unref_page_list_traces_a_page_twice_and_it_is_one_free():
    # free_pages_prepare()'s mm_page_free, then mm_page_free_batched before the commit
    t = trace(alloc(0x50000), free(0x50000), free(0x50000, event="mm_page_free_batched"))
    assert int((t.events.kind == EV_FREE).sum()) == 1
    assert t.meta["batched_frees"] == 1
    s = to_simulated_placement(t)
    assert s.meta["untraced_frees"] == 0  # before: the second free was "untraced"
    # a batched free with no plain free before it (another tool's trace) is kept
    t = trace(alloc(0x50000), free(0x50000, event="mm_page_free_batched"))
    assert int((t.events.kind == EV_FREE).sum()) == 1 and t.meta["batched_frees"] == 0


def test_a_split_takes_its_table_page_once():
    # split_large_page() allocates the table: the recorded allocation after the call
    # is that page, which the core's own split takes; simulated placement must not
    # allocate it a second time
    t = trace(alloc(0x50000), cpa(0x50000), alloc(0x60000))
    s = to_simulated_placement(t)
    rows = np.nonzero(s.events.kind == EV_H_ALLOC)[0]
    assert [bool(s.events.flags[r] & H_PT_PAGE) for r in rows] == [False, True]
    assert s.meta["page_table_pages"] == 1
    r = simulate(s)
    assert r.buddy.stat("nr_alloc") == 2  # the allocation and the split's table, once


def boot_trace(first_pfn, *after):
    """A trace from boot: the idle task's page events, then other tasks', then
    system_running (so allocations came before it: a boot trace)."""
    return trace(alloc(first_pfn, task="<idle>-0"), *after, RUNNING)


def ref_boot_pageset(n):
    """The reference allocator after n order-0 unmovable allocations on the boot
    pageset (batch 1, high 0), and the pfn of the next one."""
    ref = RefBuddy(MEM, [(0, 256)], pcp_batch_high=(1, 0))
    for _ in range(n):
        ref.alloc(2, 0, 0)
    return ref


def test_the_allocations_before_the_trace_are_inferred_from_its_first_one():
    # the kernel's first traced allocation lands where 1000 earlier ones left off
    # (trace_buf_size= pages and slabs, before trace_init()): the model allocates that
    # many on the boot pageset first, so its own first guess is the kernel's pfn
    ref = ref_boot_pageset(1000)
    first = ref.alloc(2, 0, 0)
    t = boot_trace(first)
    s = to_simulated_placement(t)
    assert s.events.kind[0] == EV_H_FILL and s.events.arg0[0] == first
    r = shadow(s)
    assert r.buddy.stat("pretrace_pages") == 1000
    assert shadow_report(r)["outcomes"]["hit"] == 1


def test_a_first_allocation_no_count_reaches_leaves_the_model_alone():
    # pfn 0x50 is in the first MiB (reserved): no number of allocations gets there
    t = boot_trace(0x50)
    r = simulate(to_simulated_placement(t))
    assert r.buddy.stat("pretrace_pages") == 0 and r.buddy.stat("pretrace_miss") == 1


def test_a_live_recording_gets_no_fill():
    # system_running before any allocation: recorded on a running machine
    t = trace(RUNNING, alloc(0x50000))
    assert not (to_simulated_placement(t).events.kind == EV_H_FILL).any()


def test_the_boot_pageset_lasts_until_the_first_other_task():
    # start_kernel() runs on the idle task with the boot pageset (batch 1, high 0):
    # every order-0 request takes one page from the buddy lists, so an order-1 request
    # right after gets the next buddy block, not one 63 pages further on (after a
    # batch refill). setup_per_cpu_pageset() comes before rest_init()'s tasks.
    ref = ref_boot_pageset(10)
    first = ref.alloc(2, 0, 0)
    second = ref.alloc(2, 1, 0)  # order 1, still on the boot pageset
    t = boot_trace(first, alloc(second, order=1, task="<idle>-0"),
                   alloc(0x60000, task="kthreadd-2"))
    assert t.meta["pcp_setup_event"] is not None
    s = to_simulated_placement(t)
    kinds = s.events.kind.tolist()
    fill = kinds.index(EV_H_FILL)
    assert s.events.flags[fill] & FILL_BOOT_PAGESET
    setup = kinds.index(EV_H_PCP_SETUP)
    allocs = [i for i, k in enumerate(kinds) if k == EV_H_ALLOC]
    assert allocs[1] < setup < allocs[2]  # just before kthreadd's allocation
    rep = shadow_report(shadow(s))
    assert rep["by_order"]["1"]["same_pfn"] == 1.0
    # the same allocations by other tasks: the pcp is sized from the start, the
    # order-0 request refills a batch onto the pcp list, and the order-1 guess
    # comes from the buddy lists past that batch
    t = trace(alloc(first), alloc(second, order=1), RUNNING)
    assert t.meta["pcp_setup_event"] is None
    rep = shadow_report(shadow(to_simulated_placement(t)))
    assert rep["by_order"]["0"]["same_pfn"] == 1.0
    assert rep["by_order"]["1"]["same_pfn"] == 0.0


def _image_machine(with_kernel: bool):
    """48 MiB; a 4 MiB kernel image at 16 MiB (phys_base 0): text 1M, rodata 1M, then
    data and bss; memblock-reserved, as setup_arch() does."""
    from dmsim.machine import KernelImage, Machine

    k = KernelImage(text=0xFFFFFFFF81000000, etext=0xFFFFFFFF81100000,
                    start_rodata=0xFFFFFFFF81100000, end_rodata=0xFFFFFFFF81180000,
                    end_rodata_hpage_align=0xFFFFFFFF81200000, end=0xFFFFFFFF81400000,
                    phys_base=0)
    return Machine(e820=[(0x1000, 0x9FC00, 1), (0x100000, 0x3000000, 1)], gbpages=False,
                   kernel=k if with_kernel else None,
                   reserved=[(0x1000000, 0x1400000)] if with_kernel else [])


def test_a_primary_call_on_a_freed_image_page_changes_its_high_map_alias():
    # pfn 0x1300 (data) was memblock-reserved with the image and reached the allocator
    # (claim_block(): free_reserved_area()); set_memory_ro on it as direct-map memory
    # splits the direct map's 2M leaf at 0x1200 and, through cpa_process_alias()'s
    # x86-64 branch (__cpa_pfn_in_highmap()), the high map's 2M leaf over the same
    # pfns: two level-2 splits. Without a kernel image there is no high map: one.
    from dmsim.core import constants as C
    from dmsim.trace.events import EV_H_CLAIM, EV_H_CPA, EV_SYSTEM_RUNNING, EventBuilder, Trace

    for with_kernel, splits in ((True, 2), (False, 1)):
        b = EventBuilder()
        b.append(EV_SYSTEM_RUNNING)
        b.append(EV_H_CLAIM, 0, 0, 0x1300, 0, 0)
        b.append(EV_H_CPA, 0, 0 << 32 | 1, 0, C._PAGE_RW, 0)  # checkalias: primary
        t = Trace(machine=_image_machine(with_kernel), events=b.finish(), meta={"handles": 1})
        r = simulate(t)
        assert int(r.counters[C.DIRECT_MAP_LEVEL2_SPLIT]) == splits, with_kernel


def test_deferred_init_stops_at_the_section_after_one_section_of_the_top_zone():
    # defer_init(): only the node's highest zone defers, after PAGES_PER_SECTION of its
    # pfns, at the next section-aligned pfn; what the real 6.1 and 5.10 guests' pgdatinit
    # kthreads freed first (traces/real/: 0x10000 at 2 GiB, 0x108000 at 4 and 8 GiB)
    from dmsim.core.zones import first_deferred_pfn

    assert first_deferred_pfn(MEM) == 0x10000
    assert first_deferred_pfn([(1, 0x9F), (0x100, 0xBFFDD), (0x100000, 0x140000)]) == 0x108000
    assert first_deferred_pfn([(1, 0x9F), (0x100, 0x8000)]) is None  # under one section


PGDAT = "pgdatinit0-19"


def test_deferred_memory_joins_as_the_pgdatinit_kthread_frees_it():
    # CONFIG_DEFERRED_STRUCT_PAGE_INIT: above 0x10000 nothing is free until
    # deferred_free_range() frees it (MIGRATE_MOVABLE, to the tail, no pcp); a
    # pageblock whose first page stays memblock-reserved (an initrd) keeps the zeroed
    # bitmap's MIGRATE_UNMOVABLE (init_reserved_page() sets no migratetype), so its
    # pages, freed later, go to the unmovable pcp list and an unmovable request takes
    # them first
    from dmsim.core.buddy import MIGRATE_MOVABLE, MIGRATE_UNMOVABLE

    lines = [free(0x10000, order=9, task=PGDAT), free(0x7F000, task="kworker/u2:0-9"),
             alloc(0x7F000, task="init-1"), RUNNING]
    t = trace(*lines)
    assert t.meta is not None and (t.events.flags[t.events.kind == EV_FREE] & 1).tolist() == [1, 0]
    s = to_simulated_placement(t)
    assert s.events.kind[0] == EV_H_DEFER and s.events.arg0[0] == 0x10000
    r = shadow(s)
    assert shadow_report(r)["outcomes"]["hit"] == 1  # the initrd page, off the pcp list
    b = r.buddy
    assert b.pageblock_mt[0x10000 >> 9] == MIGRATE_MOVABLE  # deferred_free_range()
    assert b.pageblock_mt[0x7F000 >> 9] == MIGRATE_UNMOVABLE
    assert b.pageblock_mt[0x10200 >> 9] == MIGRATE_UNMOVABLE  # never initialised
    # above the deferred pfn, the pgdatinit block is the only free one
    free_pfns = [p for p in range(0x10000, 0x7FFDD) if b.page_flags[p] & 1]  # PG_BUDDY heads
    assert free_pfns == [0x10000]
    # without the pgdatinit kthread's frees (no deferred init) nothing is deferred
    t = trace(free(0x7F000, task="kworker/u2:0-9"), alloc(0x7F000, task="init-1"), RUNNING)
    s = to_simulated_placement(t)
    assert not (s.events.kind == EV_H_DEFER).any()
    assert shadow_report(shadow(s))["outcomes"]["hit"] == 0  # Movable: not the head


def test_the_boot_pageset_ends_where_the_trace_clock_has_microseconds():
    # setup_per_cpu_pageset() runs before late_time_init() (tsc_init()): events stamped
    # 0.000000 may be on the boot pageset, the first with microseconds is not
    def at(line, ts):
        return line.replace(" 1.0: ", f" {ts}: ")

    t = boot_trace(0x52F0, at(alloc(0x52F1, task="<idle>-0"), "0.000000"),
                   at(alloc(0x52F2, task="<idle>-0"), "0.017395"),
                   alloc(0x60000, task="kthreadd-2"))
    idx = t.meta["pcp_setup_event"]
    assert t.events.arg0[idx] == 0x52F2


def test_a_free_no_event_allocated_is_rebuilt_right_after_the_pages_were_last_free():
    # 0x50000 is allocated, freed, then freed again with no mm_page_alloc between:
    # alloc_pages_bulk() (vmalloc) took it. It becomes an unmovable allocation right
    # after the first free (the earliest the trace allows), freed by the second; shadow
    # placement follows it to the kernel's pfn without scoring it
    from dmsim.trace.events import EV_H_FREE, H_REBUILT

    t = trace(alloc(0x50000), free(0x50000), alloc(0x60000), free(0x50000), RUNNING)
    s = to_simulated_placement(t)
    assert s.meta["rebuilt_allocations"] == 1 and s.meta["untraced_frees"] == 0
    kinds = s.events.kind.tolist()
    allocs = [i for i, k in enumerate(kinds) if k == EV_H_ALLOC]
    frees = [i for i, k in enumerate(kinds) if k == EV_H_FREE]
    rebuilt = [i for i in allocs if s.events.flags[i] & H_REBUILT]
    assert len(rebuilt) == 1 and frees[0] < rebuilt[0] < allocs[-1]  # before 0x60000's
    assert s.events.mask_set[rebuilt[0]] == 0x50000
    rep = shadow_report(shadow(s))
    assert rep["decisions"] == 2  # the two traced allocations only
    # a page inside a live traced block (split_page(), then frees of its pages) is
    # not a new allocation: dropped and counted
    t = trace(alloc(0x50000, order=1), free(0x50001), RUNNING)
    s = to_simulated_placement(t)
    assert s.meta["rebuilt_allocations"] == 0 and s.meta["untraced_frees"] == 1
