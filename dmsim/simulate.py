"""Glue between a parsed trace and the core: boot the machine, replay, collect."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .core import constants as C
from .core.api import replay
from .core.layout import init_mem_mapping
from .core.state import DirectMapState
from .trace.events import Trace


@dataclass
class Replayed:
    trace: Trace
    boot: np.ndarray  # counters right after init_mem_mapping()
    state: DirectMapState
    snapshots: np.ndarray  # int64[len(checkpoints), NR_COUNTERS]

    @property
    def counters(self) -> np.ndarray:
        return self.state.counters


def simulate(trace: Trace, progress: Callable[[int, int], None] | None = None) -> Replayed:
    st = init_mem_mapping(trace.machine)
    boot = st.counters.copy()
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
