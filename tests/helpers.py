"""Small builders shared by the tests."""

from __future__ import annotations

import numpy as np

from dmsim.core import constants as C
from dmsim.core.api import replay
from dmsim.core.layout import init_mem_mapping
from dmsim.machine import KernelImage, Machine
from dmsim.trace.events import CPAF_FORCE_SPLIT, CPAF_PRIMARY, EV_CPA, EventBuilder

GiB = 1 << 30
MiB = 1 << 20
RW, NX, P = C._PAGE_RW, C._PAGE_NX, C._PAGE_PRESENT


def qemu_machine(gib: int, gbpages: bool = True, kernel: KernelImage | None = None) -> Machine:
    """The e820 map qemu's pc machine gives a guest of `gib` GiB (as in the real traces)."""
    e820 = [(0x1000, 0x9FC00, 1)]
    low = min(gib, 3) * GiB if gib > 2 else gib * GiB
    e820.append((0x100000, low - 0x23000, 1))
    if gib > 3:
        e820.append((4 * GiB, (gib + 1) * GiB, 1))
    elif gib == 3:
        pass
    return Machine(e820=e820, gbpages=gbpages, kernel=kernel)


def cpa_events(calls):
    """calls: (vpfn, numpages, set, clr[, primary[, force_split]]) tuples or 'running'/'kro'."""
    from dmsim.trace.events import EV_KERNEL_RO, EV_SYSTEM_RUNNING

    b = EventBuilder()
    for c in calls:
        if c == "running":
            b.append(EV_SYSTEM_RUNNING)
        elif c == "kro":
            b.append(EV_KERNEL_RO)
        else:
            vpfn, n, s, cl, *rest = c
            primary = rest[0] if rest else True
            force = rest[1] if len(rest) > 1 else False
            b.append(EV_CPA, vpfn, n, s, cl,
                     (CPAF_PRIMARY if primary else 0) | (CPAF_FORCE_SPLIT if force else 0))
    return b.finish()


def run_calls(machine: Machine, calls):
    st = init_mem_mapping(machine)
    replay(st, cpa_events(calls).columns(), 0)
    return st


def counts(st) -> tuple[int, int, int, int, int]:
    c = st.counters
    return (int(c[C.NR_DIRECT_4K]), int(c[C.NR_DIRECT_2M]), int(c[C.NR_DIRECT_1G]),
            int(c[C.DIRECT_MAP_LEVEL2_SPLIT]), int(c[C.DIRECT_MAP_LEVEL3_SPLIT]))


__all__ = ["np", "GiB", "MiB", "RW", "NX", "P", "qemu_machine", "cpa_events", "run_calls", "counts"]


# A 2 GiB guest with one set_memory_ro() and the kernel's checkpoints after it: the
# CLI tests' input (one 2M split, 6004 kB of 4K mappings).
SMALL_TRACE = """dmsim-trace 1
e820 0x1000 0x9fc00 usable
e820 0x100000 0x7ffdd000 usable
gbpages on
system_running
cpa direct 0x2000 1 set=0x0 clr=0x2 primary
step one
check direct_map_level2_splits 1
check DirectMap4k 6004
check DirectMap2M 2091008
"""
