"""--placement simulate for a recorded trace: turn recorded placement into
events by handle, so that the simulated allocator decides where every traced
allocation lands (docs/design-simulated-placement.md).

- mm_page_alloc -> EV_H_ALLOC of a new handle with the recorded order,
  migratetype and gfp_zone() (from gfp_flags);
- mm_page_free of a live block -> EV_H_FREE; of a block no traced allocation
  made -> that block was allocated before the trace began: EV_H_CLAIM keeps it
  where it was, from the start;
- a CPA call on direct-map pfns is cut into runs by owner: runs inside a traced
  allocation become EV_H_CPA (CPAF_RAW: masks and primary as recorded) on the
  handle's pages, the rest (boot memory, the kernel image) stays where it was.
"""

from __future__ import annotations

import numpy as np

from .events import (
    CPAF_RAW,
    EV_ALLOC,
    EV_CPA,
    EV_FREE,
    EV_H_ALLOC,
    EV_H_CLAIM,
    EV_H_CPA,
    EV_H_FREE,
    EventBuilder,
    Trace,
)


def to_simulated_placement(trace: Trace) -> Trace:
    ev = trace.events
    m = trace.machine
    nr_pfns = m.max_pfn() + 1024
    hv = m.highmap_vpfn()
    kind = ev.kind.tolist()
    a0 = ev.arg0.tolist()
    a1 = ev.arg1.tolist()
    fl = ev.flags.tolist()

    # pass 1: blocks the trace frees without having allocated them. The first
    # such free of pages nothing traced has touched yet was allocated before the
    # trace: claim it in place from the start. A later one is a reuse the trace
    # cannot show (vmalloc takes its order-0 pages from alloc_pages_bulk(), which
    # has no mm_page_alloc event): it is dropped and counted.
    live = {}  # head pfn -> order
    touched = np.zeros(nr_pfns, bool)
    pre: list[tuple[int, int]] = []
    for k, pfn, order in zip(kind, a0, a1, strict=True):
        if k == EV_ALLOC:
            live[pfn] = order
            touched[pfn:pfn + (1 << order)] = True
        elif k == EV_FREE:
            if live.get(pfn) == order:
                del live[pfn]
            elif not touched[pfn:pfn + (1 << order)].any():
                pre.append((pfn, order))
                touched[pfn:pfn + (1 << order)] = True

    b = EventBuilder(len(ev) + len(pre) + 16)
    owner = np.full(nr_pfns, -1, np.int64)  # recorded pfn -> handle
    base = {}  # handle -> recorded head pfn
    h_next = 0
    pre_handle = {}
    for pfn, order in pre:  # claimed first, at their recorded place
        if pfn in pre_handle or owner[pfn] >= 0:
            continue
        h = h_next
        h_next += 1
        b.append(EV_H_CLAIM, h, order, pfn, 0, 0)
        owner[pfn:pfn + (1 << order)] = h
        base[h] = pfn
        pre_handle[pfn] = h
    dropped = 0
    for i, k in enumerate(kind):
        if k == EV_ALLOC:
            pfn, order = a0[i], a1[i]
            h = h_next
            h_next += 1
            b.append(EV_H_ALLOC, h, order, 0, 0, fl[i])  # migratetype | gfp_zone() << 8
            owner[pfn:pfn + (1 << order)] = h
            base[h] = pfn
        elif k == EV_FREE:
            pfn, order = a0[i], a1[i]
            h = int(owner[pfn])
            if h < 0 or base.get(h) != pfn:
                dropped += 1  # frees a block allocated where no trace event shows
                continue
            b.append(EV_H_FREE, h)
            owner[pfn:pfn + (1 << order)] = -1
            del base[h]
        elif k == EV_CPA and a0[i] < hv:
            _cpa_runs(b, owner, base, a0[i], a1[i], int(ev.mask_set[i]), int(ev.mask_clr[i]),
                      fl[i])
        else:
            b.append(k, a0[i], a1[i], int(ev.mask_set[i]), int(ev.mask_clr[i]), fl[i])
    out = Trace(machine=m, events=b.finish(), checkpoints=trace.checkpoints, meta=dict(trace.meta))
    out.meta.update({"placement": "simulate", "handles": h_next, "vmalloc_pages": 0,
                     "preexisting_blocks": len(pre_handle), "untraced_frees": dropped})
    return out


def _cpa_runs(b, owner, base, vpfn, numpages, mask_set, mask_clr, flags) -> None:
    """One recorded CPA call, cut where the owning allocation changes."""
    end = vpfn + numpages
    run = vpfn
    seg = owner[vpfn:min(end, len(owner))]
    if len(seg) < numpages:  # past the pfns any allocation can own
        seg = np.concatenate([seg, np.full(numpages - len(seg), -1, np.int64)])
    cut = np.nonzero(np.diff(seg))[0] + 1
    for lo, hi in zip(np.concatenate([[0], cut]), np.concatenate([cut, [numpages]]), strict=True):
        h = int(seg[lo])
        first = run + int(lo)
        n = int(hi - lo)
        if h < 0:
            b.append(EV_CPA, first, n, mask_set, mask_clr, flags)
        else:
            b.append(EV_H_CPA, h, (first - base[h]) << 32 | n, mask_set, mask_clr,
                     flags | CPAF_RAW)
