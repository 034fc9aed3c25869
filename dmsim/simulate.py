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

    @property
    def counters(self) -> np.ndarray:
        return self.state.counters


def names_allocations_by_handle(trace: Trace) -> bool:
    """Simulated placement: the trace leaves placement to the allocator."""
    return bool(np.isin(trace.events.kind, HANDLE_EVENTS).any())


def simulate(trace: Trace, progress: Callable[[int, int], None] | None = None) -> Replayed:
    """Recorded placement, or simulated placement when the trace names
    allocations by handle (then `buddy` holds the allocator's final state)."""
    st = init_mem_mapping(trace.machine)
    boot = st.counters.copy()
    if names_allocations_by_handle(trace):
        from .core.api import place
        from .core.buddy import buddy_from_machine

        buddy = buddy_from_machine(trace.machine)
        snaps = place(st, buddy, trace.events.columns(), len(trace.checkpoints),
                      int(trace.meta.get("handles", 0)), int(trace.meta.get("vmalloc_pages", 0)),
                      progress)
        return Replayed(trace, boot, st, snaps, buddy)
    snaps = replay(st, trace.events.columns(), len(trace.checkpoints), progress)
    return Replayed(trace, boot, st, snaps)


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
    raise KeyError(name)
