"""--placement shadow: the instrument that scores the allocator against the kernel.

The property: a trace whose allocations were placed by the pure-Python reference
allocator (dmsim.reference.buddy, the same 6.1 rules written independently) is
a trace the core must predict exactly, decision by decision. Then rule tests:
a wrong guess is moved to the kernel's block without poisoning the next one,
a block the model does not hold free is reported, and the table pages of a
recorded split are the core's own.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dmsim.machine import Machine
from dmsim.reference.buddy import RefBuddy
from dmsim.report.shadow import shadow_report, shadow_text
from dmsim.simulate import shadow
from dmsim.trace.events import (
    EV_ALLOC,
    EV_FREE,
    EV_SYSTEM_RUNNING,
    EventBuilder,
    Trace,
)
from dmsim.trace.retarget import to_simulated_placement

MiB = 1 << 20
# e820 maps (start, end, type 1 = RAM): DMA + a little DMA32; DMA32 + Normal
MACHINES = [
    [(0x1000, 0x9FC00, 1), (0x100000, 40 * MiB, 1)],
    [(0x100000, 24 * MiB, 1), (4 << 30, (4 << 30) + 12 * MiB, 1)],
]
ORDERS = [0, 0, 0, 0, 1, 2, 3, 3, 4, 9, 10]
burst = st.one_of(st.just(1), st.integers(1, 48))
alloc_op = st.tuples(st.just("alloc"), st.integers(0, 2), st.sampled_from(ORDERS),
                     st.integers(0, 2), burst)
free_op = st.tuples(st.just("free"), st.integers(0, 1 << 30), burst)
op_lists = st.lists(st.one_of(alloc_op, alloc_op, free_op), min_size=1, max_size=80)


def ref_for(machine: Machine) -> RefBuddy:
    """The reference allocator on the memory buddy_from_machine() gives the core."""
    mem = [((s + 4095) >> 12, e >> 12) for s, e in machine.ram_ranges()]
    return RefBuddy(mem, [(0, 256)])


def recorded_trace(machine: Machine, ops) -> Trace:
    """A 'recorded' trace: every pfn is the reference allocator's choice."""
    ref = ref_for(machine)
    b = EventBuilder()
    b.append(EV_SYSTEM_RUNNING)  # a running system: no pre-trace fill
    live: list[tuple[int, int]] = []
    for op in ops:
        if op[0] == "alloc":
            _, zone, order, mt, repeat = op
            for _ in range(repeat):
                pfn = ref.alloc(zone, order, mt)
                if pfn >= 0:
                    b.append(EV_ALLOC, pfn, order, 0, 0, mt | zone << 8)
                    live.append((pfn, order))
        else:
            _, pick, repeat = op
            for i in range(repeat):
                if not live:
                    break
                pfn, order = live.pop((pick + i * 7919) % len(live))
                ref.free(pfn, order)
                b.append(EV_FREE, pfn, order)
    return Trace(machine=machine, events=b.finish())


@settings(deadline=None)
@given(st.integers(0, len(MACHINES) - 1), op_lists)
def test_shadow_of_a_trace_the_allocator_placed_scores_one(mi, ops):
    machine = Machine(e820=MACHINES[mi], gbpages=False)
    t = recorded_trace(machine, ops)
    nr_allocs = int((t.events.kind == EV_ALLOC).sum())
    rep = shadow_report(shadow(to_simulated_placement(t)))
    assert rep["decisions"] == nr_allocs
    assert rep["outcomes"]["hit"] == nr_allocs
    if nr_allocs:
        for key in ("same_pfn", "same_pageblock", "same_2m", "same_1g"):
            assert rep[key] == 1.0
    assert rep["first_divergences"] == []


def small_trace(*rows) -> Trace:
    """A running 40 MiB machine and the "kernel's" order-0 unmovable allocations at
    the pfns given (None: the reference allocator's first pick), ("free", pfn) frees."""
    machine = Machine(e820=MACHINES[0], gbpages=False)
    first = ref_for(machine).alloc(2, 0, 0)
    b = EventBuilder()
    b.append(EV_SYSTEM_RUNNING)
    for row in rows:
        if isinstance(row, tuple):
            b.append(EV_FREE, row[1], 0)
        else:
            b.append(EV_ALLOC, first if row is None else row, 0, 0, 0, 2 << 8)
    return Trace(machine=machine, events=b.finish())


def test_a_wrong_guess_is_moved_to_the_kernels_block():
    # the allocator's second pick is the pcp list's next page; the "kernel" took a
    # page far away in a movable pageblock (0x2000 = 32 MiB): a fallback steal
    machine = Machine(e820=MACHINES[0], gbpages=False)
    ref = ref_for(machine)
    ref.alloc(2, 0, 0)
    model_pick = ref.alloc(2, 0, 0)
    r = shadow(to_simulated_placement(small_trace(None, 0x2000, ("free", 0x2000))))
    rep = shadow_report(r)
    assert rep["decisions"] == 2
    assert rep["outcomes"] == {"hit": 1, "moved": 1, "not_free_in_model": 0,
                               "model_oom": 0, "lost": 0}
    (d,) = rep["first_divergences"]
    assert (d["kernel_pfn"], d["model_pfn"]) == (0x2000, model_pick)
    assert d["kernel_pfn_in_model"] == "buddy free list"
    assert d["model_source"] == "pcp"
    # the model followed the kernel: the free of 0x2000 found its block (no bad free);
    # the guess went back to its pcp list, which was then drained (the kernel's was
    # empty: it took 0x2000 from its buddy lists)
    assert r.buddy.counters()["bad_free"] == 0
    text = shadow_text(rep)
    assert "kernel 0x2000" in text and "moved" in text


def test_a_block_the_model_holds_allocated_is_reported_and_the_guess_stands():
    # the "kernel" allocates the first page twice: the model holds it allocated
    t = small_trace(None, None)
    rep = shadow_report(shadow(to_simulated_placement(t)))
    assert rep["outcomes"]["not_free_in_model"] == 1
    (d,) = rep["first_divergences"]
    assert d["kernel_pfn_in_model"] == "allocated"
    assert d["outcome"] == "not_free_in_model"


def test_a_block_the_kernel_refilled_its_pcp_list_for_drains_the_models_list():
    # the "kernel" takes 0x2000 from its buddy lists (its pcp list was empty: a
    # refill brought 0x2000 onward), then 0x2001 from that refill. The model's pcp list
    # still held its own batch: it is drained, so its next refill starts where the
    # kernel's did (0x2001 is the head of the order-0 list after 0x2000 was taken)
    rep = shadow_report(shadow(to_simulated_placement(small_trace(None, 0x2000, 0x2001))))
    assert rep["outcomes"]["hit"] == 2 and rep["outcomes"]["moved"] == 1
    assert [d["kernel_pfn"] for d in rep["first_divergences"]] == [0x2000]
