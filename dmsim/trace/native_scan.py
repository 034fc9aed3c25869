"""The hot loop of the native reader, in numba: event lines in the canonical
form write_native() produces (`cpa direct 0x.. N set=0x.. clr=0x..[ primary]
[ force_split]`, `alloc 0x.. N[ mt=N]`, `free 0x.. N`) become arrays; every other
line, and any line not exactly in that form, is left to the Python reader,
which checks it and owns the error messages.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .scan_util import count_lines, hex_digit

N_OTHER = 0
N_CPA_DIRECT = 1
N_CPA_HIGHMAP = 2
N_ALLOC = 3
N_FREE = 4


def _b(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), np.uint8)


P_CPA_DIRECT = _b("cpa direct ")
P_CPA_HIGHMAP = _b("cpa highmap ")
P_ALLOC = _b("alloc ")
P_FREE = _b("free ")
P_SET = _b("set=")
P_CLR = _b("clr=")
P_MT = _b("mt=")
P_PRIMARY = _b("primary")
P_FORCE = _b("force_split")


@njit(cache=True)
def _lit(buf, pos, end, lit):
    n = lit.shape[0]
    if pos + n > end:
        return -1
    for k in range(n):
        if buf[pos + k] != lit[k]:
            return -1
    return pos + n


@njit(cache=True)
def _hex(buf, pos, end):
    """0x<hex digits> ending at a space or the line end: (value, next pos) or -1."""
    if pos + 2 >= end or buf[pos] != 48 or buf[pos + 1] != 120:
        return np.uint64(0), -1
    pos += 2
    v = np.uint64(0)
    n = 0
    while pos < end and buf[pos] != 32:
        d = hex_digit(buf[pos])
        if d < 0:
            return np.uint64(0), -1
        if n == 16:
            return np.uint64(0), -1  # wider than 64 bits
        v = (v << np.uint64(4)) | np.uint64(d)
        n += 1
        pos += 1
    if n == 0:
        return np.uint64(0), -1
    return v, pos


@njit(cache=True)
def _dec(buf, pos, end):
    v = np.int64(0)
    n = 0
    while pos < end and buf[pos] != 32:
        c = buf[pos]
        if c < 48 or c > 57 or n == 18:
            return np.int64(0), -1
        v = v * 10 + (c - 48)
        n += 1
        pos += 1
    if n == 0:
        return np.int64(0), -1
    return v, pos


@njit(cache=True)
def _space(buf, pos, end):
    if pos < end and buf[pos] == 32:
        return pos + 1
    return -1


@njit(cache=True)
def scan_native(buf, p_direct, p_high, p_alloc, p_free, p_set, p_clr, p_mt, p_primary, p_force):
    """(kind int8[n], start int64[n+1], a0 uint64[n], a1 int64[n], mset, mclr, flags int32[n])."""
    nlines = count_lines(buf)
    kind = np.zeros(nlines, np.int8)
    start = np.zeros(nlines + 1, np.int64)
    a0 = np.zeros(nlines, np.uint64)
    a1 = np.zeros(nlines, np.int64)
    mset = np.zeros(nlines, np.uint64)
    mclr = np.zeros(nlines, np.uint64)
    flags = np.zeros(nlines, np.int32)
    s = 0
    n = buf.shape[0]
    for li in range(nlines):
        e = s
        while e < n and buf[e] != 10:
            e += 1
        start[li] = s
        k = N_OTHER
        p = _lit(buf, s, e, p_direct)
        pk = N_CPA_DIRECT
        if p < 0:
            p = _lit(buf, s, e, p_high)
            pk = N_CPA_HIGHMAP
        if p >= 0:
            v, p = _hex(buf, p, e)
            if p >= 0:
                p = _space(buf, p, e)
            if p >= 0:
                cnt, p = _dec(buf, p, e)
            if p >= 0:
                p = _space(buf, p, e)
            if p >= 0:
                p = _lit(buf, p, e, p_set)
            if p >= 0:
                ms, p = _hex(buf, p, e)
            if p >= 0:
                p = _space(buf, p, e)
            if p >= 0:
                p = _lit(buf, p, e, p_clr)
            if p >= 0:
                mc, p = _hex(buf, p, e)
            fl = 0
            if p >= 0 and p < e:
                q = _space(buf, p, e)
                q2 = _lit(buf, q, e, p_primary) if q >= 0 else -1
                if q2 >= 0:
                    fl |= 1
                    p = q2
            if p >= 0 and p < e:
                q = _space(buf, p, e)
                q2 = _lit(buf, q, e, p_force) if q >= 0 else -1
                if q2 >= 0:
                    fl |= 2
                    p = q2
            if p == e:
                k = pk
                a0[li] = v
                a1[li] = cnt
                mset[li] = ms
                mclr[li] = mc
                flags[li] = fl
        else:
            p = _lit(buf, s, e, p_alloc)
            pk = N_ALLOC
            if p < 0:
                p = _lit(buf, s, e, p_free)
                pk = N_FREE
            if p >= 0:
                v, p = _hex(buf, p, e)
                if p >= 0:
                    p = _space(buf, p, e)
                if p >= 0:
                    order, p = _dec(buf, p, e)
                mt = np.int64(0)
                if p >= 0 and p < e and pk == N_ALLOC:
                    p = _space(buf, p, e)
                    if p >= 0:
                        p = _lit(buf, p, e, p_mt)
                    if p >= 0:
                        mt, p = _dec(buf, p, e)
                if p == e:
                    k = pk
                    a0[li] = v
                    a1[li] = order
                    flags[li] = mt
        kind[li] = k
        s = e + 1
    start[nlines] = n + 1
    return kind, start, a0, a1, mset, mclr, flags


def scan(data: bytes):
    buf = np.frombuffer(data, np.uint8)
    return scan_native(buf, P_CPA_DIRECT, P_CPA_HIGHMAP, P_ALLOC, P_FREE, P_SET, P_CLR, P_MT,
                       P_PRIMARY, P_FORCE)


@njit(cache=True)
def convert_events(kind, a0, a1, mset, mclr, mflags, body, max_pfn, highmap_vpfn, highmap_pages,
                   ram_start, ram_end, max_order, nr_migratetypes,
                   ev_cpa, ev_alloc, ev_free):
    """Range-check the canonical event lines from line `body` on and turn the
    good ones into event columns, in line order. Lines that fail a check (and
    every other line) are flagged for the Python reader, which names the error.
    The checks are the Python reader's: a direct range inside max_pfn, a
    high-map range inside its 1 GiB, an alloc/free block order <= max_order,
    aligned, inside one RAM range, migratetype < nr_migratetypes."""
    n = kind.shape[0]
    other = np.zeros(n, np.bool_)
    o_kind = np.zeros(n, np.uint8)
    o_a0 = np.zeros(n, np.int64)
    o_a1 = np.zeros(n, np.int64)
    o_set = np.zeros(n, np.uint64)
    o_clr = np.zeros(n, np.uint64)
    o_fl = np.zeros(n, np.int32)
    o_line = np.zeros(n, np.int64)
    m = 0
    for li in range(body, n):
        k = kind[li]
        if k == N_OTHER:
            other[li] = True
            continue
        if a0[li] >= np.uint64(1 << 62):
            other[li] = True
            continue
        v = np.int64(a0[li])
        c = a1[li]
        ok = True
        if k == N_CPA_DIRECT:
            ok = v < max_pfn and v + c <= max_pfn
        elif k == N_CPA_HIGHMAP:
            ok = v < highmap_pages and v + c <= highmap_pages
        else:
            if c > max_order or mflags[li] >= nr_migratetypes:
                ok = False
            else:
                size = np.int64(1) << c
                if v & (size - 1):
                    ok = False
                else:
                    r = np.searchsorted(ram_start, v, side="right") - 1
                    ok = r >= 0 and v + size <= ram_end[r]
        if not ok:
            other[li] = True
            continue
        if k == N_CPA_DIRECT or k == N_CPA_HIGHMAP:
            o_kind[m] = ev_cpa
            o_a0[m] = v + (highmap_vpfn if k == N_CPA_HIGHMAP else 0)
            o_set[m] = mset[li]
            o_clr[m] = mclr[li]
            o_fl[m] = mflags[li]
        else:
            o_kind[m] = ev_alloc if k == N_ALLOC else ev_free
            o_a0[m] = v
            o_fl[m] = (mflags[li] | 2 << 8) if k == N_ALLOC else 0  # no zone= field: Normal
        o_a1[m] = c
        o_line[m] = li
        m += 1
    return (other, o_kind[:m], o_a0[:m], o_a1[:m], o_set[:m], o_clr[:m], o_fl[:m], o_line[:m])
