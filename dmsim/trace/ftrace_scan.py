"""The hot loop of the ftrace reader, in numba: tokenise every kmem and CPA
event line of the buffer into arrays, and leave every other line (headers,
e820, markers, anything odd) to the Python reader, which owns the error
messages. Parsing must not dominate a replay; at ~1 us a line in Python it did.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .scan_util import count_lines, find, hex_digit

SCAN_BLANK = 0
SCAN_OTHER = 1  # the Python reader looks at it
SCAN_ALLOC = 2  # kmem:mm_page_alloc
SCAN_FREE = 3  # kmem:mm_page_free, kmem:mm_page_free_batched
SCAN_CPA = 4  # the dmsim/cpa kprobe

NAMES = (b"mm_page_alloc", b"mm_page_free", b"mm_page_free_batched", b"cpa", b"dmsim/cpa")
NAME_FREE_BATCHED = 2  # its fields[3] is 1: a page free_unref_page_list() traced twice
NAME_KIND = (SCAN_ALLOC, SCAN_FREE, SCAN_FREE, SCAN_CPA, SCAN_CPA)
# fields per kind, in column order of the output array
KEYS_KMEM = (b"pfn", b"order", b"migratetype")
KEYS_CPA = (b"vaddr", b"numpages", b"set", b"clr", b"flags", b"primary", b"pob", b"pb")


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


@njit(cache=True)
def _is_digit(c):
    return 48 <= c <= 57


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
    """Parse 0x-hex or decimal (optionally negative) at pos: (value as uint64, ok)."""
    neg = False
    if pos < end and buf[pos] == 45:  # '-'
        neg = True
        pos += 1
    v = np.uint64(0)
    ok = False
    if pos + 1 < end and buf[pos] == 48 and (buf[pos + 1] == 120 or buf[pos + 1] == 88):
        pos += 2
        while pos < end:
            d = hex_digit(buf[pos])
            if d < 0:
                break
            v = (v << np.uint64(4)) | np.uint64(d)
            ok = True
            pos += 1
    else:
        while pos < end and _is_digit(buf[pos]):
            v = v * np.uint64(10) + np.uint64(buf[pos] - 48)
            ok = True
            pos += 1
    if ok and pos < end and buf[pos] != 32 and buf[pos] != 9 and buf[pos] != 13:
        ok = False  # trailing junk
    if neg:
        v = np.uint64(0) - v
    return v, ok


@njit(cache=True)
def _fields(buf, s, e, keys, required, out, li):
    """key=value pairs of the payload [s, e) into out[li, :]; False if a
    required key is missing or a value is not a number."""
    nkeys = keys.shape[0]
    seen = 0  # bit r: key r was found
    pos = s
    while pos < e:
        # a token starts after a space
        if pos == s or buf[pos - 1] == 32:
            c0 = buf[pos]
            for r in range(nkeys):
                n = keys[r, 0]
                if keys[r, 1] != c0:
                    continue
                if _match(buf, pos, e, keys, r) and pos + n < e and buf[pos + n] == 61:  # '='
                    v, ok = _number(buf, pos + n + 1, e)
                    if not ok:
                        return False
                    out[li, r] = v
                    seen |= 1 << r
                    pos += n
                    break
        pos += 1
    for r in range(nkeys):
        if required[r] and not (seen >> r) & 1:
            return False
    return True


GFP_FLAGS = np.frombuffer(b"gfp_flags=", np.uint8)
GFP_DMA = np.frombuffer(b"GFP_DMA", np.uint8)


@njit(cache=True)
def _gfp_zone(buf, s, e):
    """gfp_zone() of the gfp_flags= field: 0 DMA, 1 DMA32, 2 Normal. The field is
    symbolic (GFP_DMA32, __GFP_DMA, ... joined by |) or hex (__GFP_DMA 0x01,
    __GFP_DMA32 0x04, include/linux/gfp_types.h)."""
    p = find(buf, s, e, GFP_FLAGS)
    if p < 0:
        return np.uint64(2)
    p += GFP_FLAGS.shape[0]
    end = p
    while end < e and buf[end] != 32:
        end += 1
    if end - p > 2 and buf[p] == 48 and buf[p + 1] == 120:
        v, ok = _number(buf, p, end)
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


TASK_IDLE = 1  # fields[4] of a kmem line: the idle task (pid 0), start_kernel() on the boot CPU
TASK_DEFERRED_INIT = 2  # ... a pgdatinit<nid> kthread: deferred_init_memmap()
PGDATINIT = np.frombuffer(b"pgdatinit", np.uint8)


@njit(cache=True)
def _task(buf, s, e):
    """Who logged the line, from its TASK-PID (the tokens before the first '['):
    TASK_IDLE when the pid is 0, TASK_DEFERRED_INIT for a pgdatinit kthread, else 0."""
    p = s
    while p < e and buf[p] != 91:  # '['
        p += 1
    q = p - 1
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
def scan_lines(buf, name_table, name_kinds, kmem_keys, kmem_req, cpa_keys, cpa_req):
    """(kind int8[n], start int64[n], fields uint64[n, 8]) for the n lines."""
    nlines = count_lines(buf)
    kind = np.zeros(nlines, np.int8)
    start = np.zeros(nlines + 1, np.int64)
    fields = np.zeros((nlines, 8), np.uint64)
    li = 0
    s = 0
    n = buf.shape[0]
    while li < nlines:
        e = s
        while e < n and buf[e] != 10:
            e += 1
        start[li] = s
        k = SCAN_BLANK
        # blank?
        blank = True
        for p in range(s, e):
            c = buf[p]
            if c != 32 and c != 9 and c != 13:
                blank = False
                break
        if not blank:
            k = SCAN_OTHER
            if buf[s] != 35:  # '#'
                # find "<digits>.<digits>: <name>: "
                p = s + 1
                while p + 1 < e:
                    if buf[p] == 58 and buf[p + 1] == 32 and _is_digit(buf[p - 1]):
                        q = p - 1
                        while q > s and _is_digit(buf[q]):
                            q -= 1
                        if buf[q] == 46 and q > s and _is_digit(buf[q - 1]):
                            break
                    p += 1
                if p + 1 < e:
                    ns = p + 2
                    ne = ns
                    while ne < e and buf[ne] != 58:
                        ne += 1
                    if ne + 1 <= e:
                        for r in range(name_table.shape[0]):
                            if name_table[r, 0] == ne - ns and _match(buf, ns, e, name_table, r):
                                nk = name_kinds[r]
                                if nk == SCAN_CPA:
                                    if _fields(buf, ne + 1, e, cpa_keys, cpa_req, fields, li):
                                        k = nk
                                elif _fields(buf, ne + 1, e, kmem_keys, kmem_req, fields, li):
                                    k = nk
                                    if nk == SCAN_ALLOC:
                                        fields[li, 3] = _gfp_zone(buf, ne + 1, e)
                                    elif r == NAME_FREE_BATCHED:
                                        fields[li, 3] = 1
                                    fields[li, 4] = _task(buf, s, ns)
                                break
        kind[li] = k
        li += 1
        s = e + 1
    start[nlines] = n + 1
    return kind, start, fields


def scan(data: bytes):
    buf = np.frombuffer(data, np.uint8)
    return scan_lines(buf, NAME_TABLE, NAME_KINDS, KMEM_TABLE, KMEM_REQUIRED, CPA_TABLE, CPA_REQUIRED)
