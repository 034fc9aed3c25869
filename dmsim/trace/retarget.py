"""--placement simulate for a recorded trace: turn recorded placement into
events by handle, so that the simulated allocator decides where every traced
allocation lands (docs/design-simulated-placement.md).

- mm_page_alloc -> EV_H_ALLOC of a new handle with the recorded order,
  migratetype and gfp_zone() (from gfp_flags), and the pfn the kernel gave it
  (H_RECORDED: what --placement shadow compares with); the page-table pages
  split_large_page() allocated are marked H_PT_PAGE: the core's own splits
  take theirs, at the same moment (table_pages());
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
from ..core.zones import first_deferred_pfn, zone_layout
from .events import (
    CPAF_PRIMARY,
    CPAF_RAW,
    EV_ALLOC,
    EV_CPA,
    EV_FREE,
    EV_H_ALLOC,
    EV_H_CLAIM,
    EV_H_CPA,
    EV_H_DEFER,
    EV_H_FILL,
    EV_H_FREE,
    EV_H_PCP_SETUP,
    EV_H_VFREE,
    EV_H_VMALLOC,
    EV_H_WMARK_INIT,
    EV_VCPA,
    FILL_BOOT_PAGESET,
    FREE_DEFERRED_INIT,
    H_PT_PAGE,
    H_REBUILT,
    H_RECORDED,
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
    area_from = np.full(nr_pfns, len(kind), np.int64)  # when a page first backs an area
    for at, idx in first_event.items():
        for a in idx:
            pages = areas[a][0]
            area_from[pages] = np.minimum(area_from[pages], at)

    # pass 1: blocks the trace frees without having allocated them, each allocated
    # at the earliest point the trace allows. The first such free of pages nothing
    # traced has touched yet was allocated before the trace: claim it in place from
    # the start. A later one was allocated where the trace cannot show it
    # (__vmalloc_area_node() -> alloc_pages_bulk(), which has no mm_page_alloc
    # event): it is rebuilt as an unmovable order-N allocation right after the last
    # event that touched its pages (the kernel's bulk refill took them off a free
    # list after that). A page inside a live traced block (split_page() and its
    # frees) is dropped and counted.
    live = {}  # head pfn -> order
    covered = np.zeros(nr_pfns, bool)  # inside a live traced block
    touched = np.zeros(nr_pfns, bool)
    last = np.full(nr_pfns, -1, np.int64)  # the last page event touching each pfn
    pre: list[tuple[int, int, int]] = []
    rebuilt: dict[int, list[tuple[int, int]]] = {}  # event index -> blocks allocated before it
    for i, (k, pfn, order) in enumerate(zip(kind, a0, a1, strict=True)):
        end = pfn + (1 << order)
        if k == EV_ALLOC:
            live[pfn] = order
            touched[pfn:end] = True
            covered[pfn:end] = True
            last[pfn:end] = i
        elif k == EV_FREE:
            if live.get(pfn) == order:
                del live[pfn]
                covered[pfn:end] = False
                last[pfn:end] = i
            elif (area_from[pfn:end] <= i).any():
                continue  # a vmalloc area's page: freed by its EV_H_VFREE
            elif not touched[pfn:end].any():
                pre.append((pfn, order, i))
                touched[pfn:end] = True
                last[pfn:end] = i
            elif not covered[pfn:end].any():
                rebuilt.setdefault(int(last[pfn:end].max()) + 1, []).append((pfn, order))
                last[pfn:end] = i

    pt_page = table_pages(trace)
    b = EventBuilder(len(ev) + len(pre) + 16)
    src: list[int] = []  # per row of b: the event of `trace` it comes from
    deferred = deferred_range(trace)
    wmark_init = -1
    if deferred is not None:  # before the claims: the deferred ones are reserved memory
        b.append(EV_H_DEFER, *deferred)
        src.append(0)
        wmark_init = int(np.nonzero((ev.kind == EV_FREE)
                                    & ((ev.flags & FREE_DEFERRED_INIT) != 0))[0][-1]) + 1
    owner = np.full(nr_pfns, -1, np.int64)  # recorded pfn -> handle
    base = {}  # handle -> recorded head pfn
    h_next = 0
    pre_handle = {}
    for pfn, order, at in pre:  # claimed first, at their recorded place
        if pfn in pre_handle or owner[pfn] >= 0:
            continue
        h = h_next
        h_next += 1
        b.append(EV_H_CLAIM, h, order, pfn, 0, 0)
        src.append(at)
        owner[pfn:pfn + (1 << order)] = h
        base[h] = pfn
        pre_handle[pfn] = h
    fill = pretrace_target(trace, pt_page)
    # just before the first page event: after the calls the reader made up for
    # start_kernel() before the kprobe existed (their table pages are traced
    # allocations, which follow the fill)
    pages = np.nonzero((ev.kind == EV_ALLOC) | (ev.kind == EV_FREE))[0]
    fill_at = int(pages[0]) if len(pages) else len(kind)
    pcp_setup = trace.meta.get("pcp_setup_event")
    if fill is not None and pcp_setup is not None:
        if pcp_setup < fill_at:
            pcp_setup = None
        else:  # the boot pageset stays on until then
            fill = fill[:4] + (fill[4] | FILL_BOOT_PAGESET,)
    dropped = 0
    nr_rebuilt = 0
    alloc_row = {}  # handle -> its EV_H_ALLOC row in b (flags get the user group)
    secretmem = set()
    changed = set()  # traced allocations a protection change has hit
    one_page_areas = set()
    area_handle = {}  # area index -> handle
    area_now = {}  # pfn -> the live area it backs
    area_freed = {}  # area index -> pages freed so far
    vmalloc_pages = 0
    vmalloc_pfns: list[np.ndarray] = []  # the kernel's pfn of each vmalloc page, pool order
    ms_col = ev.mask_set.tolist()
    mc_col = ev.mask_clr.tolist()
    for i, k in enumerate(kind):
        src.extend([i - 1] * (b.n - len(src)))  # rows the last event appended
        if fill is not None and i == fill_at:
            b.append(EV_H_FILL, *fill)
        if fill is not None and i == pcp_setup:
            b.append(EV_H_PCP_SETUP)
        if i == wmark_init:  # page_alloc_init_late() is done: the initcalls follow
            b.append(EV_H_WMARK_INIT)
        for pfn, order in rebuilt.get(i, ()):  # alloc_pages_bulk()'s, no event
            h = h_next
            h_next += 1
            b.append(EV_H_ALLOC, h, order, pfn, 0, ZONE_NORMAL_FLAGS | H_REBUILT)  # GFP_KERNEL
            owner[pfn:pfn + (1 << order)] = h
            base[h] = pfn
            nr_rebuilt += 1
        for a in first_event.get(i, ()):  # module_alloc() just before its first alias call
            h = h_next
            h_next += 1
            pages, group, _ = areas[a]
            b.append(EV_H_VMALLOC, h, len(pages), 0, 0, group << UNMAPPED_SHIFT)
            area_handle[a] = h
            area_freed[a] = 0
            vmalloc_pages += len(pages)
            vmalloc_pfns.append(pages)
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
            if pt_page[i]:  # the core's split takes its own table page
                b.append(EV_H_ALLOC, h, order, pfn, 0, fl[i] | H_RECORDED | H_PT_PAGE)
                continue
            alloc_row[h] = b.append(EV_H_ALLOC, h, order, pfn, 0, fl[i] | H_RECORDED)
            owner[pfn:pfn + (1 << order)] = h
            base[h] = pfn
        elif k == EV_FREE:
            pfn, order = a0[i], a1[i]
            h = int(owner[pfn])
            if h < 0 or base.get(h) != pfn:
                dropped += 1  # frees a block allocated where no trace event shows
                continue
            b.append(EV_H_FREE, h, 0, 0, 0, fl[i] & FREE_DEFERRED_INIT)
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
    src.extend([len(kind) - 1] * (b.n - len(src)))
    events = b.finish()
    for h in secretmem:
        events.flags[alloc_row[h]] |= UNMAPPED_SECRETMEM << UNMAPPED_SHIFT
    for h in one_page_areas:
        events.flags[alloc_row[h]] |= UNMAPPED_MODULE << UNMAPPED_SHIFT
    lines = None
    if trace.lines is not None:
        lines = trace.lines[np.array(src, np.int64)] if src else np.zeros(0, np.int64)
    pool = np.concatenate(vmalloc_pfns) if vmalloc_pfns else np.zeros(0, np.int64)
    out = Trace(machine=m, events=events, checkpoints=trace.checkpoints, meta=dict(trace.meta),
                lines=lines, vmalloc_pfns=pool.astype(np.int64))
    out.meta.update({"placement": "simulate", "handles": h_next, "vmalloc_pages": vmalloc_pages,
                     "preexisting_blocks": len(pre_handle), "untraced_frees": dropped,
                     "rebuilt_allocations": nr_rebuilt,
                     "vmalloc_areas": len(areas), "secretmem_allocations": len(secretmem),
                     "page_table_pages": int(pt_page.sum()),
                     "one_page_vmalloc_areas": len(one_page_areas)})
    return out


def deferred_range(trace: Trace) -> tuple[int, int] | None:
    """EV_H_DEFER's (first deferred pfn, zone end) for a trace whose kernel deferred
    struct page init (CONFIG_DEFERRED_STRUCT_PAGE_INIT, on in Debian's and most
    distributions' kernels): the trace shows the pgdatinit kthread's frees. None
    otherwise, or when they free memory below where defer_init() would have
    stopped (then the rule does not fit this kernel, and the model keeps its boot)."""
    ev = trace.events
    by_pgdatinit = (ev.kind == EV_FREE) & ((ev.flags & FREE_DEFERRED_INIT) != 0)
    if not by_pgdatinit.any():
        return None
    mem = trace.machine.ram_pfn_ranges()
    start = first_deferred_pfn(mem)
    if start is None or int(ev.arg0[by_pgdatinit].min()) < start:
        return None
    end = [z for z in zone_layout(mem) if z.end_pfn > z.start_pfn][-1].end_pfn
    return start, end


def pretrace_target(trace: Trace, pt_page: np.ndarray):
    """EV_H_FILL's columns (core/pretrace.py) for a trace recorded from boot: the
    first traced order-0 unmovable allocation is where the allocations made
    before trace_init() left off. None for a trace that starts on a running
    system (its system_running marker comes before any allocation)."""
    from .events import EV_SYSTEM_RUNNING

    ev = trace.events
    k = ev.kind
    running = np.nonzero(k == EV_SYSTEM_RUNNING)[0]
    allocs = np.nonzero((k == EV_ALLOC) & ~pt_page)[0]
    if not len(allocs) or not len(running) or running[0] < allocs[0]:
        return None
    first = allocs[(ev.arg1[allocs] == 0) & ((ev.flags[allocs] & 0xFF) == 0)]
    if not len(first):
        return None
    i = int(first[0])
    limit = trace.machine.max_pfn() // 2  # a ring buffer of half the RAM is not a boot
    return int(ev.arg0[i]), limit, 0, 0, int(ev.flags[i])


def table_pages(trace: Trace) -> np.ndarray:
    """Which recorded allocations are page-table pages: split_large_page() takes
    each with alloc_pages(GFP_KERNEL, 0) inside the __change_page_attr_set_clr()
    call whose kprobe event comes first, so after a call that split k leaves the
    next k order-0 unmovable allocations are its tables (nested alias calls may
    come in between; nothing else allocates inside a CPA call). k comes from a
    replay with recorded placement, which matches the kernel's split counters.
    Returns a bool per event."""
    from ..core.api import replay
    from ..core.constants import NR_PTE_TABLES
    from ..core.layout import init_mem_mapping
    from .events import EV_CHECKPOINT

    ev = trace.events
    is_cpa = ev.kind == EV_CPA
    out = np.zeros(len(ev), bool)
    if not is_cpa.any():
        return out
    # a snapshot after every call: its page-table count
    cpa_at = np.nonzero(is_cpa)[0]
    cols = [np.insert(c, cpa_at + 1, v) for c, v in
            zip(ev.columns(), (EV_CHECKPOINT, 0, 0, 0, 0, 0), strict=True)]
    marks = np.nonzero(cols[0] == EV_CHECKPOINT)[0]
    cols[1][marks] = np.arange(len(marks))  # every checkpoint gets its own snapshot
    snap = replay(init_mem_mapping(trace.machine), tuple(cols), len(marks))
    new_tables = np.diff(np.concatenate([[0], snap[:, NR_PTE_TABLES]]))
    # the snapshot index of the calls, among all checkpoints
    after_cpa = np.searchsorted(marks, cpa_at + np.arange(len(cpa_at)) + 1)
    tables = np.zeros(len(ev), np.int64)
    tables[cpa_at] = new_tables[after_cpa]
    pending = 0
    kind = ev.kind.tolist()
    order = ev.arg1.tolist()
    fl = ev.flags.tolist()
    tab = tables.tolist()
    for i, k in enumerate(kind):
        if k == EV_CPA:
            pending += tab[i]
        elif k == EV_ALLOC and pending and order[i] == 0 and fl[i] == ZONE_NORMAL_FLAGS:
            out[i] = True
            pending -= 1
    return out


# EV_ALLOC flags of GFP_KERNEL: MIGRATE_UNMOVABLE, gfp_zone() Normal (2)
ZONE_NORMAL_FLAGS = 2 << 8


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
