"""Shadow placement: the allocator guesses, the kernel decides (numba).

For every allocation a recorded trace shows, the simulated allocator first
places it as it would (``alloc_pages()``, side effects and all: pcp refills,
steals), and the guess is logged beside the pfn the kernel chose. Then the
guess is undone and the kernel's block is taken out of the simulated free
lists, so one wrong guess does not poison the next: the model stays on the
kernel's path and is scored one decision at a time.

The undo is the inverse of the step that handed the block out: a block from
a pcp list goes back to that list's head (rmqueue_pcplist() took the head), a
buddy block is freed with __free_one_page() (it merges with the halves
expand() left, into the block __rmqueue_smallest() took; a pageblock a steal
claimed keeps its new type, which is what the kernel did too when it chose
that block). When the kernel's block is not free in the model (the model's
state has drifted: it thinks the block is allocated, reserved or on a pcp list
in other pieces), the guess stands and the outcome says so.

sh = (rec_pool int64[]: the kernel's pfn of each vmalloc page, pool order;
      d_ev int64[N], d_rec int64[N], d_pred int64[N], d_info int64[N]: one row per
      decision; d_n int64[1]; diag int64[NR_DIAG, NF]: the model's state at the
      first divergences)
"""

from __future__ import annotations

from numba import njit

from .buddy import (
    C_PCP,
    FPI_NONE,
    MAX_ORDER,
    MIGRATE_HIGHATOMIC,
    MIGRATE_MOVABLE,
    MIGRATE_PCPTYPES,
    PAGEBLOCK_ORDER,
    PCP_STRIDE,
    PG_BUDDY,
    PG_HEAD,
    PG_LRU,
    PG_PCP,
    PG_RESERVED,
    S_NR_ALLOC,
    S_PGALLOC,
    Z_PCP_COUNT,
    __free_one_page,
    _lid,
    _list_add,
    _list_del,
    can_steal_fallback,
    claim_block,
    order_to_pindex,
    page_zonenum,
    pcp_allowed_order,
    prep_new_page,
    steal_suitable_fallback,
)

# d_info = order | mt << 4 | zone << 8 | outcome << 12 | source << 16 | vmalloc << 20
OUT_HIT = 0  # the model chose the kernel's block
OUT_MOVED = 1  # it chose another; the kernel's block was taken instead
OUT_NOT_FREE = 2  # the kernel's block is not free in the model: the guess stands
OUT_MODEL_OOM = 3  # the model found no block; the kernel's was taken
OUT_LOST = 4  # neither: the allocation has no page
SRC_PCP = 1  # where the guess came from: a pcp list
SRC_BUDDY = 2  # the buddy lists

# where the kernel's block was in the model (diag column D_WHERE)
AT_PCP = 1
AT_BUDDY = 2
AT_ALLOCATED = 3
AT_RESERVED = 4
AT_NOWHERE = 5  # outside every zone

# diag columns
D_EVENT = 0
D_DECISION = 1
D_REC = 2
D_PRED = 3
D_INFO = 4
D_WHERE = 5  # AT_*
D_BLOCK = 6  # the free block (buddy or pcp) that holds the kernel's pfn
D_BLOCK_ORDER = 7
D_BLOCK_MT = 8  # its free list's (buddy) or pcp page's migratetype
D_POS = 9  # its position on that list, from the head (0: next to go)
D_LEN = 10  # the list's length
D_PRED_LIST_LEN = 11  # length of the pcp list the guess came from, after it
D_REC_PB_MT = 12  # pageblock migratetype of the kernel's pfn
D_PRED_PB_MT = 13  # ... of the guess
NF = 14
NR_DIAG = 32
WALK_MAX = 1 << 20  # list walks stop here (a list this long is reported as this long)


@njit(cache=True)
def _walk_back(prv, pfn):
    """Position of pfn on its list: how many entries precede it."""
    n = 0
    p = prv[pfn]
    while p >= 0 and n < WALK_MAX:
        n += 1
        p = prv[p]
    return n


@njit(cache=True)
def _list_len(nxt, head):
    n = 0
    p = head
    while p >= 0 and n < WALK_MAX:
        n += 1
        p = nxt[p]
    return n


