"""The hot loop of the native reader, in numba: event lines in the canonical
form write_native() and `dmsim gen` produce become arrays; every other line, and
any line not exactly in that form, is left to the Python reader, which checks it
and owns the error messages.

The forms taken here (single spaces, fields in this order, no trailing blank;
numbers as the Python reader reads them, leading zeros and upper-case hex digits
included, but a `0x` prefix, at most 16 hex or 18 decimal digits):

    cpa direct|highmap 0x.. N set=0x.. clr=0x..[ primary][ force_split][ collapse]
    alloc 0x.. N[ mt=N][ zone=Z]
    free 0x.. N
    page_alloc H N[ mt=N][ zone=Z][ unmapped=G]
    page_free H
    vmalloc H N[ unmapped=G]
    vfree H[ reset_perms]
    set_memory API H[ FIRST N]
    hcpa H FIRST N set=0x.. clr=0x..[ force_split]
    vcpa 0x.. N set=0x.. clr=0x..[ primary]
    system_running
    kernel_ro

scan_native() only tokenises (hex and decimal numbers, the words of a table);
convert_events() applies the Python reader's range checks and builds the event
columns. Both err on the side of the Python reader: a line either check is unsure
of goes there.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from .scan_util import count_lines, hex_digit

N_OTHER = 0
N_CPA_DIRECT = 1
N_CPA_HIGHMAP = 2
N_ALLOC = 3
N_FREE = 4
N_H_ALLOC = 5
N_H_FREE = 6
N_H_VMALLOC = 7
N_H_VFREE = 8
N_H_CPA = 9  # set_memory and hcpa
N_VCPA = 10
N_SYSTEM_RUNNING = 11
N_KERNEL_RO = 12
N_KINDS = 13


def _b(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), np.uint8).copy()


# line heads and fields (frozen into the compiled code as constants)
P_CPA_DIRECT = _b("cpa direct ")
P_CPA_HIGHMAP = _b("cpa highmap ")
P_ALLOC = _b("alloc ")
P_FREE = _b("free ")
P_PAGE_ALLOC = _b("page_alloc ")
P_PAGE_FREE = _b("page_free ")
P_VMALLOC = _b("vmalloc ")
P_VFREE = _b("vfree ")
P_VCPA = _b("vcpa ")
P_SET_MEMORY = _b("set_memory ")
P_HCPA = _b("hcpa ")
P_SYSTEM_RUNNING = _b("system_running")
P_KERNEL_RO = _b("kernel_ro")
P_SET = _b(" set=")
P_CLR = _b(" clr=")
P_MT = _b(" mt=")
P_ZONE = _b(" zone=")
P_UNMAPPED = _b(" unmapped=")
P_PRIMARY = _b(" primary")
P_FORCE = _b(" force_split")
P_COLLAPSE = _b(" collapse")
P_RESET = _b(" reset_perms")

MT_MAX = 255  # wider migratetypes are left to the Python reader (it rejects them)


class Tables(NamedTuple):
    """What the words of a line mean: built by the reader from its own tables
    (native.py), so that the two paths share one definition. Four flat arrays,
    not a dozen: each array passed to a numba function costs on every call."""

    names: np.ndarray  # uint8: every word (set_memory's apis, zones, unmapped groups)
    offs: np.ndarray  # int64[n + 1]: word i is names[offs[i]:offs[i + 1]]
    vals: np.ndarray  # uint64[n, 3]: an api's (set, clr, CPAF_*); a zone's or group's (value, 0, 0)
    consts: np.ndarray  # int64[N_CONSTS]: C_*


# Tables.consts
C_PRIMARY = 0  # CPAF_PRIMARY
C_FORCE_SPLIT = 1  # CPAF_FORCE_SPLIT
C_COLLAPSE = 2  # CPAF_COLLAPSE
C_RESET_PERMS = 3  # VFREE_RESET_PERMS
C_UNMAPPED_SHIFT = 4  # UNMAPPED_SHIFT
C_ZONE_DEFAULT = 5  # ZONES["normal"]
C_API = 6  # words [consts[C_API], consts[C_API + 1]) are set_memory's apis
C_ZONE = 8  # ... the zones
C_GROUP = 10  # ... the unmapped groups
N_CONSTS = 12


def make_tables(set_memory: dict, set_memory_flags: dict, zones: dict, groups: dict,
                consts: dict) -> Tables:
    """set_memory: api -> (set, clr, _); set_memory_flags: api -> CPAF_* of its
    event; zones, groups: word -> value; consts: C_* -> value (C_PRIMARY ..
    C_ZONE_DEFAULT)."""
    words, vals = [], []
    c = np.zeros(N_CONSTS, np.int64)
    for at, table in ((C_API, set_memory), (C_ZONE, zones), (C_GROUP, groups)):
        c[at] = len(words)
        for w, v in table.items():
            words.append(w.encode())
            vals.append((v[0], v[1], set_memory_flags[w]) if table is set_memory else (v, 0, 0))
        c[at + 1] = len(words)
    for k, v in consts.items():
        c[k] = v
    offs = np.zeros(len(words) + 1, np.int64)
    offs[1:] = np.cumsum([len(w) for w in words])
    return Tables(np.frombuffer(b"".join(words), np.uint8).copy(), offs,
                  np.array(vals, np.uint64).reshape(-1, 3), c)


@njit(cache=True)
def _lit(buf, pos, end, lit):
    """pos past the bytes lit at buf[pos:], or -1 (also for pos -1)."""
    n = lit.shape[0]
    if pos < 0 or pos + n > end:
        return -1
    for k in range(n):
        if buf[pos + k] != lit[k]:
            return -1
    return pos + n


@njit(cache=True)
def _hex(buf, pos, end):
    """0x<hex digits> ending at a space or the line end: (value, next pos) or -1."""
    if pos < 0 or pos + 2 >= end or buf[pos] != 48 or buf[pos + 1] != 120:
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
    """Decimal digits (at most 18: the value fits in int64) ending at a space or
    the line end: (value, next pos) or -1."""
    if pos < 0:
        return np.int64(0), -1
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
def _sdec(buf, pos, end):
    """A space, then _dec."""
    if pos < 0 or pos >= end or buf[pos] != 32:
        return np.int64(0), -1
    return _dec(buf, pos + 1, end)


@njit(cache=True)
def _word(buf, pos, end, names, offs, lo, hi):
    """The word among lo..hi-1 ending at a space or the line end: (its index,
    next pos) or -1."""
    if pos < 0:
        return -1, -1
    t = pos
    while t < end and buf[t] != 32:
        t += 1
    ln = t - pos
    for i in range(lo, hi):
        s = offs[i]
        if offs[i + 1] - s != ln:
            continue
        same = True
        for k in range(ln):
            if buf[pos + k] != names[s + k]:
                same = False
                break
        if same:
            return i, t
    return -1, -1


@njit(cache=True)
def _masks(buf, p, e):
    """` set=0x.. clr=0x..`: (set, clr, next pos) or -1."""
    ms, p = _hex(buf, _lit(buf, p, e, P_SET), e)
    mc, p = _hex(buf, _lit(buf, p, e, P_CLR), e)
    return ms, mc, p


@njit(cache=True)
def _opt(buf, p, e, lit):
    """An optional field: (next pos, 1 if it is there)."""
    if p < 0 or p == e:
        return p, 0
    q = _lit(buf, p, e, lit)
    if q < 0:
        return p, 0
    return q, 1


@njit(cache=True)
def _opt_word(buf, p, e, lit, names, offs, vals, lo, hi):
    """An optional `<lit><word>` field, the word among lo..hi-1: (next pos, its
    value or -1 if absent); pos -1 if the field is there with another word."""
    if p < 0 or p == e:
        return p, np.int64(-1)
    q = _lit(buf, p, e, lit)
    if q < 0:
        return p, np.int64(-1)
    i, q = _word(buf, q, e, names, offs, lo, hi)
    if i < 0:
        return -1, np.int64(-1)
    return q, np.int64(vals[i, 0])


@njit(cache=True, nogil=True)
def scan_native(buf, names, offs, vals, c):
    """(kind int8[n], start int64[n+1], a0 uint64[n], a1 int64[n], a2 int64[n], mset, mclr,
    flags int32[n]): per line, its N_* kind (N_OTHER unless the whole line is in
    canonical form) and its numbers. One function, not one per line: numba pays
    for the table arrays on every call, and its inlining costs seconds of compile."""
    nlines = count_lines(buf)
    kind = np.zeros(nlines, np.int8)
    start = np.zeros(nlines + 1, np.int64)
    a0 = np.zeros(nlines, np.uint64)
    a1 = np.zeros(nlines, np.int64)
    a2 = np.zeros(nlines, np.int64)
    mset = np.zeros(nlines, np.uint64)
    mclr = np.zeros(nlines, np.uint64)
    flags = np.zeros(nlines, np.int32)
    z = np.uint64(0)
    s = 0
    n = buf.shape[0]
    for li in range(nlines):
        e = s
        while e < n and buf[e] != 10:
            e += 1
        start[li] = s
        k = N_OTHER
        v = z
        x1 = np.int64(0)
        x2 = np.int64(0)
        ms = z
        mc = z
        fl = np.int64(0)
        c0 = buf[s] if e - s >= 5 else 0
        if c0 == 99:  # c: cpa direct|highmap
            kk = N_CPA_DIRECT
            p = _lit(buf, s, e, P_CPA_DIRECT)
            if p < 0:
                kk = N_CPA_HIGHMAP
                p = _lit(buf, s, e, P_CPA_HIGHMAP)
            v, p = _hex(buf, p, e)
            x1, p = _sdec(buf, p, e)
            ms, mc, p = _masks(buf, p, e)
            p, o = _opt(buf, p, e, P_PRIMARY)
            fl |= o * c[C_PRIMARY]
            p, o = _opt(buf, p, e, P_FORCE)
            fl |= o * c[C_FORCE_SPLIT]
            p, o = _opt(buf, p, e, P_COLLAPSE)
            fl |= o * c[C_COLLAPSE]
            if p == e:
                k = kk
        elif c0 == 97 or c0 == 102:  # a, f: alloc, free
            kk = N_ALLOC if c0 == 97 else N_FREE
            p = _lit(buf, s, e, P_ALLOC if c0 == 97 else P_FREE)
            v, p = _hex(buf, p, e)
            x1, p = _sdec(buf, p, e)
            if kk == N_ALLOC:
                mt = np.int64(0)
                if p >= 0 and p < e:
                    q = _lit(buf, p, e, P_MT)
                    if q >= 0:
                        mt, p = _dec(buf, q, e)
                zone = np.int64(-1)
                if p >= 0 and p < e:  # (a call passes five arrays: skip it at the line end)
                    p, zone = _opt_word(buf, p, e, P_ZONE, names, offs, vals, c[C_ZONE],
                                        c[C_ZONE + 1])
                if zone < 0:
                    zone = c[C_ZONE_DEFAULT]
                if mt > MT_MAX:
                    p = -1
                fl = mt | zone << 8
            if p == e:
                k = kk
        elif c0 == 112:  # p: page_alloc, page_free
            p = _lit(buf, s, e, P_PAGE_ALLOC)
            if p >= 0:
                h, p = _dec(buf, p, e)
                x1, p = _sdec(buf, p, e)
                mt = np.int64(0)
                if p >= 0 and p < e:
                    q = _lit(buf, p, e, P_MT)
                    if q >= 0:
                        mt, p = _dec(buf, q, e)
                zone = np.int64(-1)
                if p >= 0 and p < e:  # (a call passes five arrays: skip it at the line end)
                    p, zone = _opt_word(buf, p, e, P_ZONE, names, offs, vals, c[C_ZONE],
                                        c[C_ZONE + 1])
                if zone < 0:
                    zone = c[C_ZONE_DEFAULT]
                group = np.int64(0)
                if p >= 0 and p < e:
                    p, group = _opt_word(buf, p, e, P_UNMAPPED, names, offs, vals, c[C_GROUP],
                                         c[C_GROUP + 1])
                    if group < 0:
                        group = 0
                if mt > MT_MAX:
                    p = -1
                if p == e:
                    k = N_H_ALLOC
                    v = np.uint64(h)
                    fl = mt | zone << 8 | group << c[C_UNMAPPED_SHIFT]
            else:
                h, p = _dec(buf, _lit(buf, s, e, P_PAGE_FREE), e)
                if p == e:
                    k = N_H_FREE
                    v = np.uint64(h)
        elif c0 == 118:  # v: vmalloc, vfree, vcpa
            c1 = buf[s + 1]
            if c1 == 109:  # vmalloc
                h, p = _dec(buf, _lit(buf, s, e, P_VMALLOC), e)
                x1, p = _sdec(buf, p, e)
                group = np.int64(0)
                if p >= 0 and p < e:
                    p, group = _opt_word(buf, p, e, P_UNMAPPED, names, offs, vals, c[C_GROUP],
                                         c[C_GROUP + 1])
                    if group < 0:
                        group = 0
                if p == e:
                    k = N_H_VMALLOC
                    v = np.uint64(h)
                    fl = group << c[C_UNMAPPED_SHIFT]
            elif c1 == 102:  # vfree
                h, p = _dec(buf, _lit(buf, s, e, P_VFREE), e)
                p, o = _opt(buf, p, e, P_RESET)
                if p == e:
                    k = N_H_VFREE
                    v = np.uint64(h)
                    fl = o * c[C_RESET_PERMS]
            elif c1 == 99:  # vcpa
                v, p = _hex(buf, _lit(buf, s, e, P_VCPA), e)
                x1, p = _sdec(buf, p, e)
                ms, mc, p = _masks(buf, p, e)
                p, o = _opt(buf, p, e, P_PRIMARY)
                if p == e:
                    k = N_VCPA
                    fl = o * c[C_PRIMARY]
        elif c0 == 115 and buf[s + 1] == 121:  # sy: system_running
            if _lit(buf, s, e, P_SYSTEM_RUNNING) == e:
                k = N_SYSTEM_RUNNING
        elif c0 == 107:  # k: kernel_ro
            if _lit(buf, s, e, P_KERNEL_RO) == e:
                k = N_KERNEL_RO
        elif c0 == 115:  # s: set_memory <api> <h>[ <first> <n>]
            i, p = _word(buf, _lit(buf, s, e, P_SET_MEMORY), e, names, offs, c[C_API], c[C_API + 1])
            h, p = _sdec(buf, p, e)
            if p >= 0 and p < e:
                x1, p = _sdec(buf, p, e)
                x2, p = _sdec(buf, p, e)
            if p == e:
                k = N_H_CPA
                v = np.uint64(h)
                ms = vals[i, 0]
                mc = vals[i, 1]
                fl = np.int64(vals[i, 2])
        elif c0 == 104:  # h: hcpa <h> <first> <n> set= clr=[ force_split]
            h, p = _dec(buf, _lit(buf, s, e, P_HCPA), e)
            x1, p = _sdec(buf, p, e)
            x2, p = _sdec(buf, p, e)
            ms, mc, p = _masks(buf, p, e)
            p, o = _opt(buf, p, e, P_FORCE)
            if p == e:
                k = N_H_CPA
                v = np.uint64(h)
                fl = o * c[C_FORCE_SPLIT]
        if k != N_OTHER:
            kind[li] = k
            a0[li] = v
            a1[li] = x1
            a2[li] = x2
            mset[li] = ms
            mclr[li] = mc
            flags[li] = fl
        s = e + 1
    start[nlines] = n + 1
    return kind, start, a0, a1, a2, mset, mclr, flags


def scan(data: bytes, tables: Tables):
    return scan_native(np.frombuffer(data, np.uint8), *tables)


class Limits(NamedTuple):
    """The Python reader's range checks that need no machine."""

    max_order: int  # alloc, free, page_alloc: order <= max_order
    nr_migratetypes: int  # alloc: mt < nr_migratetypes
    max_h_mt: int  # page_alloc: mt <= max_h_mt
    max_handle: int  # handles <= max_handle
    max_vmalloc: int  # vmalloc: 0 < npages <= max_vmalloc
    max_first: int  # set_memory, hcpa: first <= max_first (first << 32 | n fits in int64)
    max_n: int  # set_memory, hcpa: n <= max_n
    vcpa_pages: int  # vcpa: page < vcpa_pages


