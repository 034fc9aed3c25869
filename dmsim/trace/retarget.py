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
  handle's pages, the rest (boot memory, the kernel image) stays where it was;
- vmalloc areas (module_alloc(): modules and BPF JIT memory) get their pages
  from alloc_pages_bulk(), which the trace does not show; they are recognised
  by their alias calls (vmalloc_areas()) and become EV_H_VMALLOC handles, so
  an allocation policy can place them too;
- who would ask for __GFP_UNMAPPED (docs/design-policies.md): a traced
  allocation whose first protection change is set_direct_map_invalid_noflush()
  (primary 0, clears _PAGE_PRESENT) is secretmem (secretmem_fault() unmaps
  the page it just allocated; a vmalloc page that came from alloc_pages() is
  made read-only before vm_reset_perms() unmaps it); one whose first change is
  an alias call making it read-only is a one-page vmalloc area (module_alloc()
  of one page: __alloc_pages_bulk() hands a single page to alloc_pages(), which
  the trace shows), module memory; vmalloc areas are
  module memory, or BPF memory when one call made 512 of their pages read-only
  (a 2 MiB bpf_prog_pack).
"""

from __future__ import annotations

import numpy as np

from ..core.constants import _PAGE_PRESENT, _PAGE_RW
from .events import (
    CPAF_PRIMARY,
    CPAF_RAW,
    EV_ALLOC,
    EV_CPA,
    EV_FREE,
    EV_H_ALLOC,
    EV_H_CLAIM,
    EV_H_CPA,
    EV_H_FREE,
    EV_H_VFREE,
    EV_H_VMALLOC,
    EV_VCPA,
    UNMAPPED_BPF,
    UNMAPPED_MODULE,
    UNMAPPED_SECRETMEM,
    UNMAPPED_SHIFT,
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

    areas, first_event = vmalloc_areas(trace)
    in_area = np.zeros(nr_pfns, bool)
    for pages, _, _ in areas:
        in_area[pages] = True

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
            elif in_area[pfn:pfn + (1 << order)].any():
                continue  # a vmalloc area's page: freed by its EV_H_VFREE
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
    alloc_row = {}  # handle -> its EV_H_ALLOC row in b (flags get the user group)
    secretmem = set()
    changed = set()  # traced allocations a protection change has hit
    one_page_areas = set()
    area_handle = {}  # area index -> handle
    area_now = {}  # pfn -> the live area it backs
    area_freed = {}  # area index -> pages freed so far
    vmalloc_pages = 0
    ms_col = ev.mask_set.tolist()
    mc_col = ev.mask_clr.tolist()
    for i, k in enumerate(kind):
        for a in first_event.get(i, ()):  # module_alloc() just before its first alias call
            h = h_next
            h_next += 1
            pages, group, _ = areas[a]
            b.append(EV_H_VMALLOC, h, len(pages), 0, 0, group << UNMAPPED_SHIFT)
            area_handle[a] = h
            area_freed[a] = 0
            vmalloc_pages += len(pages)
            for p in pages.tolist():
                area_now[p] = a
        if k == EV_CPA and a1[i] == 1 and a0[i] in area_now and not fl[i] & CPAF_PRIMARY:
            # an alias call on a vmalloc area's page: the handle's page (per-page aliases)
            a = area_now[a0[i]]
            idx = areas[a][2][a0[i]]
            b.append(EV_H_CPA, area_handle[a], idx << 32 | 1, ms_col[i], mc_col[i], fl[i])
            continue
        if k == EV_FREE and a1[i] == 0 and a0[i] in area_now:
            a = area_now.pop(a0[i])
            area_freed[a] += 1
            if area_freed[a] == len(areas[a][0]):  # vfree(): the area's last page
                b.append(EV_H_VFREE, area_handle.pop(a))
            continue
        if k == EV_ALLOC:
            pfn, order = a0[i], a1[i]
            h = h_next
            h_next += 1
            alloc_row[h] = b.append(EV_H_ALLOC, h, order, 0, 0, fl[i])  # mt | gfp_zone() << 8
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
            hs = owner[a0[i]:a0[i] + a1[i]]
            for x in np.unique(hs[hs >= 0]).tolist():
                if x in alloc_row and x not in changed:
                    changed.add(x)
                    if not fl[i] & CPAF_PRIMARY and mc_col[i] & _PAGE_PRESENT:
                        secretmem.add(x)  # set_direct_map_invalid_noflush() comes first
                    elif not fl[i] & CPAF_PRIMARY and mc_col[i] & _PAGE_RW and a1[i] == 1:
                        one_page_areas.add(x)  # an alias made read-only comes first
            _cpa_runs(b, owner, base, a0[i], a1[i], ms_col[i], mc_col[i], fl[i])
        else:
            b.append(k, a0[i], a1[i], ms_col[i], mc_col[i], fl[i])
    events = b.finish()
    for h in secretmem:
        events.flags[alloc_row[h]] |= UNMAPPED_SECRETMEM << UNMAPPED_SHIFT
    for h in one_page_areas:
        events.flags[alloc_row[h]] |= UNMAPPED_MODULE << UNMAPPED_SHIFT
    out = Trace(machine=m, events=events, checkpoints=trace.checkpoints, meta=dict(trace.meta))
    out.meta.update({"placement": "simulate", "handles": h_next, "vmalloc_pages": vmalloc_pages,
                     "preexisting_blocks": len(pre_handle), "untraced_frees": dropped,
                     "vmalloc_areas": len(areas), "secretmem_allocations": len(secretmem),
                     "one_page_vmalloc_areas": len(one_page_areas)})
    return out


def vmalloc_areas(trace: Trace):
    """vmalloc areas (module_alloc(): modules, BPF JIT memory) seen through
    their calls. A call on a vmalloc address (EV_VCPA) is followed by its alias
    calls (primary 0, one page each, cpa_process_alias()), page j of the call
    on the pfn behind vmalloc page va + j; pages mapped at adjacent vmalloc
    pages are one area (areas are apart by at least a guard page), and so are
    the pages one vm_reset_perms() resets (a run of
    set_direct_map_invalid_noflush() calls on pages no traced allocation owns):
    that run is how an area's data pages, which no protection change aliases,
    join it. A page freed, or reset, leaves its area: a later area may reuse
    the pfn and the vmalloc address. Returns ([(pfns, group, {pfn: index})],
    {event index: [areas whose first call is there]})."""
    ev = trace.events
    hv = trace.machine.highmap_vpfn()
    kind = ev.kind.tolist()
    a0 = ev.arg0.tolist()
    a1 = ev.arg1.tolist()
    fl = ev.flags.tolist()
    mc = ev.mask_clr.tolist()
    live = np.zeros(trace.machine.max_pfn() + 1024, bool)
    parent: list[int] = []  # union-find over nodes: one node per pfn and area lifetime
    node_pfn: list[int] = []
    node_first: list[int] = []  # event index of the call that met it first
    node_key: list[tuple[int, int]] = []  # (vmalloc page, 0) or (-1, sequence)
    node_pack: list[bool] = []  # met by a 512-page call (bpf_prog_pack)
    node_of: dict[int, int] = {}  # pfn -> its node in the current lifetime
    va_node: dict[int, int] = {}  # mapped vmalloc page -> node
    va_of: dict[int, int] = {}  # node -> its vmalloc page

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(x: int, y: int) -> None:
        rx, ry = find(x), find(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)

    def node(pfn: int, i: int, key: tuple[int, int]) -> int:
        n = node_of.get(pfn)
        if n is None:
            n = len(parent)
            parent.append(n)
            node_pfn.append(pfn)
            node_first.append(i)
            node_key.append(key)
            node_pack.append(False)
            node_of[pfn] = n
        return n

    def retire(pfn: int) -> None:
        n = node_of.pop(pfn, None)
        if n is not None and n in va_of:
            va_node.pop(va_of.pop(n), None)

    va = None  # the vmalloc call whose aliases come next: [first page, left, index, n]
    reset = -1  # first node of the current run of invalid alias calls
    seq = 0
    for i, k in enumerate(kind):
        if k == EV_ALLOC:
            live[a0[i]:a0[i] + (1 << a1[i])] = True
            continue
        if k == EV_FREE:
            live[a0[i]:a0[i] + (1 << a1[i])] = False
            for p in range(a0[i], a0[i] + (1 << a1[i])):
                retire(p)
            continue
        if k == EV_VCPA:
            va = [a0[i], a1[i], i, a1[i]] if fl[i] & CPAF_PRIMARY else None
            continue
        if k != EV_CPA:
            continue
        pfn = a0[i]
        alias = a1[i] == 1 and not fl[i] & CPAF_PRIMARY and pfn < hv and not live[pfn]
        if alias and va is not None and va[1] > 0:
            page = va[0] + va[3] - va[1]
            va[1] -= 1
            n = node(pfn, va[2], (page, 0))
            if va[3] == 512:
                node_pack[n] = True
            for q in (page - 1, page + 1):  # the same area's neighbouring pages
                if q in va_node:
                    union(n, va_node[q])
            va_node[page] = n
            va_of[n] = page
            reset = -1
            continue
        va = None
        if alias and mc[i] & _PAGE_PRESENT:  # vm_reset_perms(): invalid on every page
            seq += 1
            n = node(pfn, i, (-1, seq))
            if reset >= 0:
                union(reset, n)
            else:
                reset = n
        else:
            reset = -1
    members: dict[int, list[int]] = {}
    for n in range(len(parent)):
        members.setdefault(find(n), []).append(n)
    areas = []
    first_event: dict[int, list[int]] = {}
    for nodes in sorted(members.values(), key=lambda ns: min(node_first[n] for n in ns)):
        # vmalloc page order where known, then the order the resets met the rest
        nodes.sort(key=lambda n: (node_key[n][0] < 0, node_key[n]))
        pages = [node_pfn[n] for n in nodes]
        if len(set(pages)) != len(pages):
            continue  # a pfn twice in one lifetime: not one area; left where recorded
        a = len(areas)
        group = UNMAPPED_BPF if any(node_pack[n] for n in nodes) else UNMAPPED_MODULE
        areas.append((np.array(pages, np.int64), group, {p: j for j, p in enumerate(pages)}))
        first_event.setdefault(min(node_first[n] for n in nodes), []).append(a)
    return areas, first_event


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
