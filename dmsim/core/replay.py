"""The replay loop: events in, page-table state and counters out (numba)."""

from __future__ import annotations

from numba import njit

from . import constants as C
from .cpa import change_page_attr_set_clr

# Event kinds and CPA flags, mirrored from dmsim/trace/events.py (the core does
# not import the I/O side; tests/test_events.py pins that they agree).
EV_CPA = 1
EV_SYSTEM_RUNNING = 2
EV_KERNEL_RO = 3
EV_CHECKPOINT = 4
CPAF_PRIMARY = 1
CPAF_FORCE_SPLIT = 2


@njit(cache=True, error_model="numpy")
def replay_events(kind, arg0, arg1, mask_set, mask_clr, flags, start, stop,
                  pud_state, pud_prot, pmd_state, pmd_prot, pmd_table, pte, nr_tables,
                  counters, params, pfn_mapped, snapshots):
    """Apply events[start:stop]. Returns the index it stopped at: stop when
    done, earlier when the pte pool cannot hold the next call's worst case."""
    for i in range(start, stop):
        k = kind[i]
        if k == EV_CPA:
            numpages = arg1[i]
            # worst case: every 2M leaf covered splits (set_memory_4k), plus both ends
            if nr_tables[0] + (numpages >> 9) + 3 > pte.shape[0]:
                return i
            change_page_attr_set_clr(arg0[i], numpages, mask_set[i], mask_clr[i],
                                     (flags[i] & CPAF_PRIMARY) != 0,
                                     (flags[i] & CPAF_FORCE_SPLIT) != 0,
                                     pud_state, pud_prot, pmd_state, pmd_prot, pmd_table, pte,
                                     nr_tables, counters, params, pfn_mapped)
        elif k == EV_SYSTEM_RUNNING:
            counters[C.SYSTEM_RUNNING] = 1
        elif k == EV_KERNEL_RO:
            counters[C.KERNEL_SET_TO_READONLY] = 1
        elif k == EV_CHECKPOINT:
            snapshots[arg0[i], :] = counters
        # EV_ALLOC / EV_FREE: recorded placement does not move pages
    return stop
