"""The bulk tokeniser of native event lines must agree with the line-by-line reader."""

from __future__ import annotations

import numpy as np
import pytest

from dmsim.trace.errors import TraceError
from dmsim.trace.native import parse_native

HEAD = """dmsim-trace 1
e820 0x1000 0x9fc00 usable
e820 0x100000 0x7ffdd000 usable
"""
CANONICAL = """cpa direct 0x2000 1 set=0x0 clr=0x2 primary
cpa highmap 0x1000 512 set=0x8000000000000000 clr=0x0
cpa direct 0x2000 3 set=0x2 clr=0x0 primary force_split
alloc 0x7390 2 mt=1
alloc 0x7394 0
free 0x7390 2
"""
# the same events, written the way a person might: extra blanks, tabs, upper-case hex
LOOSE = """cpa  direct 0x2000 1 set=0x0 clr=0x2  primary
cpa highmap 0X1000 512 clr=0x0 set=0x8000000000000000
cpa direct 0x2000 3 set=0x2 clr=0x0 primary  force_split
alloc\t0x7390 2 mt=1
alloc 0x7394 0\t
free 0x7390 2
"""


def columns(t):
    return [np.asarray(c) for c in t.events.columns()]


def test_loose_and_canonical_lines_give_the_same_events():
    a, b = parse_native(HEAD + CANONICAL, "a"), parse_native(HEAD + LOOSE, "b")
    for x, y in zip(columns(a), columns(b), strict=True):
        assert (x == y).all()
    assert a.meta["page_allocs"] == b.meta["page_allocs"] == 2


@pytest.mark.parametrize("line, message", [
    ("cpa direct 0x7ffdd 1 set=0x0 clr=0x2", "past the end of RAM"),
    ("alloc 0x7391 1", "not aligned"),
    ("alloc 0x9f 0", "outside RAM"),
    ("alloc 0x7390 11", "above 10"),
    ("alloc 0x7390 0 mt=9", "migratetype 9"),
    ("cpa highmap 0x3ffff 2 set=0x0 clr=0x2", "1 GiB kernel image"),
])
def test_canonical_looking_lines_still_get_checked(line, message):
    with pytest.raises(TraceError, match=message) as e:
        parse_native(HEAD + CANONICAL + line + "\n", "t")
    assert e.value.line == 4 + CANONICAL.count("\n")
