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