@njit(cache=True)
def locate(buddy, pfn, row):
    """Where the model holds pfn: fills diag row columns D_WHERE .. D_LEN."""
    (nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends, zone_info, stats,
     fallbacks, cfg) = buddy
    row[D_BLOCK] = -1
    row[D_BLOCK_ORDER] = -1
    row[D_BLOCK_MT] = -1
    row[D_POS] = -1
    row[D_LEN] = -1
    zone = page_zonenum(zone_info, pfn) if pfn >= 0 else -1
    if zone < 0 or pfn >= bflags.shape[0]:
        row[D_WHERE] = AT_NOWHERE
        return
    row[D_REC_PB_MT] = pb_mt[pfn >> PAGEBLOCK_ORDER]
    for o in range(MAX_ORDER):
        head = pfn & ~((1 << o) - 1)
        f = bflags[head]
        if (f & (PG_BUDDY | PG_PCP)) and (order_[head] & 15) == o:
            row[D_BLOCK] = head
            row[D_BLOCK_ORDER] = o
            row[D_BLOCK_MT] = order_[head] >> 4
            row[D_POS] = _walk_back(prv, head)
            if f & PG_BUDDY:
                row[D_WHERE] = AT_BUDDY
                row[D_LEN] = free_count[_lid(zone, o, order_[head] >> 4)]
            else:
                row[D_WHERE] = AT_PCP
                row[D_LEN] = _list_len(nxt, _list_head(prv, head))
            return
    row[D_WHERE] = AT_RESERVED if bflags[pfn] & PG_RESERVED else AT_ALLOCATED


@njit(cache=True)
def unalloc(buddy, pfn, order, mt, src):
    """Undo alloc_pages() of [pfn, pfn + 2^order): back where it came from."""
    (nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends, zone_info, stats,
     fallbacks, cfg) = buddy
    zone = page_zonenum(zone_info, pfn)
    bflags[pfn] &= ~PG_HEAD
    for p in range(pfn, pfn + (1 << order)):
        bflags[p] &= ~PG_LRU
    stats[S_PGALLOC + zone] -= 1 << order
    stats[S_NR_ALLOC] -= 1
    if src == SRC_PCP:  # rmqueue_pcplist() took the head of this list
        pcp_mt = pb_mt[pfn >> PAGEBLOCK_ORDER]
        order_[pfn] = order | (pcp_mt << 4)
        pindex = order_to_pindex(cfg, mt if mt != MIGRATE_HIGHATOMIC else MIGRATE_MOVABLE, order)
        _list_add(nxt, prv, pcp_ends, zone * PCP_STRIDE + pindex, pfn, False)
        bflags[pfn] |= PG_PCP
        zone_info[zone, Z_PCP_COUNT] += 1 << order
    else:
        __free_one_page(nxt, prv, order_, bflags, pb_mt, free_ends, free_count, zone_info, stats,
                        pfn, zone, order, pb_mt[pfn >> PAGEBLOCK_ORDER], FPI_NONE)


@njit(cache=True)
def _list_head(prv, pfn):
    """The first entry of the list pfn is on."""
    while prv[pfn] >= 0:
        pfn = prv[pfn]
    return pfn


@njit(cache=True)
def _pcp_list_of(prv, pcp_ends, zone, pfn):
    """The pcp list (pid) pfn is on, or -1."""
    first = _list_head(prv, pfn)
    for j in range(zone * PCP_STRIDE, (zone + 1) * PCP_STRIDE):
        if pcp_ends[j, 0] == first:
            return j
    return -1


@njit(cache=True)
def _drain_pcp_block(buddy, zone, pid, head):
    """free_pcppages_bulk() of one pcp block (on list pid): into the buddy lists."""
    (nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends, zone_info, stats,
     fallbacks, cfg) = buddy
    o = order_[head] & 15
    _list_del(nxt, prv, pcp_ends, pid, head)
    bflags[head] &= ~PG_PCP
    zone_info[zone, Z_PCP_COUNT] -= 1 << o
    __free_one_page(nxt, prv, order_, bflags, pb_mt, free_ends, free_count, zone_info, stats,
                    head, zone, o, order_[head] >> 4, FPI_NONE)


@njit(cache=True)
def drain_pcp_range(buddy, zone, pfn, order):
    """The pcp blocks that hold any page of [pfn, pfn + 2^order) go back to the buddy
    lists: where the kernel's pcp lists held fewer pages than the model's (the kernel
    took the block from its buddy lists), the model's extra pcp pages are drained."""
    prv = buddy[1]
    order_ = buddy[2]
    bflags = buddy[3]
    pcp_ends = buddy[7]
    for o in range(1, 4):  # a pcp block of order <= PAGE_ALLOC_COSTLY_ORDER around pfn
        head = pfn & ~((1 << o) - 1)
        if head < pfn and (bflags[head] & PG_PCP) and (order_[head] & 15) == o:
            pid = _pcp_list_of(prv, pcp_ends, zone, head)
            if pid >= 0:
                _drain_pcp_block(buddy, zone, pid, head)
    for p in range(pfn, pfn + (1 << order)):
        if bflags[p] & PG_PCP:
            pid = _pcp_list_of(prv, pcp_ends, zone, p)
            if pid >= 0:
                _drain_pcp_block(buddy, zone, pid, p)


