"""Drive the numba replay in chunks: grows the pte pool, reports progress."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .constants import NR_COUNTERS
from .replay import replay_events
from .state import DirectMapState

CHUNK = 1 << 18


def replay(st: DirectMapState, columns: tuple[np.ndarray, ...], nr_snapshots: int,
           progress: Callable[[int, int], None] | None = None,
           chunk: int = CHUNK) -> np.ndarray:
    """Replay the event columns on st in place; returns the checkpoint snapshots
    (int64[nr_snapshots, NR_COUNTERS]). progress(done, total) after each chunk."""
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
          progress: Callable[[int, int], None] | None = None, chunk: int = CHUNK) -> np.ndarray:
    """Replay with simulated placement (core/placement.py): the allocator
    (`buddy`, a BuddyState) places every allocation named by handle."""
    from .placement import place_events

    kind, arg0, arg1, mask_set, mask_clr, flags = columns
    total = int(kind.shape[0])
    snapshots = np.zeros((max(nr_snapshots, 1), NR_COUNTERS), np.int64)
    h_kind = np.zeros(max(nr_handles, 1), np.int8)
    h_base = np.zeros(max(nr_handles, 1), np.int64)
    h_len = np.zeros(max(nr_handles, 1), np.int64)
    pool = np.full(max(vmalloc_pages, 1), -1, np.int64)
    pool_used = np.zeros(1, np.int64)
    i = 0
    while i < total:
        stop = min(total, i + chunk)
        dm = (st.pud_state, st.pud_prot, st.pmd_state, st.pmd_prot, st.pmd_table, st.pte,
              st.nr_tables, st.counters, st.params, st.pfn_mapped)
        i = place_events(kind, arg0, arg1, mask_set, mask_clr, flags, i, stop, dm,
                         buddy.arrays(), h_kind, h_base, h_len, pool, pool_used, snapshots)
        if i < stop:  # the pte pool is too small for event i's worst case
            st.ensure_tables(int(h_len.max()) + int(arg1[i] & 0xFFFFFFFF) + 3 + st.pte.shape[0])
        if progress is not None:
            progress(i, total)
    return snapshots[:nr_snapshots]