@njit(cache=True)
def convert_events(kind, a0, a1, a2, mset, mclr, mflags, body, max_pfn, highmap_vpfn,
                   highmap_pages, ram_start, ram_end, lim, ev_kind):
    """Range-check the canonical event lines from line `body` on and turn the
    good ones into event columns, in line order. Lines that fail a check (and
    every other line) are flagged for the Python reader, which names the error.
    The checks are the Python reader's: a direct range inside max_pfn, a
    high-map range inside its 1 GiB, an alloc/free block order <= max_order,
    aligned, inside one RAM range, migratetype < nr_migratetypes; a handle <=
    max_handle, a page_alloc order <= max_order and migratetype <= max_h_mt,
    vmalloc npages 1..max_vmalloc, set_memory/hcpa first <= max_first and n <= max_n, a
    vcpa page below vcpa_pages.

    Also returns the reader's bookkeeping over the lines taken: the highest
    handle (-1: none) and the vmalloc pages."""
    n = kind.shape[0]
    other = np.zeros(n, np.bool_)
    o_kind = np.zeros(n, np.uint8)
    o_a0 = np.zeros(n, np.int64)
    o_a1 = np.zeros(n, np.int64)
    o_set = np.zeros(n, np.uint64)
    o_clr = np.zeros(n, np.uint64)
    o_fl = np.zeros(n, np.int32)
    o_line = np.zeros(n, np.int64)
    max_handle = np.int64(-1)
    vmalloc_pages = np.int64(0)
    m = 0
    for li in range(body, n):
        k = kind[li]
        if k == N_OTHER or a0[li] >= np.uint64(1 << 62):
            other[li] = True
            continue
        v = np.int64(a0[li])
        c = a1[li]
        fl = mflags[li]
        out1 = c
        if k == N_CPA_DIRECT:
            ok = v < max_pfn and v + c <= max_pfn
        elif k == N_CPA_HIGHMAP:
            ok = v < highmap_pages and v + c <= highmap_pages
            v += highmap_vpfn
        elif k == N_ALLOC or k == N_FREE:
            if c > lim.max_order or (fl & 0xFF) >= lim.nr_migratetypes:
                ok = False
            else:
                size = np.int64(1) << c
                if v & (size - 1):
                    ok = False
                else:
                    r = np.searchsorted(ram_start, v, side="right") - 1
                    ok = r >= 0 and v + size <= ram_end[r]
        elif k == N_VCPA:
            ok = v < lim.vcpa_pages
        elif k == N_SYSTEM_RUNNING or k == N_KERNEL_RO:
            ok = True
        else:  # by handle
            ok = v <= lim.max_handle
            if k == N_H_ALLOC:
                ok = ok and c <= lim.max_order and (fl & 0xFF) <= lim.max_h_mt
            elif k == N_H_VMALLOC:
                ok = ok and 0 < c <= lim.max_vmalloc
            elif k == N_H_CPA:
                ok = ok and c <= lim.max_first and a2[li] <= lim.max_n
                out1 = c << 32 | a2[li]
            if ok:
                max_handle = max(max_handle, v)
                if k == N_H_VMALLOC:
                    vmalloc_pages += c
        if not ok:
            other[li] = True
            continue
        o_kind[m] = ev_kind[k]
        o_a0[m] = v
        o_a1[m] = out1
        o_set[m] = mset[li]
        o_clr[m] = mclr[li]
        o_fl[m] = fl
        o_line[m] = li
        m += 1
    return (other, o_kind[:m], o_a0[:m], o_a1[:m], o_set[:m], o_clr[:m], o_fl[:m], o_line[:m],
            max_handle, vmalloc_pages)
