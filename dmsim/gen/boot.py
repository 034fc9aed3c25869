"""Boot: what the kernel allocates before `system_running`, then the distro's modules.

- `early`: a table of (migratetype, order, count, share freed before
  system_running).
- `kernel_calls`: the CPA calls the kernel makes on its own image (the IDT,
  .smp_locks, free_initmem(), mark_rodata_ro(), with `kernel_ro`), copied from a
  recorded boot of the same kernel build and placement (kernel_calls.py);
  generate.py writes them, and `system_running`.
- `bpf_boot_pack`: `ptp_classifier_init()` (core_initcall) JITs a BPF filter into
  a fresh bpf_prog_pack that stays for good (README: "What is modelled"); bpf.py
  writes it, and later programs are carved from it first.
- `modules`: loaded from system_running on, one `modprobe` after another (udev and
  systemd-modules-load), dependencies first; never unloaded.
"""

from __future__ import annotations

import numpy as np

from . import rows as R
from .modules import check_names

EARLY_END = 0.9  # early allocations happen in [0, EARLY_END); system_running is at 1.0


def early(sec, ctx) -> None:
    rng = ctx.rng("boot.early")
    for item in sec.items("early"):
        mt_name = item.str("mt")
        if mt_name not in R.MIGRATETYPES:
            item.fail(f"{mt_name!r}: expected one of {', '.join(R.MIGRATETYPES)}", "mt")
        order = item.int("order", lo=0, hi=10)
        count = item.int("count", lo=0)
        freed = item.num("freed", 0.0, lo=0.0, hi=1.0)
        item.done()
        if count == 0:
            continue
        t = rng.uniform(0.0, EARLY_END, count)
        first = ctx.objs.new(count)
        obj = np.arange(first, first + count, dtype=np.int64)
        ctx.rows.block(t, R.PAGE_ALLOC, obj, order, R.MIGRATETYPES[mt_name])
        gone = rng.random(count) < freed
        tf = t[gone] + rng.random(int(gone.sum())) * (EARLY_END - t[gone])
        ctx.rows.block(tf, R.PAGE_FREE, obj[gone], order)


def modules(sec, ctx, system) -> float:
    """Load the boot modules from system_running; returns when the last load ends."""
    names = sec.list("modules", [])
    check_names(system.table, names, lambda msg: sec.fail(msg, "modules"))
    t = ctx.t_running + 0.01
    for n in names:
        t = system.modprobe(n, t)
        system.pinned.update(system.closure(n))
    return t
