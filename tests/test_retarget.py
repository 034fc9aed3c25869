"""--placement simulate on recorded traces (dmsim/trace/retarget.py)."""

from __future__ import annotations

import glob
import os

import pytest

from dmsim.core.state import ENTRY_LEAF
from dmsim.report.result import build_result
from dmsim.simulate import simulate
from dmsim.trace.ftrace import parse_ftrace
from dmsim.trace.retarget import to_simulated_placement

HERE = os.path.dirname(__file__)
E820 = """[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
[    0.000000] BIOS-e820: [mem 0x0000000000100000-0x000000007ffdcfff] usable
"""
POB = "0xffff8c4900000000"


def alloc(pfn, order=0, mt=0):
    return (f"  x-1 [000] .....  1.0: mm_page_alloc: page=0 pfn={pfn:#x} order={order} "
            f"migratetype={mt} gfp_flags=GFP_KERNEL")


def free(pfn, order=0):
    return f"  x-1 [000] .....  1.0: mm_page_free: page=0 pfn={pfn:#x} order={order}"


def cpa(pfn, n=1, clr=2):
    va = int(POB, 16) + (pfn << 12)
    return (f"  x-1 [000] .....  1.0: cpa: (__change_page_attr_set_clr+0x0/0xf00) vaddr={va:#x} "
            f"numpages={n} set=0x0 clr={clr:#x} flags=0 primary=0 pob={POB} pb=0x0")


def trace(*lines):
    return parse_ftrace(E820 + "\n".join(lines) + "\n", "t")


def test_a_traced_allocation_is_placed_by_the_allocator_and_its_cpa_follows_it():
    t = trace(alloc(0x50000), cpa(0x50000))
    recorded = simulate(t)
    assert recorded.state.pmd_state[0x50000 >> 9] != ENTRY_LEAF  # split where recorded
    r = simulate(to_simulated_placement(t))
    st = r.state
    assert st.pmd_state[0x50000 >> 9] == ENTRY_LEAF  # not there any more
    assert r.buddy.stat("nr_alloc") == 2  # the allocation, then the split's page table
    assert int(st.counters[10]) == 1  # NR_PTE_TABLES: the split happened elsewhere


def test_cpa_on_memory_no_traced_allocation_owns_stays_in_place():
    t = to_simulated_placement(trace(cpa(0x60000, 3)))
    r = simulate(t)
    assert r.state.pmd_state[0x60000 >> 9] != ENTRY_LEAF


def test_blocks_freed_but_never_allocated_in_the_trace_are_claimed_in_place():
    t = to_simulated_placement(trace(free(0x40000, 1), alloc(0x40000, 0), free(0x40000, 0)))
    assert t.meta["preexisting_blocks"] == 1 and t.meta["untraced_frees"] == 0
    r = simulate(t)
    c = build_result(r).stats
    assert c["handle_errors"] == 0
    assert r.buddy.stat("nr_free_calls") == 2


def test_a_second_untraced_free_is_a_rebuilt_allocation():
    # the first free of an untouched page is a claim; the second frees a page the
    # kernel allocated again without an event (alloc_pages_bulk()): rebuilt, not dropped
    t = to_simulated_placement(trace(free(0x40000), free(0x40000)))
    assert t.meta["untraced_frees"] == 0 and t.meta["rebuilt_allocations"] == 1


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(HERE, "..", "traces", "real",
                                                             "*modules-bpf-secretmem.trace.gz"))),
                         ids=os.path.basename)
def test_reference_traces_run_to_the_end_with_simulated_placement(path):
    from dmsim.load import load_trace

    t = to_simulated_placement(load_trace(path))
    res = build_result(simulate(t))
    assert res.stats["handle_errors"] == 0 and res.stats["pte_table_alloc_failures"] == 0
    splits = [c.simulated for c in res.checks if c.counter == "direct_map_level2_splits"]
    assert splits == sorted(splits) and splits[-1] > 0


# --- vmalloc areas and __GFP_UNMAPPED users (retarget.vmalloc_areas(), the first-change rule)

MODULES = 0xFFFFFFFFC0000000  # module space: module_alloc() areas


def call(va, n=1, set_=0, clr=2, primary=0):
    return (f"  x-1 [000] .....  1.0: cpa: (__change_page_attr_set_clr+0x0/0xf00) vaddr={va:#x} "
            f"numpages={n} set={set_:#x} clr={clr:#x} flags=0 primary={primary} pob={POB} pb=0x0")


def alias(pfn, set_=0, clr=2):
    return call(int(POB, 16) + (pfn << 12), 1, set_, clr, 0)


