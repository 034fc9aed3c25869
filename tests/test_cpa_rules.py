"""The CPA rules of the numba core, one hand-worked case per rule."""

from __future__ import annotations

from dmsim.core import constants as C
from dmsim.core.state import ENTRY_LEAF, ENTRY_TABLE
from tests.helpers import NX, RW, GiB, P, counts, qemu_machine, run_calls

G = GiB >> 12  # pages in 1G
BOOT_4G = (989, 1022, 4)


def test_4k_change_inside_1g_leaf_cascades():
    # __should_split_large_page(): partial 1G -> split to 2M, retry; partial 2M -> split
    st = run_calls(qemu_machine(4), ["running", (G + 5, 1, 0, RW)])
    assert counts(st) == (989 + 512, 1022 + 512 - 1, 3, 1, 1)
    assert st.pud_state[1] == ENTRY_TABLE and st.pmd_state[512] == ENTRY_TABLE


def test_same_protection_keeps_the_leaf():
    st = run_calls(qemu_machine(4), ["running", (G + 5, 1, RW, 0)])  # already RW
    assert counts(st) == (*BOOT_4G, 0, 0)
    assert st.pud_state[1] == ENTRY_LEAF


def test_full_aligned_leaf_is_rewritten_in_place():
    st = run_calls(qemu_machine(4), ["running", (G, G, 0, RW)])
    assert counts(st) == (*BOOT_4G, 0, 0)
    assert st.pud_prot[1] & RW == 0 and st.pud_prot[1] & C._PAGE_PSE


def test_full_2m_leaf_rewritten_partial_split():
    m = qemu_machine(2)
    st = run_calls(m, ["running", (512, 512, 0, RW), (1024, 511, 0, RW)])
    assert counts(st)[3] == 1  # the second call leaves one page out: split
    assert st.pmd_state[1] == ENTRY_LEAF and st.pmd_prot[1] & RW == 0


def test_set_memory_4k_forces_a_split_without_changing_protections():
    st = run_calls(qemu_machine(2), ["running", (512, 512, 0, 0, True, True)])
    assert counts(st)[3] == 1
    row = st.pmd_table[1]
    assert (st.pte[row] == C.PAGE_KERNEL).all()


def test_no_change_is_no_call():
    st = run_calls(qemu_machine(2), ["running", (512, 1, 0, 0)])
    assert st.counters[C.NR_CPA_CALLS] == 0


def test_not_present_drops_global():
    st = run_calls(qemu_machine(2), [(600, 1, 0, P | RW), (600, 1, P | RW, 0)])
    row = st.pmd_table[1]
    # pgprot_clear_protnone_bits(): invalid then default leaves _PAGE_GLOBAL off
    assert st.pte[row, 600 - 512] == C.PAGE_KERNEL & ~C._PAGE_GLOBAL
    assert st.pte[row, 601 - 512] == C.PAGE_KERNEL


def test_vmstat_counts_only_once_running():
    st = run_calls(qemu_machine(2), [(600, 1, 0, RW), "running", (2000, 1, 0, RW)])
    four_k, two_m, _, l2, _ = counts(st)
    assert (l2, two_m) == (1, 1022 - 2)


def test_direct_map_hole_is_skipped_past_end_is_efault():
    m = qemu_machine(2)
    st = run_calls(m, [(0x7FFDD, 4, 0, RW), (0x7FFDD, 4, 0, RW, False)])
    assert st.counters[C.NR_CPA_EFAULT] == 1  # primary past max_pfn_mapped
    assert st.counters[C.NR_CPA_FAULTS] == 1 + 4  # the alias call skips every page


def test_nx_only_call_split_counts():
    st = run_calls(qemu_machine(2), ["running", (700, 3, NX, 0, False)])
    assert counts(st)[3] == 0  # the direct map is NX already: same protection
    st = run_calls(qemu_machine(2), ["running", (700, 3, 0, NX, False)])
    assert counts(st)[3] == 1


def test_fast_4k_path_counts_changed_entries_like_the_general_path():
    """replay.py's cpa_fast_4k() is __change_page_attr_set_clr()'s 4K case inline: it must
    count the entries it changes (NR_CPA_CHANGED: what sets CPA_FLUSHTLB, and what
    rox_collapse's collapse waits for) as cpa.py's 4K step does."""
    import numpy as np

    from dmsim.core.cpa import cpa_apply
    from dmsim.core.replay import CPAF_PRIMARY, cpa_fast_4k

    m = qemu_machine(2)
    # set_memory_4k() on [512, 1024), then pages 512..515 read-only: all on one pte table
    before = ["running", (512, 512, 0, 0, True, True), (512, 4, 0, RW)]
    call = (512, 8, 0, RW)  # 4 of its 8 pages are read-only already
    st = run_calls(m, before)
    assert st.counters[C.NR_CPA_CHANGED] == 4
    fast = run_calls(m, before)
    general = run_calls(m, before)
    u = np.uint64
    assert cpa_fast_4k(call[0], call[1], u(call[2]), u(call[3]), fast.pud_state, fast.pmd_state,
                       fast.pmd_table, fast.pte, fast.counters, fast.params)
    cpa_apply(call[0], call[1], u(call[2]), u(call[3]), CPAF_PRIMARY, general.pud_state,
              general.pud_prot, general.pmd_state, general.pmd_prot, general.pmd_table,
              general.pte, general.nr_tables, general.counters, general.params,
              general.pfn_mapped)
    assert general.counters[C.NR_CPA_CHANGED] == 4 + 4  # by hand: pages 516..519 change
    assert fast.counters.tolist() == general.counters.tolist()
    assert (fast.pte == general.pte).all()
    # and the replay loop, which takes the fast path for this call, counts the same
    assert run_calls(m, [*before, call]).counters.tolist() == general.counters.tolist()
