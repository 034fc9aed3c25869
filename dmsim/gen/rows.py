"""The rows every workload appends to, and the native line each row becomes.

A row is (time, op, obj, b, c) (float64, uint8, then int32: handles are below
2^31 in the native format anyway): `time` in seconds of simulated time (rows are
merged by it, stably), `op` one of the codes below, `obj` the object (one
allocation: pages, a vmalloc area) it acts on, `b`/`c` the line's other numbers.
Objects are numbered by the workloads; generate.py turns them into handles in
the order their allocations appear, so handles count up through the file.

Frees carry the object's size in `b` (pages for vfree, order for page_free): the
writer does not print it, the memory check (generate.py) needs it.
"""

from __future__ import annotations

import numpy as np

(PAGE_ALLOC, PAGE_ALLOC_SECRETMEM, PAGE_FREE, VMALLOC, VMALLOC_MODULE, VMALLOC_BPF, VFREE,
 VFREE_RESET, SET_RO, SET_X, SET_NX, SET_INVALID, SET_DEFAULT, KERNEL_RO, SYSTEM_RUNNING) = range(15)
# op -> (line template, numbers printed, what it does to live pages); the template's
# fields in order: handle, b, c.  Page deltas: +1 << b, -1 << b, +b, -b.
OPS = {
    PAGE_ALLOC: ("page_alloc {} {} mt={}", 3, "+order"),
    PAGE_ALLOC_SECRETMEM: ("page_alloc {} {} mt={} unmapped=secretmem", 3, "+order"),
    PAGE_FREE: ("page_free {}", 1, "-order"),
    VMALLOC: ("vmalloc {} {}", 2, "+pages"),
    VMALLOC_MODULE: ("vmalloc {} {} unmapped=module", 2, "+pages"),
    VMALLOC_BPF: ("vmalloc {} {} unmapped=bpf", 2, "+pages"),
    VFREE: ("vfree {}", 1, "-pages"),
    VFREE_RESET: ("vfree {} reset_perms", 1, "-pages"),
    SET_RO: ("set_memory ro {} {} {}", 3, ""),
    SET_X: ("set_memory x {} {} {}", 3, ""),
    SET_NX: ("set_memory nx {} {} {}", 3, ""),
    SET_INVALID: ("set_memory invalid {}", 1, ""),
    SET_DEFAULT: ("set_memory default {}", 1, ""),
    KERNEL_RO: ("kernel_ro", 0, ""),
    SYSTEM_RUNNING: ("system_running", 0, ""),
}
# without the `unmapped=` tokens (readers that predate them)
NO_GROUP = {PAGE_ALLOC_SECRETMEM: "page_alloc {} {} mt={}",
            VMALLOC_MODULE: "vmalloc {} {}", VMALLOC_BPF: "vmalloc {} {}"}

N_OPS = len(OPS)
ALLOCS = np.zeros(N_OPS, bool)
SIGN = np.zeros(N_OPS, np.int64)  # +1 allocation, -1 free
BY_ORDER = np.zeros(N_OPS, bool)  # the size in b is an order
for _i, (_t, _nf, _d) in OPS.items():
    if _d:
        SIGN[_i] = 1 if _d[0] == "+" else -1
        ALLOCS[_i] = _d[0] == "+"
        BY_ORDER[_i] = _d.endswith("order")

MIGRATE_UNMOVABLE, MIGRATE_MOVABLE, MIGRATE_RECLAIMABLE = 0, 1, 2
MIGRATETYPES = {"unmovable": MIGRATE_UNMOVABLE, "movable": MIGRATE_MOVABLE,
                "reclaimable": MIGRATE_RECLAIMABLE}


class Objects:
    """Hands out object numbers."""

    def __init__(self):
        self.n = 0

    def new(self, count: int = 1) -> int:
        first = self.n
        self.n += count
        return first


class Rows:
    """Columns built from numpy blocks (vectorised workloads) or one row at a time."""

    def __init__(self):
        self.blocks: list[tuple[np.ndarray, ...]] = []
        self._t: list[float] = []
        self._op: list[int] = []
        self._obj: list[int] = []
        self._b: list[int] = []
        self._c: list[int] = []

    def add(self, t: float, op: int, obj: int = -1, b: int = 0, c: int = 0) -> None:
        self._t.append(t)
        self._op.append(op)
        self._obj.append(obj)
        self._b.append(b)
        self._c.append(c)

    def block(self, t, op, obj=-1, b=0, c=0) -> None:
        """Rows at times `t`; the other columns are arrays as long as `t` or scalars."""
        self.blocks.append((np.asarray(t, np.float64), op, obj, b, c))

    def columns(self) -> tuple[np.ndarray, ...]:
        blocks = list(self.blocks)
        if self._t:
            blocks.append((np.array(self._t, np.float64), np.array(self._op, np.uint8),
                           np.array(self._obj, np.int32), np.array(self._b, np.int32),
                           np.array(self._c, np.int32)))
        n = sum(blk[0].shape[0] for blk in blocks)
        out = (np.empty(n, np.float64), np.empty(n, np.uint8), np.empty(n, np.int32),
               np.empty(n, np.int32), np.empty(n, np.int32))
        pos = 0
        for blk in blocks:
            m = blk[0].shape[0]
            for col, x in zip(out, blk, strict=True):
                col[pos:pos + m] = x  # a scalar fills the block
            pos += m
        return out

    def __len__(self) -> int:
        return len(self._t) + sum(blk[0].shape[0] for blk in self.blocks)
