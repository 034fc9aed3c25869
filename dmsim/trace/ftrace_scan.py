"""The hot loop of the ftrace reader, in numba: tokenise every kmem and CPA
event line of a chunk of the buffer into compact rows, and leave every other
line (headers, e820, markers, anything odd) to the Python reader, which owns
the error messages. Parsing must not dominate a replay.

A chunk is whole lines (the reader cuts the stream after a newline). Each kmem
and CPA line is read once, left to right: the `<timestamp>: <event>: ` shape,
the event name, then its fields in the order the kernel prints them (the fast
path); a line whose fields come in another order goes through a key search
(_fields), and a line neither takes is the Python reader's.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..core.constants import (
    CPA_ARRAY,
    CPA_COLLAPSE,
    CPA_PAGES_ARRAY,
    KERNEL_IMAGE_SIZE,
    PAGE_SHIFT,
    START_KERNEL_MAP,
)
from .events import (
    CPAF_COLLAPSE,
    CPAF_PRIMARY,
    EV_ALLOC,
    EV_CPA,
    EV_FREE,
    EV_VCPA,
    FREE_DEFERRED_INIT,
)
from .scan_util import count_lines, find

SCAN_ALLOC = 2  # kmem:mm_page_alloc
SCAN_FREE = 3  # kmem:mm_page_free, kmem:mm_page_free_batched
SCAN_CPA = 4  # the dmsim/cpa kprobe

NAMES = (b"mm_page_alloc", b"mm_page_free", b"mm_page_free_batched", b"cpa", b"dmsim/cpa")
NAME_FREE_BATCHED = 2  # its fields[3] is 1: a page free_unref_page_list() traced twice
NAME_KIND = (SCAN_ALLOC, SCAN_FREE, SCAN_FREE, SCAN_CPA, SCAN_CPA)
# fields per kind, in column order of the output array, and in the order the
# kernel prints them (TP_printk of include/trace/events/kmem.h; the kprobe's
# definition in the recording contract): the fast path expects this order
KEYS_KMEM = (b"pfn", b"order", b"migratetype")
KEYS_CPA = (b"vaddr", b"numpages", b"set", b"clr", b"flags", b"primary", b"pob", b"pb")
# the longest event line the scanner takes (real ones are under 300 bytes); a
# longer one is the Python reader's, which rejects it
MAX_EVENT_LINE = 1024


def _table(words) -> np.ndarray:
    t = np.zeros((len(words), 24), np.uint8)
    for i, w in enumerate(words):
        t[i, 0] = len(w)
        t[i, 1:1 + len(w)] = np.frombuffer(w, np.uint8)
    return t


NAME_TABLE = _table(NAMES)
NAME_KINDS = np.array(NAME_KIND, np.int8)
KMEM_TABLE = _table(KEYS_KMEM)
CPA_TABLE = _table(KEYS_CPA)
# which fields an event must have: kmem pfn; cpa all but flags and pb
KMEM_REQUIRED = np.array([1, 0, 0], np.int8)
CPA_REQUIRED = np.array([1, 1, 1, 1, 0, 1, 1, 0], np.int8)
GFP_FLAGS = np.frombuffer(b"gfp_flags=", np.uint8).copy()
# per byte: its hex digit value, or -1; 1 for the bytes of a gfp_flags value [A-Za-z0-9_|]
HEX_VALUE = np.full(256, -1, np.int8)
for _i, _c in enumerate(b"0123456789abcdef"):
    HEX_VALUE[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    HEX_VALUE[_c] = 10 + _i
SPECIAL = np.zeros(256, np.bool_)  # what the search for the timestamp's colon stops at
SPECIAL[10] = SPECIAL[58] = SPECIAL[91] = True  # newline, ':', '['
GFP_CHAR = np.zeros(256, np.bool_)
for _c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_|":
    GFP_CHAR[_c] = True
GFP_DMA = np.frombuffer(b"GFP_DMA", np.uint8).copy()


@njit(cache=True, inline="always")
def _is_digit(c):
    return 48 <= c <= 57


@njit(cache=True, inline="always")
def _blank(c):
    return c == 32 or c == 9 or c == 13


@njit(cache=True)
def _match(buf, pos, end, table, row):
    n = table[row, 0]
    if pos + n > end:
        return False
    for k in range(n):
        if buf[pos + k] != table[row, 1 + k]:
            return False
    return True


@njit(cache=True)
def _number(buf, pos, end):
    """Parse 0x-hex or decimal (optionally negative) at pos, ending at a blank, a
    newline or end: (value as uint64, position after it, ok). At most 16 hex or 19
    decimal digits (the value fits in 64 bits)."""
    neg = False
    if pos < end and buf[pos] == 45:  # '-'
        neg = True
        pos += 1
    v = np.uint64(0)
    n = 0
    if pos + 1 < end and buf[pos] == 48 and (buf[pos + 1] == 120 or buf[pos + 1] == 88):
        pos += 2
        while pos < end:
            d = HEX_VALUE[buf[pos]]
            if d < 0:
                break
            v = (v << np.uint64(4)) | np.uint64(d)
            n += 1
            pos += 1
        ok = 0 < n <= 16
    else:
        while pos < end and _is_digit(buf[pos]):
            v = v * np.uint64(10) + np.uint64(buf[pos] - 48)
            n += 1
            pos += 1
        ok = 0 < n <= 19
    if ok and pos < end and not _blank(buf[pos]) and buf[pos] != 10:
        ok = False  # trailing junk
    if neg:
        v = np.uint64(0) - v
    return v, pos, ok


@njit(cache=True)
def _fields(buf, s, e, keys, required, out, row):
    """key=value pairs of the payload [s, e), in any order, into out[row, :];
    False if a required key is missing, a value is not a number, or a token is
    not key=value (but for a leading `(<probe site>)`)."""
    nkeys = keys.shape[0]
    seen = 0  # bit r: key r was found
    pos = s
    while pos < e:
        while pos < e and _blank(buf[pos]):
            pos += 1
        if pos == e:
            break
        t = pos  # a token: to the next blank
        eq = -1
        while t < e and not _blank(buf[t]):
            if buf[t] == 61 and eq < 0:  # '='
                eq = t
            t += 1
        if eq < 0:
            if not (buf[pos] == 40 and seen == 0):  # '('
                return False
        else:
            for r in range(nkeys):
                if keys[r, 0] == eq - pos and _match(buf, pos, eq, keys, r):
                    v, _, ok = _number(buf, eq + 1, t)
                    if not ok:
                        return False
                    out[row, r] = v
                    seen |= 1 << r
                    break
        pos = t
    for r in range(nkeys):
        if required[r] and not (seen >> r) & 1:
            return False
    return True


@njit(cache=True)
def _ordered(buf, p, e, keys, nkeys, out, row):
    """The fast path: ` key=value` for the first nkeys keys, in table order, from p
    (after a blank). Returns the position after the last value, or -1."""
    for r in range(nkeys):
        while p < e and buf[p] == 32:
            p += 1
        if not _match(buf, p, e, keys, r):
            return -1
        p += keys[r, 0]
        if p >= e or buf[p] != 61:
            return -1
        v, p, ok = _number(buf, p + 1, e)
        if not ok:
            return -1
        out[row, r] = v
    return p


@njit(cache=True)
def _gfp_zone(buf, p, end):
    """gfp_zone() of the gfp_flags value at [p, end): 0 DMA, 1 DMA32, 2 Normal. The
    value is symbolic (GFP_DMA32, __GFP_DMA, ... joined by |) or hex (__GFP_DMA
    0x01, __GFP_DMA32 0x04, include/linux/gfp_types.h)."""
    if end - p > 2 and buf[p] == 48 and buf[p + 1] == 120:
        v, _, ok = _number(buf, p, end)
        if ok and v & np.uint64(1):
            return np.uint64(0)
        if ok and v & np.uint64(4):
            return np.uint64(1)
        return np.uint64(2)
    zone = 2
    q = find(buf, p, end, GFP_DMA)
    while q >= 0:
        nxt = q + GFP_DMA.shape[0]
        if nxt + 2 <= end and buf[nxt] == 51 and buf[nxt + 1] == 50:
            zone = min(zone, 1)  # GFP_DMA32 / __GFP_DMA32
        elif nxt == end or buf[nxt] == 124:  # GFP_DMA / __GFP_DMA, then | or the end
            zone = 0
        q = find(buf, q + 1, end, GFP_DMA)
    return np.uint64(zone)


@njit(cache=True)
def _gfp_field(buf, s, e):
    """gfp_zone() of a gfp_flags= field anywhere in [s, e) (Normal without one)."""
    p = find(buf, s, e, GFP_FLAGS)
    if p < 0:
        return np.uint64(2)
    p += GFP_FLAGS.shape[0]
    end = p
    while end < e and buf[end] != 32:
        end += 1
    return _gfp_zone(buf, p, end)


TASK_IDLE = 1  # fields[4] of a kmem line: the idle task (pid 0), start_kernel() on the boot CPU
TASK_DEFERRED_INIT = 2  # ... a pgdatinit<nid> kthread: deferred_init_memmap()
PGDATINIT = np.frombuffer(b"pgdatinit", np.uint8)


@njit(cache=True)
def _task(buf, s, bracket):
    """Who logged the line, from its TASK-PID (the tokens before the first '[', at
    bracket, -1: none): TASK_IDLE when the pid is 0, TASK_DEFERRED_INIT for a
    pgdatinit kthread, else 0."""
    if bracket < 0:
        return np.uint64(0)
    q = bracket - 1
    while q > s and buf[q] == 32:
        q -= 1
    if q > s and buf[q] == 48 and buf[q - 1] == 45:  # "-0"
        return np.uint64(TASK_IDLE)
    t = s
    while t < q and buf[t] == 32:
        t += 1
    if q - t >= PGDATINIT.shape[0]:
        for j in range(PGDATINIT.shape[0]):
            if buf[t + j] != PGDATINIT[j]:
                return np.uint64(0)
        return np.uint64(TASK_DEFERRED_INIT)
    return np.uint64(0)


@njit(cache=True)
def _line_end(buf, p, n):
    """The position of the newline ending the line p is in (n: none)."""
    while p < n and buf[p] != 10:
        p += 1
    return p


@njit(cache=True)
def _kmem_fast(buf, p, n, nk, batched, keys, out, row):
    """A kmem payload from p (after the event name's colon) in the kernel's field
    order: `page=<any> pfn=N order=N[ migratetype=N gfp_flags=<flags>]`, then
    nothing but blanks. Returns the position of the line's end, or -1."""
    while p < n and buf[p] == 32:
        p += 1
    if not (n - p > 5 and buf[p] == 112 and buf[p + 1] == 97 and buf[p + 4] == 61):  # "page="
        return -1
    while p < n and buf[p] != 32 and buf[p] != 10:
        p += 1
    q = _ordered(buf, p, n, keys, 3 if nk == SCAN_ALLOC else 2, out, row)
    if q >= 0 and nk == SCAN_ALLOC:
        # ` gfp_flags=` then a value of [A-Za-z0-9_|] (symbolic, hex or "none")
        while q < n and buf[q] == 32:
            q += 1
        if _match_lit(buf, q, n, GFP_FLAGS):
            v0 = q + GFP_FLAGS.shape[0]
            q = v0
            dma = False  # (the common case: no "DMA" in the flags, Normal)
            while q < n and GFP_CHAR[buf[q]]:
                dma |= buf[q] == 68  # 'D'
                q += 1
            out[row, 3] = _gfp_zone(buf, v0, q) if dma or (q - v0 > 2 and buf[v0 + 1] == 120) else np.uint64(2)
        else:
            q = -1
    q = _rest_blank(buf, q, n)
    if q >= 0 and nk == SCAN_FREE:
        out[row, 3] = batched
    return q


@njit(cache=True)
def _kmem(buf, ps, e, nk, batched, keys, req, out, row):
    """The fields of a kmem line's payload [ps, e), in any order, into out[row];
    False: not taken."""
    if not _fields(buf, ps, e, keys, req, out, row):
        return False
    if nk == SCAN_ALLOC:
        out[row, 3] = _gfp_field(buf, ps, e)
    else:
        out[row, 3] = batched
    return True


@njit(cache=True)
def _match_lit(buf, pos, end, lit):
    n = lit.shape[0]
    if pos + n > end:
        return False
    for k in range(n):
        if buf[pos + k] != lit[k]:
            return False
    return True


@njit(cache=True)
def _cpa_fast(buf, p, n, keys, out, row):
    """A CPA kprobe payload from p in the kprobe's field order: `(<probe site>)
    vaddr=.. numpages=.. set=.. clr=.. flags=.. primary=.. pob=.. pb=..`, then
    nothing but blanks. Returns the position of the line's end, or -1."""
    while p < n and buf[p] == 32:
        p += 1
    if not (p < n and buf[p] == 40):  # '(' the probe site
        return -1
    while p < n and buf[p] != 32 and buf[p] != 10:
        p += 1
    return _rest_blank(buf, _ordered(buf, p, n, keys, keys.shape[0], out, row), n)


@njit(cache=True, inline="always")
def _rest_blank(buf, q, n):
    """The position of the line's end when only blanks follow q, else -1 (and for q -1)."""
    if q < 0:
        return -1
    while q < n and _blank(buf[q]):
        q += 1
    if q < n and buf[q] != 10:
        return -1
    return q


@njit(cache=True, nogil=True)
def scan_chunk(buf, name_table, name_kinds, kmem_keys, kmem_req, cpa_keys, cpa_req):
    """Tokenise the lines of buf (whole lines; the last may lack its newline).

    Returns (nlines, kind int8[m], line int64[m], fields uint64[m, 8], other int64[k, 2]):
    the m kmem and CPA events in line order (line: index in the chunk), and the
    k other non-blank lines as (line index, start offset); a line ends at the next
    newline or the end of buf."""
    n = buf.shape[0]
    cap = count_lines(buf)  # (a vectorised loop: a small part of the time)
    kind = np.empty(cap, np.int8)
    line = np.empty(cap, np.int64)
    fields = np.zeros((cap, 8), np.uint64)
    other = np.empty((1024, 2), np.int64)
    m = 0
    k = 0
    li = 0
    s = 0
    while s < n:
        taken = False
        e = -1
        first = s
        while first < n and _blank(buf[first]):
            first += 1
        if first < n and buf[first] != 10 and buf[first] != 35:  # '#'
            # find "<digits>.<digits>: <name>:", and the first '[' on the way
            p = first + 1
            bracket = -1
            found = False
            while p + 1 < n:
                c = buf[p]
                if not SPECIAL[c]:  # (most bytes: none of the ones looked for)
                    p += 1
                    continue
                if c == 10:
                    break
                if c == 91 and bracket < 0:
                    bracket = p
                if c == 58 and buf[p + 1] == 32 and _is_digit(buf[p - 1]):
                    q = p - 1
                    while q > s and _is_digit(buf[q]):
                        q -= 1
                    if buf[q] == 46 and q > s and _is_digit(buf[q - 1]):
                        found = True
                        break
                p += 1
            if found:
                ns = p + 2
                ne = ns
                while ne < n and buf[ne] != 58 and buf[ne] != 32 and buf[ne] != 10:
                    ne += 1
                if ne < n and buf[ne] == 58:
                    for r in range(name_table.shape[0]):
                        if name_table[r, 0] == ne - ns and _match(buf, ns, n, name_table, r):
                            nk = name_kinds[r]
                            batched = np.uint64(1 if r == NAME_FREE_BATCHED else 0)
                            if nk == SCAN_CPA:
                                e = _cpa_fast(buf, ne + 1, n, cpa_keys, fields, m)
                            else:
                                e = _kmem_fast(buf, ne + 1, n, nk, batched, kmem_keys, fields, m)
                            if e >= 0:
                                taken = True
                            else:  # fields in another order: the key search
                                for c in range(8):
                                    fields[m, c] = 0
                                e = _line_end(buf, ne, n)
                                if nk == SCAN_CPA:
                                    taken = _fields(buf, ne + 1, e, cpa_keys, cpa_req, fields, m)
                                else:
                                    taken = _kmem(buf, ne + 1, e, nk, batched, kmem_keys,
                                                  kmem_req, fields, m)
                            if taken and e - s > MAX_EVENT_LINE:
                                taken = False  # not a line the kernel printed
                            if taken:
                                if nk != SCAN_CPA:
                                    fields[m, 4] = _task(buf, s, bracket)
                                kind[m] = nk
                                line[m] = li
                                m += 1
                            else:
                                for c in range(8):
                                    fields[m, c] = 0
                            break
        if e < 0:
            e = _line_end(buf, first, n)
        if not taken and first < e:
            if k == other.shape[0]:
                grown = np.empty((2 * k, 2), np.int64)
                grown[:k] = other
                other = grown
            other[k, 0] = li
            other[k, 1] = s
            k += 1
        li += 1
        s = e + 1
    return li, kind[:m].copy(), line[:m].copy(), fields[:m].copy(), other[:k].copy()


def scan(buf: np.ndarray):
    """scan_chunk() of a uint8 array with the reader's tables."""
    return scan_chunk(buf, NAME_TABLE, NAME_KINDS, KMEM_TABLE, KMEM_REQUIRED, CPA_TABLE,
                      CPA_REQUIRED)


# translate_chunk() row status
ROW_OK = 0
ROW_DROPPED = 1  # a CPA call on a direct-map address past RAM (counted) or a duplicate free
ROW_BAD_ORDER = 2  # order above MAX_ORDER
ROW_NOT_RAM = 3  # a block outside every RAM range of the e820 map
_CPA_ARRAY_BITS = np.uint64(CPA_ARRAY | CPA_PAGES_ARRAY)


@njit(cache=True, nogil=True)
def translate_chunk(kind, fields, highmap_vpfn, ram_start, ram_end, max_order, last):
    """Turn one chunk's scanned rows into event columns, in row order.

    CPA: the virtual address becomes a vpfn (direct map: pob-relative; the kernel
    image's high map: the slot at highmap_vpfn; vmalloc space: EV_VCPA with the
    address's page, a marker whose alias calls do the work); a direct-map address
    past RAM is dropped and counted; a CPA_ARRAY / CPA_PAGES_ARRAY call walks an
    array of addresses and the kprobe fetches only the first (+0(+0(%di))), so only
    that page is replayed. kmem: the block must be order <= max_order and inside one
    RAM range [ram_start, ram_end) (pfns); mm_page_free_batched duplicates are
    dropped (mark_duplicate_frees(), `last` carried from chunk to chunk).

    Returns (status int8[m], ev_kind, arg0, arg1, mset, mclr, flags, pid0 bool[m],
    counts int64[4]: vmalloc calls, outside RAM, array calls, duplicate frees)."""
    m = kind.shape[0]
    status = np.zeros(m, np.int8)
    ev = np.zeros(m, np.uint8)
    a0 = np.zeros(m, np.int64)
    a1 = np.zeros(m, np.int64)
    ms = np.zeros(m, np.uint64)
    mc = np.zeros(m, np.uint64)
    fl = np.zeros(m, np.int32)
    pid0 = np.zeros(m, np.bool_)
    counts = np.zeros(4, np.int64)
    u = np.uint64
    direct_end = u(highmap_vpfn) << u(PAGE_SHIFT)
    for i in range(m):
        f = fields[i]
        if kind[i] == SCAN_CPA:
            vaddr = f[0] & ~u(0xFFF)  # change_page_attr_set_clr() aligns down
            off_direct = vaddr - f[6]  # pob; wraps (huge) below the direct map
            off_high = vaddr - u(START_KERNEL_MAP)
            direct = off_direct < direct_end
            high = off_high < u(KERNEL_IMAGE_SIZE)
            if not direct and off_direct < u(1 << 46):
                counts[1] += 1  # a direct-map address past RAM
                status[i] = ROW_DROPPED
                continue
            keep = direct or high
            array = (f[4] & _CPA_ARRAY_BITS) != u(0)
            a1[i] = 1 if array else np.int64(f[1])
            if array and keep:
                counts[2] += 1
            flags = CPAF_PRIMARY if f[5] != u(0) else 0
            # a 6.15+ kernel's set_memory_rox() passes CPA_COLLAPSE in cpa->flags
            if f[4] & u(CPA_COLLAPSE):
                flags |= CPAF_COLLAPSE
            fl[i] = flags
            ms[i] = f[2]
            mc[i] = f[3]
            if direct:
                ev[i] = EV_CPA
                a0[i] = np.int64(off_direct >> u(PAGE_SHIFT))
            elif high:
                ev[i] = EV_CPA
                a0[i] = highmap_vpfn + np.int64(off_high >> u(PAGE_SHIFT))
            else:  # vmalloc space
                ev[i] = EV_VCPA
                a0[i] = np.int64(vaddr >> u(PAGE_SHIFT))
                counts[0] += 1
        else:
            pfn = f[0]
            order = f[1]
            if order > u(max_order):
                status[i] = ROW_BAD_ORDER
                continue
            end = pfn + (u(1) << order)
            r = np.searchsorted(ram_start, pfn, side="right") - 1
            if r < 0 or end > ram_end[r] or pfn >= u(1 << 52):
                status[i] = ROW_NOT_RAM
                continue
            p = np.int64(pfn)
            code = 1 if kind[i] == SCAN_ALLOC else 2 + np.int64(f[3])
            if code == 3 and last[p] == 2:
                # free_unref_page_list() traced this page in free_pages_prepare()
                last[p] = 3
                counts[3] += 1
                status[i] = ROW_DROPPED
                continue
            last[p] = code
            a0[i] = p
            a1[i] = np.int64(order)
            if kind[i] == SCAN_ALLOC:
                ev[i] = EV_ALLOC
                fl[i] = np.int32(f[2] | f[3] << u(8))  # migratetype | gfp_zone() << 8
            else:
                ev[i] = EV_FREE
                if f[4] == u(TASK_DEFERRED_INIT):  # deferred_free_range()'s
                    fl[i] = FREE_DEFERRED_INIT
            pid0[i] = f[4] == u(TASK_IDLE)
    return status, ev, a0, a1, ms, mc, fl, pid0, counts
