"""memfd_secret processes (mm/secretmem.c, Linux 6.1).

A process maps `pages` pages of a secret memfd and touches each: `secretmem_fault()`
allocates an order-0 page with the mapping's gfp (GFP_HIGHUSER: unmovable),
`unmapped=secretmem`, and removes it from the direct map with
`set_direct_map_invalid_noflush()` (`set_memory invalid`). When the process exits
(or unmaps), `secretmem_free_folio()` restores it with
`set_direct_map_default_noflush()` before the page is freed.
"""

from __future__ import annotations

import numpy as np

from . import rows as R


def processes(sec, ctx) -> None:
    count = round(sec.num("processes", lo=0) * ctx.scale)
    npages = sec.dist("pages")
    life = sec.dist("lifetime")
    fault = sec.num("fault_time", 2e-5, lo=0)  # seconds between two page faults
    sec.done()
    if count == 0:
        return
    rng = ctx.rng("secretmem")
    start = rng.uniform(ctx.t0, ctx.t1, count)
    n = np.maximum(npages.sample(rng, count).astype(np.int64), 1)
    end = start + n * fault + np.maximum(life.sample(rng, count), 1e-3)
    total = int(n.sum())
    first = ctx.objs.new(total)
    obj = np.arange(first, first + total, dtype=np.int64)
    k = np.arange(total) - np.repeat(np.cumsum(n) - n, n)  # page index within its process
    ta = np.repeat(start, n) + k * fault
    ctx.rows.block(ta, R.PAGE_ALLOC_SECRETMEM, obj, 0, R.MIGRATE_UNMOVABLE)
    ctx.rows.block(ta + fault / 2, R.SET_INVALID, obj)
    te = np.repeat(end, n) + k * fault
    gone = te < ctx.t1
    ctx.rows.block(te[gone], R.SET_DEFAULT, obj[gone])
    ctx.rows.block(te[gone] + fault / 2, R.PAGE_FREE, obj[gone], 0)