@njit(cache=True)
def on_pcp_list(buddy, pfn, order, head_of):
    """Is the block [pfn, 2^order) on the same pcp list as page head_of?"""
    bflags = buddy[3]
    if pfn < 0 or pfn >= bflags.shape[0] or not (bflags[pfn] & PG_PCP) \
            or (buddy[2][pfn] & 15) != order:
        return False
    zone = page_zonenum(buddy[8], pfn)
    return zone >= 0 and _pcp_list_of(buddy[1], buddy[7], zone, pfn) == \
        _pcp_list_of(buddy[1], buddy[7], zone, head_of)


@njit(cache=True)
def drain_pcp_list(buddy, head_of):
    """free_pcppages_bulk() of every block on the pcp list page head_of is on."""
    zone = page_zonenum(buddy[8], head_of)
    pid = _pcp_list_of(buddy[1], buddy[7], zone, head_of)
    if pid < 0:
        return
    pcp_ends = buddy[7]
    while pcp_ends[pid, 1] >= 0:
        _drain_pcp_block(buddy, zone, pid, pcp_ends[pid, 1])  # list_last_entry(), as it does


@njit(cache=True)
def rotate_pcp_before(buddy, head_of, pfn):
    """Move the blocks ahead of pfn on the pcp list page head_of is on to its tail."""
    nxt, prv, pcp_ends = buddy[0], buddy[1], buddy[7]
    zone = page_zonenum(buddy[8], head_of)
    pid = _pcp_list_of(prv, pcp_ends, zone, head_of)
    if pid < 0:
        return
    while pcp_ends[pid, 0] >= 0 and pcp_ends[pid, 0] != pfn:
        first = pcp_ends[pid, 0]
        _list_del(nxt, prv, pcp_ends, pid, first)
        _list_add(nxt, prv, pcp_ends, pid, first, True)


@njit(cache=True)
def take(buddy, pfn, order, mt):
    """Take the block [pfn, pfn + 2^order) the kernel allocated out of the model's
    free lists: a pcp list's block of that order, or any buddy block holding it
    (claim_block()). 0, or -1 when it is not free there."""
    (nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends, zone_info, stats,
     fallbacks, cfg) = buddy
    zone = page_zonenum(zone_info, pfn)
    if zone < 0 or pfn + (1 << order) > bflags.shape[0]:
        return -1
    if bflags[pfn] & PG_PCP and (order_[pfn] & 15) == order:
        pid = _pcp_list_of(prv, pcp_ends, zone, pfn)
        if pid < 0:
            return -1
        _list_del(nxt, prv, pcp_ends, pid, pfn)
        bflags[pfn] &= ~PG_PCP
        zone_info[zone, Z_PCP_COUNT] -= 1 << order
    else:
        for p in range(pfn, pfn + (1 << order)):
            if bflags[p] & PG_RESERVED:
                return -1  # claim_block() would hand it over: the model says reserved
        drain_pcp_range(buddy, zone, pfn, order)
        for o in range(order, MAX_ORDER):
            head = pfn & ~((1 << o) - 1)
            if (bflags[head] & PG_BUDDY) and (order_[head] & 15) == o:
                blk_mt = order_[head] >> 4
                if blk_mt != mt and blk_mt < MIGRATE_PCPTYPES and mt < MIGRATE_PCPTYPES:
                    # another type's block: the kernel reached it through
                    # __rmqueue_fallback(), which steal_suitable_fallback()s it first
                    steal_suitable_fallback(nxt, prv, order_, bflags, pb_mt, free_ends,
                                            free_count, zone_info, stats, head, zone, mt,
                                            can_steal_fallback(o, mt))
                break
        if claim_block(nxt, prv, order_, bflags, pb_mt, free_ends, free_count, pcp_ends,
                       zone_info, stats, cfg, pfn, order) != 0:
            return -1  # (claim_block() took the pages off NR_FREE_PAGES)
    pb = pfn >> PAGEBLOCK_ORDER
    if (guess_source(buddy, order) == SRC_PCP and pb_mt[pb] != mt and mt < MIGRATE_PCPTYPES
            and pb_mt[pb] < MIGRATE_PCPTYPES):
        # the kernel found the block on its pcp list of type mt, where free_unref_page()
        # files a page by its pageblock's type: the pageblock was mt's (a steal the
        # model did not make, or one made before the trace)
        pb_mt[pb] = mt
    prep_new_page(order_, bflags, pfn, order, mt)
    stats[S_PGALLOC + zone] += 1 << order
    stats[S_NR_ALLOC] += 1
    return 0


