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
