"""The numba CPA core against the reference model (dmsim/reference/cpa.py).

Part 1 checks the reference itself on hand-worked cases; part 2 drives random
machines and random __change_page_attr_set_clr() sequences through both and
requires identical leaves and counters after every event.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from dmsim.core import constants as C
from dmsim.core.api import replay
from dmsim.core.layout import init_mem_mapping
from dmsim.core.state import ENTRY_LEAF, P_HIGHMAP_VPFN
from dmsim.machine import KernelImage, Machine
from dmsim.reference.cpa import (
    EFAULT,
    ReferenceDirectMap,
    core_leaves,
    counters_from_row,
)
from dmsim.trace.events import (
    CPAF_FORCE_SPLIT,
    CPAF_PRIMARY,
    EV_CHECKPOINT,
    EV_CPA,
    EV_KERNEL_RO,
    EV_SYSTEM_RUNNING,
    EventBuilder,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
RAM, RESERVED, ACPI = 1, 2, 3
PRESENT, RW, GLOBAL, NX, PSE = (C._PAGE_PRESENT, C._PAGE_RW, C._PAGE_GLOBAL, C._PAGE_NX,
                                C._PAGE_PSE)
PK = C.PAGE_KERNEL  # what boot puts in a direct-map pte
PK_LARGE = C.PAGE_KERNEL | PSE  # ... and in a direct-map 2M/1G leaf
PMD, PUD = C.PMD_PAGES, C.PUD_PAGES


# --- helpers ------------------------------------------------------------------------

def _round_up(x: int, a: int) -> int:
    return -(-x // a) * a


def events_for(ops) -> tuple[np.ndarray, ...]:
    """Event columns for ops, with a checkpoint (snapshot i) after op i."""
    b = EventBuilder()
    for i, op in enumerate(ops):
        if op[0] == "cpa":
            _, vpfn, numpages, mask_set, mask_clr, primary, force_split = op
            flags = (CPAF_PRIMARY if primary else 0) | (CPAF_FORCE_SPLIT if force_split else 0)
            b.append(EV_CPA, vpfn, numpages, mask_set, mask_clr, flags)
        elif op[0] == "running":
            b.append(EV_SYSTEM_RUNNING)
        elif op[0] == "ro":
            b.append(EV_KERNEL_RO)
        b.append(EV_CHECKPOINT, i)
    return b.finish().columns()


def apply_op(ref: ReferenceDirectMap, op) -> int:
    if op[0] == "cpa":
        _, vpfn, numpages, mask_set, mask_clr, primary, force_split = op
        return ref.change_page_attr_set_clr(vpfn, numpages, mask_set, mask_clr,
                                            primary, force_split)
    if op[0] == "running":
        ref.system_running()
    elif op[0] == "ro":
        ref.kernel_set_to_readonly()
    return 0


def leaves_diff(core: list, ref: list, limit: int = 8) -> str:
    a, b = set(core), set(ref)
    fmt = lambda xs: ", ".join(f"(L{lv}, {base:#x}, {fl:#x})" for lv, base, fl in sorted(xs)[:limit])  # noqa: E731
    return f"only in core: [{fmt(a - b)}] ({len(a - b)}); only in reference: [{fmt(b - a)}] ({len(b - a)})"


def run_both(machine: Machine, ops) -> tuple[ReferenceDirectMap, object]:
    """Run ops through the numba replay and the reference; assert they agree on
    the counters after every op and on the leaves at the end."""
    state = init_mem_mapping(machine)
    ref = ReferenceDirectMap(machine)
    snaps = replay(state, events_for(ops), len(ops))
    for i, op in enumerate(ops):
        apply_op(ref, op)
        core_c, ref_c = counters_from_row(snaps[i]), ref.counters()
        assert core_c == ref_c, (
            f"counters differ after op {i} {op}: "
            + ", ".join(f"{k}: core {core_c[k]} ref {ref_c[k]}" for k in core_c if core_c[k] != ref_c[k]))
    ref.check_invariants()
    core, mine = core_leaves(state), ref.leaves()
    if core != mine:
        i = first_divergence(machine, ops)
        raise AssertionError(f"leaves differ, first after op {i} {ops[i] if i is not None else ''}: "
                             + leaves_diff(core, mine))
    return ref, state


def first_divergence(machine: Machine, ops) -> int | None:
    """Replay ops one at a time on both; the index of the first op after which
    their leaves differ (for failure messages)."""
    state = init_mem_mapping(machine)
    ref = ReferenceDirectMap(machine)
    for i, op in enumerate(ops):
        replay(state, events_for([op]), 1)
        apply_op(ref, op)
        if core_leaves(state) != ref.leaves():
            return i
    return None


def e820_4g() -> list[tuple[int, int, int]]:
    """A 4 GiB guest: low RAM, the 640K-1M hole, RAM up to 4 GiB."""
    return [(0, 0x9FC00, RAM), (0x9FC00, 0x100000, RESERVED), (0x100000, 4 * GiB, RAM)]


def kernel_at(phys_text: int, text_off: int = 16 * MiB, data_size: int = 8 * MiB) -> KernelImage:
    """A kernel image: 6.5 MiB text, rodata from the next 2M to +3 MiB, then data."""
    text = C.START_KERNEL_MAP + text_off
    etext = text + 6 * MiB + 512 * KiB + 123
    start_rodata = _round_up(etext, 2 * MiB)
    end_rodata = start_rodata + 3 * MiB
    hpage = _round_up(end_rodata, 2 * MiB)
    return KernelImage(text=text, etext=etext, start_rodata=start_rodata, end_rodata=end_rodata,
                       end_rodata_hpage_align=hpage, end=hpage + data_size,
                       phys_base=phys_text - text_off)


def boot(machine: Machine) -> ReferenceDirectMap:
    return ReferenceDirectMap(machine)


# --- part 1: the reference on hand-worked cases -------------------------------------------
# The 4 GiB machine boots with GiB 0 as a table (a pte table for the first 2M,
# then 511 2M leaves) and GiB 1-3 as 1G leaves.

GIB1 = 1 * PUD  # first vpfn of the 1G leaf over GiB 1


@pytest.fixture
def m4g() -> Machine:
    return Machine(e820=e820_4g(), gbpages=True)


def test_boot_leaves_as_expected(m4g):
    ref = boot(m4g)
    leaves = ref.leaves_by_key
    assert leaves[(C.PG_LEVEL_1G, GIB1)] == PK_LARGE
    assert leaves[(C.PG_LEVEL_2M, 5 * PMD)] == PK_LARGE
    assert leaves[(C.PG_LEVEL_4K, 10)] == PK
    ref.check_invariants()


def test_4k_change_in_1g_leaf_cascades(m4g):
    ref = boot(m4g)
    before = ref.counters()
    assert ref.change_page_attr_set_clr(GIB1 + 5, 1, 0, RW) == 0  # set_memory_ro, 1 page
    leaves = ref.leaves_by_key
    assert (C.PG_LEVEL_1G, GIB1) not in leaves
    assert (C.PG_LEVEL_2M, GIB1) not in leaves  # the first 2M child was split again
    for i in range(1, 512):
        assert leaves[(C.PG_LEVEL_2M, GIB1 + i * PMD)] == PK_LARGE
    for j in range(512):
        assert leaves[(C.PG_LEVEL_4K, GIB1 + j)] == (PK & ~RW if j == 5 else PK)
    after = ref.counters()
    # one level-3 split (1G -> 512 x 2M), one level-2 split (2M -> 512 x 4K)
    assert after["NR_DIRECT_1G"] == before["NR_DIRECT_1G"] - 1
    assert after["NR_DIRECT_2M"] == before["NR_DIRECT_2M"] + 512 - 1
    assert after["NR_DIRECT_4K"] == before["NR_DIRECT_4K"] + 512
    assert after["NR_PTE_TABLES"] == before["NR_PTE_TABLES"] + 2
    # boot time: no vmstat events
    assert after["DIRECT_MAP_LEVEL2_SPLIT"] == after["DIRECT_MAP_LEVEL3_SPLIT"] == 0
    ref.check_invariants()


def test_same_prot_keeps_the_leaf(m4g):
    ref = boot(m4g)
    leaves_before, before = ref.leaves(), ref.counters()
    # set_memory_rw on already-RW pages in the middle of a 1G leaf: nothing to do
    assert ref.change_page_attr_set_clr(GIB1 + 5, 700, RW, 0) == 0
    # set_memory_global on a GLOBAL 2M leaf: same protection too
    assert ref.change_page_attr_set_clr(3 * PMD + 1, 3, GLOBAL, 0) == 0
    assert ref.leaves() == leaves_before
    after = ref.counters()
    assert after["NR_CPA_CALLS"] == before["NR_CPA_CALLS"] + 2
    assert {k: v for k, v in after.items() if k != "NR_CPA_CALLS"} == \
        {k: v for k, v in before.items() if k != "NR_CPA_CALLS"}


def test_full_aligned_leaf_rewritten_in_place(m4g):
    ref = boot(m4g)
    before = ref.counters()
    n = len(ref.leaves())
    assert ref.change_page_attr_set_clr(7 * PMD, PMD, 0, RW) == 0  # one whole 2M leaf
    assert ref.change_page_attr_set_clr(2 * PUD, PUD, 0, NX) == 0  # one whole 1G leaf
    assert ref.leaves_by_key[(C.PG_LEVEL_2M, 7 * PMD)] == PK_LARGE & ~RW
    assert ref.leaves_by_key[(C.PG_LEVEL_1G, 2 * PUD)] == PK_LARGE & ~NX
    assert len(ref.leaves()) == n
    assert ref.counters()["NR_PTE_TABLES"] == before["NR_PTE_TABLES"]
    assert ref.counters()["NR_DIRECT_2M"] == before["NR_DIRECT_2M"]
    # a 2M-aligned range one page short of the leaf splits it
    assert ref.change_page_attr_set_clr(8 * PMD, PMD - 1, 0, RW) == 0
    assert (C.PG_LEVEL_2M, 8 * PMD) not in ref.leaves_by_key
    assert ref.leaves_by_key[(C.PG_LEVEL_4K, 9 * PMD - 1)] == PK
    assert ref.leaves_by_key[(C.PG_LEVEL_4K, 8 * PMD)] == PK & ~RW


def test_set_memory_4k_forces_split(m4g):
    ref = boot(m4g)
    before = ref.counters()
    vpfn = 3 * PUD + 1000
    assert ref.change_page_attr_set_clr(vpfn, 1, 0, 0, True, True) == 0
    leaves = ref.leaves_by_key
    block = vpfn - vpfn % PMD
    assert all(leaves[(C.PG_LEVEL_4K, block + j)] == PK for j in range(512))
    assert sum(1 for lv, base in leaves if lv == C.PG_LEVEL_2M and 3 * PUD <= base < 4 * PUD) == 511
    after = ref.counters()
    assert after["NR_DIRECT_1G"] == before["NR_DIRECT_1G"] - 1
    assert after["NR_DIRECT_4K"] == before["NR_DIRECT_4K"] + 512
    # without force_split and without masks: nothing happens, not even a call
    assert ref.change_page_attr_set_clr(GIB1, 1, 0, 0) == 0
    assert ref.counters()["NR_CPA_CALLS"] == after["NR_CPA_CALLS"]


def test_not_present_clears_global(m4g):
    ref = boot(m4g)
    assert ref.change_page_attr_set_clr(10, 1, 0, PRESENT) == 0  # a 4K pte
    assert ref.leaves_by_key[(C.PG_LEVEL_4K, 10)] == PK & ~(PRESENT | GLOBAL)
    assert ref.change_page_attr_set_clr(2 * PMD, PMD, 0, PRESENT) == 0  # a whole 2M leaf
    # !PRESENT large leaf: no GLOBAL (protnone) and no PSE (__should_split_large_page)
    assert ref.leaves_by_key[(C.PG_LEVEL_2M, 2 * PMD)] == PK & ~(PRESENT | GLOBAL)
    # making it present again restores PSE but not GLOBAL
    assert ref.change_page_attr_set_clr(2 * PMD, PMD, PRESENT, 0) == 0
    assert ref.leaves_by_key[(C.PG_LEVEL_2M, 2 * PMD)] == (PK_LARGE & ~GLOBAL)
    # splitting a !PRESENT 1G leaf gives !PRESENT 2M children without PSE
    assert ref.change_page_attr_set_clr(GIB1, PUD, 0, PRESENT) == 0
    assert ref.change_page_attr_set_clr(GIB1 + 3 * PMD, 1, RW, 0) == 0  # RW already set
    assert ref.change_page_attr_set_clr(GIB1 + 3 * PMD, 1, 0, NX) == 0
    leaves = ref.leaves_by_key
    assert leaves[(C.PG_LEVEL_2M, GIB1)] == PK & ~(PRESENT | GLOBAL)
    assert leaves[(C.PG_LEVEL_4K, GIB1 + 3 * PMD)] == PK & ~(PRESENT | GLOBAL | NX)
    ref.check_invariants()


def test_vmstat_counts_only_after_system_running(m4g):
    ref = boot(m4g)
    d0 = ref.counters()
    ref.change_page_attr_set_clr(3 * PMD + 3, 1, 0, RW)  # boot-time 2M split
    c = ref.counters()
    assert c["NR_DIRECT_2M"] == d0["NR_DIRECT_2M"] - 1 and c["DIRECT_MAP_LEVEL2_SPLIT"] == 0
    ref.system_running()
    ref.change_page_attr_set_clr(4 * PMD + 3, 1, 0, RW)  # 2M split, running
    assert ref.counters()["DIRECT_MAP_LEVEL2_SPLIT"] == 1
    ref.change_page_attr_set_clr(GIB1 + 3, 1, 0, RW)  # 1G + 2M split, running
    c = ref.counters()
    assert (c["DIRECT_MAP_LEVEL2_SPLIT"], c["DIRECT_MAP_LEVEL3_SPLIT"]) == (2, 1)
    assert c["NR_DIRECT_1G"] == d0["NR_DIRECT_1G"] - 1


def test_faults():
    # RAM [0, 1 GiB) minus a 2M..4M hole: the hole is pmd_none below max_pfn_mapped
    m = Machine(e820=[(0, 0x9FC00, RAM), (0x9FC00, 0x100000, RESERVED), (0x100000, 2 * MiB, RAM),
                      (4 * MiB, 1 * GiB, RAM)], gbpages=True)
    ref = boot(m)
    hole = (2 * MiB) >> 12
    assert ref.lookup_address(hole) is None
    c0 = ref.counters()
    # a primary call across the hole skips it page by page and goes on
    assert ref.change_page_attr_set_clr(hole - 1, 514, 0, RW) == 0
    c = ref.counters()
    assert c["NR_CPA_FAULTS"] == c0["NR_CPA_FAULTS"] + 512 and c["NR_CPA_EFAULT"] == 0
    assert ref.leaves_by_key[(C.PG_LEVEL_4K, hole + PMD)] == PK & ~RW
    # the high map slot has nothing mapped without a kernel: -EFAULT for a primary call
    hv = ref.highmap_vpfn
    assert ref.change_page_attr_set_clr(hv + 5, 3, 0, RW) == -EFAULT
    assert ref.counters()["NR_CPA_EFAULT"] == 1
    # ... and a skipped page each for a non-primary (alias) call
    assert ref.change_page_attr_set_clr(hv + 5, 3, 0, RW, primary=False) == 0
    assert ref.counters()["NR_CPA_FAULTS"] == c0["NR_CPA_FAULTS"] + 512 + 1 + 3


def test_static_protections_on_the_high_map(m4g):
    m = Machine(e820=m4g.e820, gbpages=True, kernel=kernel_at(64 * MiB))
    ref = boot(m)
    k = ref.kernel
    text_pmd = k.text_vpfn  # 2M-aligned: a 2M leaf of the high map
    assert ref.leaves_by_key[(C.PG_LEVEL_2M, text_pmd)] == C.PAGE_KERNEL_LARGE_EXEC
    # set_memory_nx over a whole text leaf: NX is forbidden there, so it splits
    # and every text page keeps executing
    assert ref.change_page_attr_set_clr(text_pmd, PMD, NX, 0) == 0
    assert (C.PG_LEVEL_2M, text_pmd) not in ref.leaves_by_key
    assert all(not ref.leaves_by_key[(C.PG_LEVEL_4K, text_pmd + j)] & NX for j in range(512))
    # the last text leaf: pages after _etext take NX
    last = k.etext_last_vpfn - k.etext_last_vpfn % PMD
    assert ref.change_page_attr_set_clr(last, PMD, NX, 0) == 0
    assert not ref.leaves_by_key[(C.PG_LEVEL_4K, k.etext_last_vpfn)] & NX
    assert ref.leaves_by_key[(C.PG_LEVEL_4K, k.etext_last_vpfn + 1)] & NX
    # once kernel_set_to_readonly, RW cannot come back on rodata pfns (direct map alias)
    ref.kernel_set_to_readonly()
    ro = k.rodata_spfn + 600  # rodata is 3 MiB from a 2M boundary: this block is half rodata
    assert ref.change_page_attr_set_clr(ro, 1, 0, NX) == 0  # 2M leaf still RW: force_static_prot
    assert ref.leaves_by_key[(C.PG_LEVEL_4K, ro)] == PK & ~(NX | RW)
    assert ref.leaves_by_key[(C.PG_LEVEL_4K, k.rodata_epfn)] == PK & ~RW  # fixed by the split
    assert ref.leaves_by_key[(C.PG_LEVEL_4K, k.rodata_epfn + 1)] == PK  # after rodata
    assert ref.change_page_attr_set_clr(ro, 1, RW, 0) == 0
    assert not ref.leaves_by_key[(C.PG_LEVEL_4K, ro)] & RW
    ref.check_invariants()


def test_pud_split_cannot_fix_static_protections(m4g):
    """A 1G direct-map leaf holding rodata pfns is still RW after
    kernel_set_to_readonly (no alias call cleared it): the sanity check in
    __should_split_large_page() splits it with force_static_prot, but
    split_set_pte() only warns for PUD splits, so the 2M children over rodata
    stay RW (they split and get fixed when touched themselves)."""
    m = Machine(e820=m4g.e820, gbpages=True, kernel=kernel_at(GiB + 512 * MiB))
    ref = boot(m)
    k = ref.kernel
    ref.kernel_set_to_readonly()
    assert ref.change_page_attr_set_clr(GIB1 + 5, 1, 0, NX) == 0  # far from rodata
    leaves = ref.leaves_by_key
    ro_block = k.rodata_spfn - k.rodata_spfn % PMD
    assert leaves[(C.PG_LEVEL_2M, ro_block)] == PK_LARGE  # RW kept: PUD split not fixed up
    assert leaves[(C.PG_LEVEL_4K, GIB1 + 5)] == PK & ~NX  # the request itself
    assert leaves[(C.PG_LEVEL_4K, GIB1 + 6)] == PK
    # touching the rodata 2M child: same sanity check, now a PMD split that fixes RW
    assert ref.change_page_attr_set_clr(ro_block + 1, 1, RW, 0) == 0
    assert all(leaves[(C.PG_LEVEL_4K, ro_block + j)] == PK & ~RW for j in range(PMD))
    ref.check_invariants()


def test_high_map_split_past_ram_is_not_counted():
    """The high map's last 2M leaf reaches past the end of RAM: a split at an
    address whose pfn is not in pfn_mapped[] leaves direct_pages_count alone."""
    # _text at 1G - 18M, _end at 1G + 2.5M, RAM ends at 1G + 3M: the last leaf
    # maps [1G + 2M, 1G + 4M), half of it past RAM
    m = Machine(e820=[(0, 0x9FC00, RAM), (0x9FC00, 0x100000, RESERVED), (0x100000, GiB + 3 * MiB, RAM)],
                gbpages=True, kernel=kernel_at(GiB - 18 * MiB, data_size=8 * MiB + 512 * KiB))
    ref = boot(m)
    phys_base = m.kernel.phys_base
    vpfn_of = lambda pa: ref.highmap_vpfn + ((pa - phys_base) >> 12)  # noqa: E731
    last_leaf = vpfn_of(GiB + 2 * MiB)
    assert ref.leaves_by_key[(C.PG_LEVEL_2M, last_leaf)] == C.PAGE_KERNEL_LARGE_EXEC
    c0 = ref.counters()
    assert ref.change_page_attr_set_clr(vpfn_of(GiB + 3 * MiB + 8 * KiB), 1, NX, 0) == 0
    c1 = ref.counters()
    assert (C.PG_LEVEL_2M, last_leaf) not in ref.leaves_by_key  # split ...
    assert c1["NR_DIRECT_2M"] == c0["NR_DIRECT_2M"] and c1["NR_DIRECT_4K"] == c0["NR_DIRECT_4K"]
    assert c1["NR_PTE_TABLES"] == c0["NR_PTE_TABLES"] + 1  # ... but not counted
    # the leaf before it is inside RAM: its split counts
    assert ref.change_page_attr_set_clr(vpfn_of(GiB + 8 * KiB), 1, NX, 0) == 0
    c2 = ref.counters()
    assert c2["NR_DIRECT_2M"] == c1["NR_DIRECT_2M"] - 1
    assert c2["NR_DIRECT_4K"] == c1["NR_DIRECT_4K"] + 512
    run_both(m, [("cpa", vpfn_of(GiB + 3 * MiB + 8 * KiB), 1, NX, 0, True, False),
                 ("cpa", vpfn_of(GiB + 8 * KiB), 1, NX, 0, True, False)])


HAND_WORKED = [
    [("cpa", GIB1 + 5, 1, 0, RW, True, False)],
    [("cpa", GIB1 + 5, 700, RW, 0, True, False), ("cpa", 7 * PMD, PMD, 0, RW, True, False),
     ("cpa", 2 * PUD, PUD, 0, NX, True, False)],
    [("cpa", 3 * PUD + 1000, 1, 0, 0, True, True)],
    [("cpa", 10, 1, 0, PRESENT, True, False), ("cpa", 2 * PMD, PMD, 0, PRESENT, True, False),
     ("cpa", 2 * PMD, PMD, PRESENT, 0, True, False), ("cpa", GIB1, PUD, 0, PRESENT, True, False),
     ("cpa", GIB1 + 3 * PMD, 1, 0, NX, True, False)],
    # the BIOS range 640K-1M: protect_pci_bios() is X86_32-only, NX may be set
    [("cpa", 150, 200, NX, 0, True, False), ("cpa", 150, 200, 0, NX, True, False)],
    [("cpa", 3 * PMD + 3, 1, 0, RW, True, False), ("running",),
     ("cpa", 4 * PMD + 3, 1, 0, RW, True, False), ("cpa", GIB1 + 3, 1, 0, RW, True, False)],
]


def test_hand_worked_pud_static_case_agrees_with_core(m4g):
    m = Machine(e820=m4g.e820, gbpages=True, kernel=kernel_at(GiB + 512 * MiB))
    ro_block = boot(m).kernel.rodata_spfn // PMD * PMD
    run_both(m, [("ro",), ("cpa", GIB1 + 5, 1, 0, NX, True, False),
                 ("cpa", ro_block + 1, 1, RW, 0, True, False)])


@pytest.mark.parametrize("ops", HAND_WORKED)
def test_hand_worked_cases_agree_with_core(m4g, ops):
    run_both(m4g, ops)


def test_hand_worked_kernel_case_agrees_with_core(m4g):
    m = Machine(e820=m4g.e820, gbpages=True, kernel=kernel_at(64 * MiB))
    k = boot(m).kernel
    last = k.etext_last_vpfn - k.etext_last_vpfn % PMD
    run_both(m, [("cpa", k.text_vpfn, PMD, NX, 0, True, False),
                 ("cpa", last, PMD, NX, 0, True, False), ("ro",),
                 ("cpa", k.rodata_spfn + 600, 1, 0, NX, True, False),
                 ("cpa", k.rodata_spfn + 600, 1, RW, 0, True, False)])


# --- part 2: random machines, random call sequences ---------------------------------------

MASKS = [RW, NX, PRESENT, PRESENT | RW, GLOBAL, 0]



def _point(lo: int, hi: int):
    """A range bound in [lo, hi]: 4K-aligned, unaligned, 2M- or 1G-aligned."""
    return st.one_of(
        st.integers(-(-lo // 4096), hi // 4096).map(lambda p: p * 4096),
        st.integers(lo, hi),
        st.integers(-(-lo >> 21), hi >> 21).map(lambda p: p << 21),
        st.integers(-(-lo >> 30), hi >> 30).map(lambda p: p << 30),
    )


@st.composite
def machines(draw) -> Machine:
    gbpages = draw(st.booleans())
    limit = 3 * GiB if gbpages else 4 * GiB
    e820: list[tuple[int, int, int]] = []
    shape = draw(st.sampled_from(["ranges", "ranges", "big", "big", "from0"]))
    if shape == "ranges":  # 1-3 RAM ranges with random bounds, typed gaps
        lo = 0
        if draw(st.booleans()):  # a PC-like low end: RAM to 639 KiB, then the BIOS hole
            e820 += [(0, 0x9FC00, RAM), (0x9FC00, 0x100000, RESERVED)]
            lo = 0x100000
        n = draw(st.integers(1, 3))
        pts = sorted(draw(st.lists(_point(lo, limit), min_size=2 * n, max_size=2 * n, unique=True)))
        prev_end = lo
        for i in range(n):
            s, e = pts[2 * i], pts[2 * i + 1]
            gap_type = draw(st.sampled_from([None, None, RESERVED, ACPI]))
            if gap_type is not None and s > prev_end:
                e820.append((prev_end, s, gap_type))
            e820.append((s, e, RAM))
            prev_end = e
    else:  # one big range, so whole GiBs (1G leaves) are common
        end = draw(st.one_of(st.integers(1, limit >> 30).map(lambda g: g << 30),
                             _point(64 * MiB, limit)))
        if shape == "big":  # a PC: the BIOS hole, then RAM from 1 MiB
            e820 += [(0, 0x9FC00, RAM), (0x9FC00, 0x100000, RESERVED), (0x100000, end, RAM)]
        else:  # RAM from 0: the ISA range itself may be mapped 2M or 1G
            e820 += [(0, end, RAM)]
    assume(any(t == RAM and (e >> 12) - ((s + 4095) >> 12) >= 2 for s, e, t in e820))
    ram = Machine(e820=e820).ram_ranges()

    kernel, reserved = None, []
    if draw(st.integers(0, 2)) != 0:
        text_off = draw(st.integers(1, 32)) << 21  # _text - __START_KERNEL_map, 2M-aligned
        text_size = draw(st.integers(256, 3000)) * 4096 + draw(st.integers(0, 4095))
        rodata_size = draw(st.integers(64, 1500)) * 4096
        data_size = draw(st.integers(1, 2500)) * 4096 + draw(st.integers(0, 4095))
        text = C.START_KERNEL_MAP + text_off
        etext = text + text_size
        start_rodata = _round_up(etext, 2 * MiB)
        end_rodata = start_rodata + rodata_size
        hpage = _round_up(end_rodata, 2 * MiB)
        end = hpage + data_size
        slots = []  # (first, last) 2M-aligned physical _text candidates per RAM range
        for s, e in ram:
            first = _round_up(max(s, text_off, 16 * MiB), 2 * MiB)
            # _end within RAM; the high map's last 2M leaf may reach past it
            last = (e - (end - text)) // (2 * MiB) * (2 * MiB)
            if first <= last:
                slots.append((first, last))
        if slots:
            first, last = draw(st.sampled_from(slots))
            # often as high as it fits: the high map's last 2M leaf may then
            # reach past RAM, where splits are not counted (pfn_range_is_mapped)
            phys_text = draw(st.one_of(st.just(last >> 21),
                                       st.integers(first >> 21, last >> 21))) << 21
            kernel = KernelImage(text=text, etext=etext, start_rodata=start_rodata,
                                 end_rodata=end_rodata, end_rodata_hpage_align=hpage, end=end,
                                 phys_base=phys_text - text_off)
            reserved = [(phys_text, phys_text + (end - text))]
    return Machine(e820=e820, gbpages=gbpages, kernel=kernel, reserved=reserved)


@st.composite
def scenarios(draw):
    machine = draw(machines())
    state = init_mem_mapping(machine)
    nr_1g = int((state.pud_state == ENTRY_LEAF).sum())
    assume(nr_1g <= 2)
    hv = int(state.params[P_HIGHMAP_VPFN])
    ram = [((s + 4095) >> 12, e >> 12) for s, e in machine.ram_ranges() if (e >> 12) > ((s + 4095) >> 12)]
    k = machine.kernel
    if k is not None:
        image = (hv + ((k.text - C.START_KERNEL_MAP) >> 12), hv + ((k.end - C.START_KERNEL_MAP) >> 12))
    # a GiB slot is worth a whole-1G call only when 7/8 of it is mapped (a call
    # over a big hole walks it page by page, slowly in the reference)
    mapped = {}
    for lv, base, _ in core_leaves(state):
        mapped[base // PUD] = mapped.get(base // PUD, 0) + {1: 1, 2: PMD, 3: PUD}[lv]
    full_gib = {g for g, n in mapped.items() if n >= PUD - PUD // 8 and g < hv // PUD}
    where = ["ram", "ram", "ram", "direct", "again", "again"]
    if k is not None:
        where += ["high", "high", "high", "kernel_ro_pfns", "kernel_ro_pfns"]
    shapes = ["small"] * 4 + ["mid"] * 3 + ["2M"] * 2 + ["1G"] * 2

    ops, vpfns = [], []
    for _ in range(draw(st.integers(1, 40))):
        w = draw(st.sampled_from(where))
        if w == "again" and vpfns:  # near an address used before: re-split, same-prot paths
            vpfn = max(0, draw(st.sampled_from(vpfns)) + draw(st.integers(-600, 600)))
            slot_end = hv if vpfn < hv else hv + C.PUD_PAGES
            vpfn = min(vpfn, slot_end - 1)
        elif w == "high":
            lo, hi = max(hv, image[0] - 600), min(hv + C.PUD_PAGES - 1, image[1] + 600)
            vpfn, slot_end = draw(st.integers(lo, hi)), hv + C.PUD_PAGES
        elif w == "kernel_ro_pfns":  # the direct map alias of the image
            p0 = k.phys_base >> 12
            lo, hi = image[0] - hv + p0 - 600, image[1] - hv + p0 + 600
            vpfn, slot_end = draw(st.integers(max(0, lo), min(hv - 1, hi))), hv
        elif w == "ram":
            s, e = draw(st.sampled_from(ram))
            vpfn, slot_end = draw(st.integers(s, e - 1)), hv
        else:
            vpfn, slot_end = draw(st.integers(0, hv - 1)), hv
        shape = draw(st.sampled_from(shapes))
        if shape == "small":
            numpages = draw(st.integers(1, 16))
        elif shape == "mid":
            numpages = draw(st.integers(1, 2000))
        elif shape == "2M":
            vpfn -= vpfn % PMD
            numpages = PMD * draw(st.integers(1, 3))
        elif full_gib:  # a whole, mostly mapped GiB of the direct map
            vpfn = draw(st.sampled_from(sorted(full_gib))) * PUD
            numpages, slot_end = PUD, hv
        else:
            numpages = draw(st.integers(1, 2000))
        force_split = draw(st.integers(0, 9)) == 0
        if force_split:
            numpages = min(numpages, 2000)
        numpages = max(1, min(numpages, slot_end - vpfn))
        mask_set, mask_clr = draw(st.sampled_from(MASKS)), draw(st.sampled_from(MASKS))
        primary = draw(st.booleans())
        ops.append(("cpa", vpfn, numpages, mask_set, mask_clr, primary, force_split))
        vpfns.append(vpfn)
    for ev in ("running", "ro"):
        if draw(st.booleans()):
            ops.insert(draw(st.integers(0, len(ops))), (ev,))
    return machine, ops


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large])
@given(scenarios())
def test_core_agrees_with_reference(scenario):
    machine, ops = scenario
    note(f"machine: {machine}")
    note(f"ops: {ops}")
    run_both(machine, ops)


def test_pfn0_pte_none_after_np(m4g):
    """set_memory_x + set_memory_ro + set_memory_np on pfn 0 leave its pte at
    0x60 (DIRTY|ACCESSED, pfn 0): pte_none() in the kernel, so the next call on
    it goes to __cpa_process_fault() (a hole below max_pfn_mapped: skipped)."""
    ops = [("cpa", 0, 1, 0, NX | RW, True, False), ("cpa", 0, 1, 0, PRESENT, True, False),
           ("cpa", 0, 1, RW, 0, True, False)]
    ref = boot(m4g)
    faults = ref.counters()["NR_CPA_FAULTS"]
    for op in ops:
        apply_op(ref, op)
    assert ref.leaves_by_key[(C.PG_LEVEL_4K, 0)] == C._PAGE_DIRTY | C._PAGE_ACCESSED
    assert ref.counters()["NR_CPA_FAULTS"] == faults + 1
    run_both(m4g, ops)


def _pfn0_large_case(ram_end: int):
    """RAM from 0 (no BIOS hole) maps pfn 0 with a 2M or 1G leaf. Clearing
    NX|RW and then PRESENT over the whole leaf rewrites it in place to 0x60:
    pmd_none()/pud_none(), so lookup_address() returns NULL and the next call
    faults (skips the page) instead of splitting the leaf."""
    m = Machine(e820=[(0, ram_end, RAM)], gbpages=True)
    level = next(lv for lv, base, _ in boot(m).leaves() if base == 0)
    n = {C.PG_LEVEL_2M: PMD, C.PG_LEVEL_1G: PUD}[level]
    ops = [("cpa", 0, n, 0, NX | RW, True, False), ("cpa", 0, n, 0, PRESENT, True, False),
           ("cpa", 0, 1, RW, 0, True, False)]
    return m, level, ops


@pytest.mark.parametrize("ram_end", [28 * MiB, 2 * GiB])
def test_pfn0_large_leaf_none_after_np(ram_end):
    m, level, ops = _pfn0_large_case(ram_end)
    assert level == (C.PG_LEVEL_2M if ram_end < GiB else C.PG_LEVEL_1G)
    ref = boot(m)
    c0 = ref.counters()
    for op in ops:
        apply_op(ref, op)
    assert ref.leaves_by_key[(level, 0)] == C._PAGE_DIRTY | C._PAGE_ACCESSED  # not split
    assert ref.counters()["NR_PTE_TABLES"] == c0["NR_PTE_TABLES"]
    assert ref.counters()["NR_CPA_FAULTS"] == c0["NR_CPA_FAULTS"] + 1


@pytest.mark.parametrize("ram_end", [28 * MiB, 2 * GiB])
def test_pfn0_large_leaf_none_agrees_with_core(ram_end):
    m, _, ops = _pfn0_large_case(ram_end)
    run_both(m, ops)
