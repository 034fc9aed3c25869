"""Drive the numba replay in chunks: grows the pte pool, reports progress."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .constants import NR_COUNTERS
from .replay import replay_events
from .state import P_MERGE_POLICY, P_PT_LOG, DirectMapState

CHUNK = 1 << 18


def replay(st: DirectMapState, columns: tuple[np.ndarray, ...], nr_snapshots: int,
           progress: Callable[[int, int], None] | None = None,
           chunk: int = CHUNK, policy=None) -> np.ndarray:
    """Replay the event columns on st in place; returns the checkpoint snapshots
    (int64[nr_snapshots, NR_COUNTERS]). progress(done, total) after each chunk.
    Recorded placement: only `policy`'s merge policy can apply."""
    if policy is not None:
        set_policy(st, policy)
    kind, arg0, arg1, mask_set, mask_clr, flags = columns
    total = int(kind.shape[0])
    snapshots = np.zeros((max(nr_snapshots, 1), NR_COUNTERS), np.int64)
    i = 0
    while i < total:
        stop = min(total, i + chunk)
        i = replay_events(kind, arg0, arg1, mask_set, mask_clr, flags, i, stop,
                          st.pud_state, st.pud_prot, st.pmd_state, st.pmd_prot,
                          st.pmd_table, st.pte, st.nr_tables, st.counters, st.params,
                          st.pfn_mapped, snapshots)
        if i < stop:  # the pool is too small for event i's worst case
            st.ensure_tables(int(arg1[i] >> 9) + 3 + st.pte.shape[0])
        if progress is not None:
            progress(i, total)
    return snapshots[:nr_snapshots]


def place(st: DirectMapState, buddy, columns: tuple[np.ndarray, ...], nr_snapshots: int,
          nr_handles: int, vmalloc_pages: int,
          progress: Callable[[int, int], None] | None = None, chunk: int = CHUNK,
          policy=None, sh: tuple | None = None) -> np.ndarray:
    """Replay with simulated placement (core/placement.py): the allocator
    (`buddy`, a BuddyState) places every allocation named by handle, under
    `policy` (a dmsim.policy.Policy; None is baseline). With `sh`
    (shadow_arrays()), baseline allocation is scored against the kernel's
    recorded pfns and follows them (core/shadow.py); the decisions land in sh."""
    from .buddy import PAGEBLOCK_ORDER, enable_migrate_unmapped
    from .placement import (
        ALLOC_BASELINE,
        ALLOC_MIGRATE_UNMAPPED,
        NR_POL,
        POL_ALIAS_NO_NX,
        POL_ALLOC,
        POL_UNMAPPED_MASK,
        event_need,
        place_events_hooked,
        place_events_plain,
        place_events_shadow,
    )

    kind, arg0, arg1, mask_set, mask_clr, flags = columns
    total = int(kind.shape[0])
    snapshots = np.zeros((max(nr_snapshots, 1), NR_COUNTERS), np.int64)
    h_kind = np.zeros(max(nr_handles, 1), np.int8)
    h_base = np.zeros(max(nr_handles, 1), np.int64)
    h_len = np.zeros(max(nr_handles, 1), np.int64)
    pool = np.full(max(vmalloc_pages, 1), -1, np.int64)
    pool_used = np.zeros(1, np.int64)
    pol = np.zeros(NR_POL, np.int64)
    nr_pfns = buddy.nr_pfns
    ucache_pfns = 1
    if policy is not None:
        set_policy(st, policy)
        pol[POL_ALLOC] = policy.alloc_code
        pol[POL_UNMAPPED_MASK] = policy.unmapped_mask
        pol[POL_ALIAS_NO_NX] = int(policy.alias_no_nx)
        if policy.alloc_code == ALLOC_MIGRATE_UNMAPPED:
            enable_migrate_unmapped(buddy, policy.collapse_free_pageblock)
        elif policy.alloc == "unmapped_alloc":
            ucache_pfns = nr_pfns
    # unmapped_alloc's cache: its own free lists over the pfns (placement.cache_*)
    uc = (np.full(ucache_pfns, -1, np.int32), np.full(ucache_pfns, -1, np.int32),
          np.full(ucache_pfns, -1, np.int8), np.full(16, -1, np.int64),
          np.zeros(max(ucache_pfns >> PAGEBLOCK_ORDER, 1), np.int8))
    st.params[P_PT_LOG] = 1  # page-table pages come from and go back to the allocator
    row_pfn = np.full(st.pte.shape[0], -1, np.int64)
    pud_pfn = np.full(st.pud_state.shape[0], -1, np.int64)
    # a policy with allocation hooks runs the loop compiled with them
    place_events = place_events_plain if pol[POL_ALLOC] == ALLOC_BASELINE else place_events_hooked
    if sh is not None:
        if pol[POL_ALLOC] != ALLOC_BASELINE:
            raise ValueError("shadow placement scores the baseline allocator only")
        place_events = place_events_shadow
    else:
        sh = shadow_arrays(0, np.zeros(1, np.int64))
    i = 0
    while i < total:
        stop = min(total, i + chunk)
        dm = (st.pud_state, st.pud_prot, st.pmd_state, st.pmd_prot, st.pmd_table, st.pte,
              st.nr_tables, st.counters, st.params, st.pfn_mapped)
        i = place_events(kind, arg0, arg1, mask_set, mask_clr, flags, i, stop, dm,
                         buddy.arrays(), h_kind, h_base, h_len, pool, pool_used, snapshots,
                         pol, row_pfn, pud_pfn, uc, sh)
        if i < stop:  # the pte pool or the page-table log is too small for event i
            need = int(event_need(kind[i], arg0[i], arg1[i], h_kind, h_len))
            st.ensure_tables(need + st.pte.shape[0])
            st.ensure_log(4 * need + 64)
            if row_pfn.shape[0] < st.pte.shape[0]:
                grown = np.full(st.pte.shape[0], -1, np.int64)
                grown[:row_pfn.shape[0]] = row_pfn
                row_pfn = grown
        if progress is not None:
            progress(i, total)
    st.params[P_PT_LOG] = 0
    return snapshots[:nr_snapshots]


def shadow_arrays(nr_decisions: int, rec_pool: np.ndarray) -> tuple:
    """The `sh` tuple of core/shadow.py for up to nr_decisions allocations."""
    from .shadow import D_EVENT, NF, NR_DIAG

    n = max(nr_decisions, 1)
    diag = np.zeros((NR_DIAG, NF), np.int64)
    diag[:, D_EVENT] = -1
    pool = rec_pool.astype(np.int64) if len(rec_pool) else np.full(1, -1, np.int64)
    return (pool, np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64),
            np.zeros(n, np.int64), np.zeros(1, np.int64), diag)


def set_policy(st: DirectMapState, policy) -> None:
    """The merge policy is a switch of the CPA core (state.P_MERGE_POLICY)."""
    st.params[P_MERGE_POLICY] = policy.merge_code