@njit(cache=True)
def guess_source(buddy, order):
    """Where alloc_pages() takes a block of this order from: rmqueue() goes to the
    pcp lists for pcp_allowed_order() (their refill failing is out of memory)."""
    cfg = buddy[11]
    return SRC_PCP if cfg[C_PCP] != 0 and pcp_allowed_order(cfg, order) else SRC_BUDDY


@njit(cache=True)
def shadow_decide(i, pred, rec, zone, order, mt, vmalloc, buddy, sh):
    """Log the guess `pred` against the kernel's `rec` and leave the model holding
    the kernel's block where it can; returns the pfn the allocation now has."""
    _, d_ev, d_rec, d_pred, d_info, d_n, diag = sh
    src = guess_source(buddy, order)
    n = d_n[0]
    info = order | (mt << 4) | (zone << 8) | (src << 16) | (vmalloc << 20)
    if pred == rec:
        out = OUT_HIT
        got = pred
    else:
        k = 0  # 1 + the diag row this divergence gets (0: the rows are full)
        for j in range(diag.shape[0]):
            if diag[j, D_EVENT] < 0:
                k = j + 1
                break
        if k > 0:  # the model's state at one of the first divergences, before any change
            row = diag[k - 1]
            row[D_EVENT] = i
            row[D_DECISION] = n
            row[D_REC] = rec
            row[D_PRED] = pred
            locate(buddy, rec, row)
            row[D_PRED_PB_MT] = buddy[4][pred >> PAGEBLOCK_ORDER] if pred >= 0 else -1
            row[D_PRED_LIST_LEN] = -1
            if pred >= 0 and src == SRC_PCP:
                zn = page_zonenum(buddy[8], pred)
                pid = zn * PCP_STRIDE + order_to_pindex(buddy[11], mt, order)
                row[D_PRED_LIST_LEN] = _list_len(buddy[0], buddy[7][pid, 0])
        if pred >= 0:
            unalloc(buddy, pred, order, mt, src)
            if src == SRC_PCP and not on_pcp_list(buddy, rec, order, pred):
                # the kernel's block was not on its pcp list: that list was empty and
                # rmqueue_pcplist() refilled it from the buddy lists, so the pages the
                # model holds there are not the kernel's: drain them, as a refill
                # from the same lists would have taken them
                drain_pcp_list(buddy, pred)
            elif src == SRC_PCP:
                # the kernel's block was deeper on the list the model took its head
                # from: the blocks before it were not at the head of the kernel's list
                # (pages the model has free and the kernel had not, or a different
                # order). They go to the tail, where free_pcppages_bulk() drains first,
                # so the model's next guess is the kernel's next block
                rotate_pcp_before(buddy, pred, rec)
        if take(buddy, rec, order, mt) == 0:
            out = OUT_MOVED if pred >= 0 else OUT_MODEL_OOM
            got = rec
        elif pred >= 0 and take(buddy, pred, order, mt) == 0:
            out = OUT_NOT_FREE
            got = pred
        else:
            out = OUT_LOST
            got = -1
        if k > 0:
            diag[k - 1, D_INFO] = info | (out << 12)
    if n < d_ev.shape[0]:
        d_ev[n] = i
        d_rec[n] = rec
        d_pred[n] = pred
        d_info[n] = info | (out << 12)
        d_n[0] = n + 1
    return got


@njit(cache=True)
def shadow_follow(pred, rec, order, mt, buddy):
    """An allocation the trace does not show but whose pfn it knows (a rebuilt
    alloc_pages_bulk() page): the model gives back its guess and takes the kernel's
    block, unscored. Returns the pfn the allocation now has."""
    if pred == rec:
        return pred
    if pred >= 0:
        unalloc(buddy, pred, order, mt, guess_source(buddy, order))
    if take(buddy, rec, order, mt) == 0:
        return rec
    if pred >= 0 and take(buddy, pred, order, mt) == 0:
        return pred
    return -1