def handle_events(t):
    from dmsim.trace import events as E

    ev = t.events
    return [(int(k), int(a0), int(a1), int(f)) for k, a0, a1, f in
            zip(ev.kind, ev.arg0, ev.arg1, ev.flags, strict=True)
            if k in (E.EV_H_ALLOC, E.EV_H_VMALLOC, E.EV_H_VFREE, E.EV_H_CPA)]


def test_a_module_area_is_rebuilt_from_its_calls_and_freed_by_its_last_page():
    from dmsim.trace import events as E

    text, data = [0x60010, 0x60011, 0x60012], 0x60013
    lines = [call(MODULES, 3, primary=1)]  # set_memory_ro() on the text: 3 alias calls
    lines += [alias(p) for p in text]
    lines += [alias(p, clr=3) for p in text + [data]]  # vm_reset_perms(): invalid ...
    lines += [alias(p, set_=3, clr=0) for p in text + [data]]  # ... then default
    lines += [free(p) for p in text + [data]]
    t = to_simulated_placement(trace(*lines))
    ev = handle_events(t)
    # one area of 4 pages (the data page joined it through the reset), module memory
    assert ev[0] == (E.EV_H_VMALLOC, 0, 4, E.UNMAPPED_MODULE << E.UNMAPPED_SHIFT)
    cpas = [e for e in ev if e[0] == E.EV_H_CPA]
    assert len(cpas) == 3 + 4 + 4 and all(e[1] == 0 for e in cpas)
    assert [e[2] >> 32 for e in cpas[:3]] == [0, 1, 2]  # page j of the call is page j
    assert cpas[6][2] >> 32 == 3  # the data page is the area's fourth
    assert ev[-1][:2] == (E.EV_H_VFREE, 0)  # after the last of the 4 frees
    assert t.meta["untraced_frees"] == 0 and t.meta["vmalloc_areas"] == 1
    r = simulate(t)
    assert build_result(r).stats["handle_errors"] == 0


def test_a_512_page_call_is_a_bpf_prog_pack():
    from dmsim.trace import events as E

    pages = list(range(0x60200, 0x60400))
    t = to_simulated_placement(trace(call(MODULES, 512, primary=1), *[alias(p) for p in pages]))
    (vm,) = [e for e in handle_events(t) if e[0] == E.EV_H_VMALLOC]
    assert vm[2] == 512 and vm[3] == E.UNMAPPED_BPF << E.UNMAPPED_SHIFT


def test_who_asks_for_gfp_unmapped_among_traced_allocations():
    from dmsim.trace import events as E

    # secretmem_fault(): the page it allocated is unmapped first; a one-page
    # module_alloc() area (alloc_pages() shows it) is made read-only first. The
    # first call splits the 2M leaf: split_large_page()'s table page (0x70000) is
    # the allocation that follows it, and no user's
    t = to_simulated_placement(trace(
        alloc(0x50000), alias(0x50000, clr=3), alloc(0x70000),
        alloc(0x50001), alias(0x50001), alias(0x50001, clr=3),
        alloc(0x50002), cpa(0x50002, clr=0x8000000000000000)))
    allocs = [e[3] for e in handle_events(t) if e[0] == E.EV_H_ALLOC]
    assert [bool(f & E.H_PT_PAGE) for f in allocs] == [False, True, False, False]
    groups = [(f >> E.UNMAPPED_SHIFT) & 0xF for f in allocs if not f & E.H_PT_PAGE]
    assert groups == [E.UNMAPPED_SECRETMEM, E.UNMAPPED_MODULE, E.UNMAPPED_NONE]


def test_a_recorded_set_memory_rox_carries_cpa_collapse():
    # a 6.15 kernel's set_memory_rox() passes CPA_COLLAPSE (16) in cpa->flags: the reader
    # keeps it, and under rox_collapse the 2M leaf the first call split comes back
    from dmsim.core import constants as C
    from dmsim.policy import load_policy
    from dmsim.trace.events import CPAF_COLLAPSE

    base = int(POB, 16) + (0x60000 << 12)
    t = trace(call(base, 1, primary=1),
              call(base, 512, clr=C._PAGE_RW | C._PAGE_NX, primary=1).replace("flags=0", "flags=16"))
    assert [int(f) & CPAF_COLLAPSE for f in t.events.flags[-2:]] == [0, CPAF_COLLAPSE]
    # (before system_running: the leaf comes back, vmstat does not count it)
    assert simulate(t).state.pmd_state[0x60000 >> 9] != ENTRY_LEAF
    r = simulate(t, policy=load_policy("rox_collapse"))
    assert r.state.pmd_state[0x60000 >> 9] == ENTRY_LEAF
    assert r.counters[C.NR_PT_FREED] == 1 and r.counters[C.DIRECT_MAP_LEVEL2_COLLAPSE] == 0
