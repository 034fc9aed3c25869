"""Byte helpers shared by the numba tokenisers."""

from __future__ import annotations

from numba import njit


@njit(cache=True, inline="always")
def hex_digit(c):
    """The value of ASCII hex digit c, or -1."""
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


@njit(cache=True)
def count_lines(buf):
    """Lines in the buffer: newlines + 1 (a last line without one counts)."""
    n = 1
    for i in range(buf.shape[0]):
        if buf[i] == 10:
            n += 1
    return n


@njit(cache=True)
def find(buf, start, end, lit):
    """The first position of the bytes lit in buf[start:end], or -1."""
    n = lit.shape[0]
    for p in range(start, end - n + 1):
        hit = True
        for k in range(n):
            if buf[p + k] != lit[k]:
                hit = False
                break
        if hit:
            return p
    return -1
