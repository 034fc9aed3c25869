"""The replay loop: events in, page-table state and counters out (numba)."""

from __future__ import annotations

from numba import njit

from . import constants as C
from . import state as S
from .cpa import ZERO, cpa_apply, pgprot_clear_protnone_bits

# Event kinds and CPA flags, mirrored from dmsim/trace/events.py (the core does
# not import the I/O side; tests/test_events.py pins that they agree).
EV_CPA = 1
EV_SYSTEM_RUNNING = 2
EV_KERNEL_RO = 3
EV_CHECKPOINT = 4
CPAF_PRIMARY = 1
CPAF_FORCE_SPLIT = 2
CPAF_COLLAPSE = 8


@njit(cache=True, error_model="numpy", inline="always")
def cpa_fast_4k(vpfn, numpages, mask_set, mask_clr, pud_state, pmd_state, pmd_table, pte,
                counters, params):
    """The common case of __change_page_attr_set_clr(), done without a call:
    every page already a present 4K pte of one pte table in the direct map,
    outside rodata (no static protection can apply), no force_split. Does
    exactly what the general path does for it; returns False to leave a call
    to the general path."""
    j = vpfn & 511
    if numpages > 512 - j or vpfn <= 0 or vpfn + numpages > params[S.P_HIGHMAP_VPFN]:
        return False  # (pfn 0 has its own pte_none() rule: general path)
    if not (vpfn > params[S.P_RODATA_EPFN] or vpfn + numpages - 1 < params[S.P_RODATA_SPFN]):
        return False  # protect_rodata() could apply
    if pud_state[vpfn >> 18] != S.ENTRY_TABLE or pmd_state[vpfn >> 9] != S.ENTRY_TABLE:
        return False
    row = pmd_table[vpfn >> 9]
    for k in range(j, j + numpages):
        if pte[row, k] == ZERO:
            return False  # a hole: __cpa_process_fault() is the general path's
    counters[C.NR_CPA_CALLS] += 1
    for k in range(j, j + numpages):
        new_prot = pgprot_clear_protnone_bits((pte[row, k] & ~mask_clr) | mask_set, params)
        if new_prot != pte[row, k]:  # __change_page_attr(): "Do we really change anything?"
            pte[row, k] = new_prot
            counters[C.NR_CPA_CHANGED] += 1  # cpa->flags |= CPA_FLUSHTLB
    return True


@njit(cache=True, error_model="numpy")
def replay_events(kind, arg0, arg1, mask_set, mask_clr, flags, start, stop,
                  pud_state, pud_prot, pmd_state, pmd_prot, pmd_table, pte, nr_tables,
                  counters, params, pfn_mapped, snapshots):
    """Apply events[start:stop]. Returns the index it stopped at: stop when
    done, earlier when the pte pool cannot hold the next call's worst case."""
    # merging checks every pte write: the fast path is for policies that do not
    fast = params[S.P_MERGE_POLICY] != S.MERGE_CPA
    for i in range(start, stop):
        k = kind[i]
        if k == EV_CPA:
            numpages = arg1[i]
            f = flags[i]
            if (fast and (mask_set[i] != ZERO or mask_clr[i] != ZERO)
                    and (f & (CPAF_FORCE_SPLIT | CPAF_COLLAPSE)) == 0
                    and cpa_fast_4k(arg0[i], numpages, mask_set[i], mask_clr[i], pud_state,
                                    pmd_state, pmd_table, pte, counters, params)):
                continue
            # worst case: every 2M leaf covered splits (set_memory_4k), plus both ends
            if nr_tables[0] + (numpages >> 9) + 3 > pte.shape[0]:
                return i
            cpa_apply(arg0[i], numpages, mask_set[i], mask_clr[i], f, pud_state, pud_prot,
                      pmd_state, pmd_prot, pmd_table, pte, nr_tables, counters, params,
                      pfn_mapped)
        elif k == EV_SYSTEM_RUNNING:
            counters[C.SYSTEM_RUNNING] = 1
        elif k == EV_KERNEL_RO:
            counters[C.KERNEL_SET_TO_READONLY] = 1
        elif k == EV_CHECKPOINT:
            snapshots[arg0[i], :] = counters
        # EV_ALLOC / EV_FREE: recorded placement does not move pages
    return stop
