"""Rows -> native text: the header in Python, the event lines in one numba loop.

Why numba: a scenario at --scale 100 is ten million lines, and Python's string
formatting costs about a microsecond a line; numpy formatting (digits as a padded
byte matrix) was measured at 1.3 M lines/s before sorting and generating. The loop
copies each op's literal pieces and writes the numbers' digits straight into a byte
buffer, a chunk of rows at a time, so memory stays bounded at any size.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..machine import Machine
from . import rows as R

CHUNK = 1 << 20  # rows formatted per call


def header(machine: Machine, comments: list[str]) -> str:
    """`dmsim-trace 1`, comment lines, the machine inline (docs/trace-format.md)."""
    from ..trace.native import MAGIC, VERSION, machine_lines

    out = [f"{MAGIC} {VERSION}\n"] + [f"# {c}\n" for c in comments]
    return "".join(out + machine_lines(machine))


class Templates:
    """Each op's line as four literal pieces around up to three numbers, flattened
    into one byte array for the numba loop."""

    def __init__(self, groups: bool = True):
        pieces = []
        nf = np.zeros(R.N_OPS, np.int64)
        for op in range(R.N_OPS):
            tmpl, n, _ = R.OPS[op]
            if not groups and op in R.NO_GROUP:
                tmpl = R.NO_GROUP[op]
            parts = tmpl.split("{}")
            assert len(parts) == n + 1
            parts[-1] += "\n"
            parts += [""] * (4 - len(parts))
            pieces.append([p.encode() for p in parts])
            nf[op] = n
        flat = b"".join(b"".join(p) for p in pieces)
        self.data = np.frombuffer(flat, np.uint8).copy()
        self.start = np.zeros((R.N_OPS, 4), np.int64)
        self.length = np.zeros((R.N_OPS, 4), np.int64)
        pos = 0
        for op, parts in enumerate(pieces):
            for j, p in enumerate(parts):
                self.start[op, j] = pos
                self.length[op, j] = len(p)
                pos += len(p)
        self.nf = nf
        self.max_line = int(self.length.sum(axis=1).max()) + 3 * 20


@njit(cache=True)
def _format(op, h, b, c, data, start, length, nf, out):
    pos = 0
    digits = np.empty(20, np.uint8)
    for i in range(op.shape[0]):
        k = op[i]
        n = nf[k]
        for j in range(4):
            s = start[k, j]
            for q in range(length[k, j]):
                out[pos] = data[s + q]
                pos += 1
            if j < n:
                v = h[i] if j == 0 else (b[i] if j == 1 else c[i])
                m = 0
                while True:
                    digits[m] = 48 + v % 10
                    v //= 10
                    m += 1
                    if v == 0:
                        break
                for q in range(m - 1, -1, -1):
                    out[pos] = digits[q]
                    pos += 1
    return pos


def write_rows(f, op, h, b, c, templates: Templates) -> int:
    """Write the rows' lines to the binary file `f`; returns the bytes written."""
    total = 0
    buf = np.empty(min(CHUNK, max(len(op), 1)) * templates.max_line, np.uint8)
    for s in range(0, len(op), CHUNK):
        e = min(s + CHUNK, len(op))
        n = _format(op[s:e], h[s:e], b[s:e], c[s:e], templates.data, templates.start,
                    templates.length, templates.nf, buf)
        f.write(buf[:n].data)
        total += n
    return total
