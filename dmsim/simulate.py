"""Glue between a parsed trace and the core: boot the machine, replay, collect."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .core import constants as C
from .core.api import replay
from .core.layout import init_mem_mapping
from .core.state import DirectMapState
from .trace.events import EV_H_ALLOC, EV_H_CPA, EV_H_FREE, EV_H_VFREE, EV_H_VMALLOC, Trace

HANDLE_EVENTS = (EV_H_ALLOC, EV_H_FREE, EV_H_VMALLOC, EV_H_VFREE, EV_H_CPA)


@dataclass
class Replayed:
    trace: Trace
    boot: np.ndarray  # counters right after init_mem_mapping()
    state: DirectMapState
    snapshots: np.ndarray  # int64[len(checkpoints), NR_COUNTERS]
    buddy: object = None  # core.buddy.BuddyState with simulated placement
    shadow: tuple | None = None  # --placement shadow: core.api.shadow_arrays(), filled

    @property
    def counters(self) -> np.ndarray:
        return self.state.counters


def names_allocations_by_handle(trace: Trace) -> bool:
    """Simulated placement: the trace leaves placement to the allocator."""
    return bool(np.isin(trace.events.kind, HANDLE_EVENTS).any())


class PolicyNeedsPlacement(ValueError):
    """An allocation policy on a trace whose pages stay where they were recorded."""


def simulate(trace: Trace, progress: Callable[[int, int], None] | None = None,
             policy=None) -> Replayed:
    """Recorded placement, or simulated placement when the trace names
    allocations by handle (then `buddy` holds the allocator's final state).
    `policy` (dmsim.policy.Policy, None for baseline) picks the allocation and
    merge policies; an allocation policy needs simulated placement."""
    st = init_mem_mapping(trace.machine)
    boot = st.counters.copy()
    by_handle = names_allocations_by_handle(trace)
    if policy is not None and policy.alloc != "baseline" and not by_handle:
        raise PolicyNeedsPlacement(
            f"allocation policy {policy.alloc!r} decides where pages go: it needs simulated "
            "placement (--placement simulate), and this trace has its pages where they were "
            "recorded")
    if by_handle:
        return _place(trace, st, boot, progress, policy, None)
    snaps = replay(st, trace.events.columns(), len(trace.checkpoints), progress, policy=policy)
    return Replayed(trace, boot, st, snaps)


def shadow(trace: Trace, progress: Callable[[int, int], None] | None = None) -> Replayed:
    """Shadow placement of a recorded trace already turned into handles
    (trace/retarget.py): the baseline allocator guesses each allocation, the
    kernel's pfn is taken (core/shadow.py). Counters follow the kernel's
    placement wherever the model's free lists allow it."""
    from .core.api import shadow_arrays
    from .trace.events import H_PT_PAGE, H_RECORDED

    ev = trace.events
    allocs = (ev.kind == EV_H_ALLOC) & ((ev.flags & H_RECORDED) != 0) & \
        ((ev.flags & H_PT_PAGE) == 0)
    pool = trace.vmalloc_pfns if trace.vmalloc_pfns is not None else np.zeros(0, np.int64)
    sh = shadow_arrays(int(allocs.sum()) + len(pool), pool)
    st = init_mem_mapping(trace.machine)
    return _place(trace, st, st.counters.copy(), progress, None, sh)


def _place(trace: Trace, st, boot, progress, policy, sh) -> Replayed:
    """Simulated placement of a trace by handle on the booted direct map st."""
    from .core.api import place
    from .core.buddy import buddy_from_machine

    buddy = buddy_from_machine(trace.machine)
    snaps = place(st, buddy, trace.events.columns(), len(trace.checkpoints),
                  int(trace.meta.get("handles", 0)), int(trace.meta.get("vmalloc_pages", 0)),
                  progress, policy=policy, sh=sh)
    return Replayed(trace, boot, st, snaps, buddy, sh)


def counter_value(counters: np.ndarray, name: str) -> int:
    """A checkpoint counter as the kernel prints it (vmstat events, meminfo kB)."""
    if name == "direct_map_level2_splits":
        return int(counters[C.DIRECT_MAP_LEVEL2_SPLIT])
    if name == "direct_map_level3_splits":
        return int(counters[C.DIRECT_MAP_LEVEL3_SPLIT])
    if name == "DirectMap4k":
        return int(counters[C.NR_DIRECT_4K]) << 2
    if name == "DirectMap2M":
        return int(counters[C.NR_DIRECT_2M]) << 11
    if name == "DirectMap1G":
        return int(counters[C.NR_DIRECT_1G]) << 20
    if name in _EVENT_COUNTERS:
        return int(counters[_EVENT_COUNTERS[name]])
    raise KeyError(name)


# Merge policies' vmstat events (docs/design-policies.md) and page-table pages.
_EVENT_COUNTERS = {
    "direct_map_level1_merges": C.DIRECT_MAP_LEVEL1_MERGE,
    "direct_map_level2_merges": C.DIRECT_MAP_LEVEL2_MERGE,
    "direct_map_level2_collapses": C.DIRECT_MAP_LEVEL2_COLLAPSE,
    "direct_map_level3_collapses": C.DIRECT_MAP_LEVEL3_COLLAPSE,
    "nr_pte_tables": C.NR_PTE_TABLES,  # page-table pages split_large_page() allocated
}

REPORT_COUNTERS = (
    "direct_map_level2_splits", "direct_map_level3_splits",
    "direct_map_level1_merges", "direct_map_level2_merges",
    "direct_map_level2_collapses", "direct_map_level3_collapses",
    "DirectMap4k", "DirectMap2M", "DirectMap1G",
    "nr_pte_tables",
)
"""The counters `dmsim diff` shows and `--fail-on` gates (all names counter_value knows)."""
