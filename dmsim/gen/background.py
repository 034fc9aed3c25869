"""The background a running system allocates and frees, vectorised.

Why it matters (SPEC section 5): where a module's or secretmem's pages land,
and so how many 2M leaves they split, depends on how scattered the free
unmovable memory is. Three kinds of background:

- `streams`: independent allocations at a constant rate, each with an order
  distribution, a migratetype and a lifetime distribution (anonymous memory and
  page cache are movable; slab is unmovable or reclaimable). Allocations still
  alive at the end of the trace are never freed.
- `pipes`: bursts of pipe writes. `pipe_write()` allocates each buffer page with
  `alloc_page(GFP_HIGHUSER | __GFP_ACCOUNT)`, unmovable order 0, and a pipe holds up
  to PIPE_DEF_BUFFERS (16) pages. A burst fills `pipes` pipes -- by default
  (`layout: random`) with many writers at once, so each pipe's pages are spread
  over everything the burst allocated -- then closes every other one soon after:
  the survivors keep their pages, so the free unmovable memory left behind is in
  small holes spread over many pageblocks -- the state SPEC section 5 describes
  ("many pipes filled and every other one closed").
- `fill` (optional): page cache filling most of memory before the workload, then
  partly reclaimed (see fill()).

All times are seconds of simulated time; --scale stretches the window, so event
counts grow with it while the live memory (rate x mean lifetime) stays the same.
"""

from __future__ import annotations

import numpy as np

from . import rows as R


def fill(sec, ctx, t_start: float, t_end: float, free_pages: int) -> None:
    """`fill`: the page cache a system holds after some uptime, made between
    system_running and the workload: movable allocations (`order` distribution) up
    to `peak` of the allocator's pages over the first three quarters of that time,
    then `reclaimed` of them freed at random (reclaim, truncation), which leaves the
    free memory in small pieces scattered through movable pageblocks.
    Why: the allocator falls back to another migratetype's pageblocks only when its
    own free lists are empty, and then takes the largest free block there is; so
    unmovable allocations spread over many pageblocks (and module loads split many
    leaves) only on a machine whose memory is mostly in use with the free part in
    small pieces -- the state of a system after uptime. With most of RAM free every
    unmovable allocation lands in the few unmovable pageblocks boot made."""
    if not sec.data:
        return
    peak = sec.num("peak", lo=0, hi=0.95)
    orders = sec.dist("order", 0)
    reclaimed = sec.num("reclaimed", 0.0, lo=0, hi=1)
    sec.done()
    rng = ctx.rng("background.fill")
    probe = np.clip(orders.sample(rng, 4096).astype(np.int64), 0, 10)
    mean_pages = max(float(np.mean(np.left_shift(1, probe))), 1.0)
    n = int(peak * free_pages / mean_pages)
    if n == 0:
        return
    order = np.clip(orders.sample(rng, n).astype(np.int64), 0, 10)
    t_mid = t_start + 0.75 * (t_end - t_start)
    t = rng.uniform(t_start, t_mid, n)
    first = ctx.objs.new(n)
    obj = np.arange(first, first + n, dtype=np.int64)
    ctx.rows.block(t, R.PAGE_ALLOC, obj, order, R.MIGRATE_MOVABLE)
    gone = np.flatnonzero(rng.random(n) < reclaimed)
    tf = rng.uniform(t_mid, t_end, gone.shape[0])
    ctx.rows.block(tf, R.PAGE_FREE, obj[gone], order[gone])


def streams(sec, ctx, t_start: float) -> None:
    for item in sec.items("streams"):
        name = item.str("name")
        mt_name = item.str("mt")
        if mt_name not in R.MIGRATETYPES:
            item.fail(f"{mt_name!r}: expected one of {', '.join(R.MIGRATETYPES)}", "mt")
        rate = item.num("rate", lo=0)
        orders = item.dist("order", 0)
        life = item.dist("lifetime")
        item.done()
        rng = ctx.rng(f"background.{name}")
        n = int(round(rate * (ctx.t1 - t_start)))
        if n == 0:
            continue
        t = rng.uniform(t_start, ctx.t1, n)
        order = np.clip(orders.sample(rng, n).astype(np.int64), 0, 10)
        first = ctx.objs.new(n)
        obj = np.arange(first, first + n, dtype=np.int64)
        ctx.rows.block(t, R.PAGE_ALLOC, obj, order, R.MIGRATETYPES[mt_name])
        tf = t + np.maximum(life.sample(rng, n), 1e-6)
        gone = tf < ctx.t1
        ctx.rows.block(tf[gone], R.PAGE_FREE, obj[gone], order[gone])


def pipes(sec, ctx, t_start: float) -> None:
    if not sec.data:
        return
    # seconds from system_running to the first burst (default: an interval)
    first_gap = sec.dist("first") if sec.has("first") else None
    interval = sec.dist("interval")
    npipes = sec.dist("pipes")
    per_pipe = sec.int("pages", 16, lo=1, hi=1024)
    fill = sec.num("page_time", 1e-5, lo=0)  # seconds between two page allocations
    # which pipe each page of the burst goes to: `random` (many writers at once, in
    # no order), `round_robin` (one page to each pipe in turn), `sequential` (one
    # pipe after another)
    layout = sec.str("layout", "random")
    if layout not in ("random", "round_robin", "sequential"):
        sec.fail(f"{layout!r}: expected random, round_robin or sequential", "layout")
    closed_after = sec.dist("closed_after")
    kept_for = sec.dist("kept_for")
    sec.done()
    rng = ctx.rng("background.pipes")
    t = t_start
    bursts = []
    while True:
        gap = first_gap.one(rng) if first_gap is not None and not bursts else interval.one(rng)
        t += max(gap, 1e-3)
        if t >= ctx.t1:
            break
        bursts.append((t, max(int(npipes.one(rng)), 1)))
    for tb, p in bursts:
        n = p * per_pipe
        first = ctx.objs.new(n)
        obj = np.arange(first, first + n, dtype=np.int64)
        k = np.arange(n)
        if layout == "sequential":
            pipe, page = k // per_pipe, k % per_pipe
        else:
            pipe, page = k % p, k // p
            if layout == "random":
                pipe = rng.permutation(pipe)
        ta = tb + k * fill
        ctx.rows.block(ta, R.PAGE_ALLOC, obj, 0, R.MIGRATE_UNMOVABLE)
        done = tb + n * fill
        closed = pipe % 2 == 1
        life = np.where(closed, closed_after.sample(rng, p)[pipe], kept_for.sample(rng, p)[pipe])
        # a pipe's pages go when it is closed (free_pipe_info), one after another
        tf = done + life + page * fill
        gone = tf < ctx.t1
        ctx.rows.block(tf[gone], R.PAGE_FREE, obj[gone], 0)
