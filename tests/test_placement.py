"""Simulated placement: events by handle, the allocator places them, the CPA
calls follow the kernel's alias rules (dmsim/core/placement.py)."""

from __future__ import annotations

import io

import pytest

from dmsim.core import constants as C
from dmsim.simulate import simulate
from dmsim.trace.native import parse_native, write_native

HEAD = """dmsim-trace 1
e820 0x1000 0x9fc00 usable
e820 0x100000 0x7ffdd000 usable
system_running
"""


def run(body: str):
    t = parse_native(HEAD + body, "t")
    r = simulate(t)
    return t, r, r.buddy


def free_pages(buddy) -> int:
    return sum(buddy.stat(f"nr_free_pages_{z}") for z in ("dma", "dma32", "normal"))


def test_module_text_alias_splits_once_and_takes_a_page_table_from_the_buddy():
    _, quiet, b0 = run("vmalloc 1 16\n")
    _, r, b = run("vmalloc 1 16\nset_memory ro 1\n")
    # 16 order-0 vmalloc pages from one fresh block: their aliases share one 2M leaf
    assert r.counters[C.DIRECT_MAP_LEVEL2_SPLIT] == 1
    assert r.counters[C.NR_PTE_TABLES] == 1
    # split_large_page() took one more page from the allocator
    assert b.stat("nr_alloc") == b0.stat("nr_alloc") + 1


def test_nx_only_calls_process_no_alias():
    # set_memory_x/nx on vmalloc memory: checkalias is false in change_page_attr_set_clr()
    _, r, _ = run("vmalloc 1 4\nset_memory x 1\nset_memory nx 1\n")
    assert r.counters[C.NR_CPA_CALLS] == 0


def test_vfree_resets_the_direct_map_and_frees_the_pages():
    _, r, b = run("vmalloc 1 4\nset_memory ro 1\nvfree 1 reset_perms\n")
    st = r.state
    assert r.counters[C.DIRECT_MAP_LEVEL2_SPLIT] == 1
    # invalid then default on each of the 4 pages: 8 more calls after the 4 RO aliases
    assert r.counters[C.NR_CPA_CALLS] == 4 + 8
    assert b.stat("nr_free_calls") == 4
    # the split leaf's table is the last one made: its 4 pages are RW again after
    # set_direct_map_default_noflush(), without _PAGE_GLOBAL (pgprot_clear_protnone_bits()
    # dropped it while they were invalid); the other 508 never changed
    row = int(st.nr_tables[0]) - 1
    values = [int(v) for v in st.pte[row]]
    assert values.count(C.PAGE_KERNEL & ~C._PAGE_GLOBAL) == 4
    assert values.count(C.PAGE_KERNEL) == 508


def test_page_handle_set_memory_4k_and_partial_range():
    _, r, _ = run("page_alloc 7 3 mt=0\nset_memory 4k 7\nset_memory ro 7 2 1\n")
    assert r.counters[C.DIRECT_MAP_LEVEL2_SPLIT] == 1  # the force split; the RO is on a pte
    assert r.counters[C.NR_CPA_CALLS] == 2


def test_handle_errors_are_counted_not_fatal():
    _, r, _ = run("page_alloc 1 0\npage_free 1\npage_free 1\nset_memory ro 9\nvfree 1\n")
    assert r.counters[C.NR_HANDLE_ERRORS] == 3


def test_movable_and_unmovable_land_in_different_pageblocks():
    import numpy as np

    from dmsim.core import buddy as B

    _, r, b = run("page_alloc 1 0 mt=1\npage_alloc 2 0 mt=0\n")
    assert b.stat("nr_alloc") == 2 and b.stat("alloc_fail") == 0
    # memblock_free_all() leaves DMA32's free memory on the MOVABLE lists, each order's
    # list in pfn order. The movable page: rmqueue_bulk() refills the pcp list from
    # __rmqueue_smallest(), the smallest movable block first, the tail page 0x7ffdc
    # (order 0). The unmovable page: no UNMOVABLE block, so __rmqueue_fallback()
    # steals the first order-10 movable block, 0x1000, and (order >= pageblock_order)
    # change_pageblock_range() makes both its pageblocks (8, 9) UNMOVABLE.
    heads = np.flatnonzero(b.page_flags & B.PG_HEAD).tolist()
    assert heads == [0x1000, 0x7FFDC]
    assert b.pageblock_mt[0x1000 >> 9] == b.pageblock_mt[0x1200 >> 9] == B.MIGRATE_UNMOVABLE
    assert b.pageblock_mt[0x7FFDC >> 9] == B.MIGRATE_MOVABLE
    assert b.stat("pageblock_claimed") == 2


def test_handle_events_round_trip_through_the_writer():
    body = ("page_alloc 3 2 mt=1 zone=dma32\nvmalloc 4 9\nset_memory rox 4 1 3\nset_memory 4k 3\n"
            "vfree 4 reset_perms\npage_free 3\n")
    t = parse_native(HEAD + body, "t")
    out = io.StringIO()
    write_native(t, out)
    t2 = parse_native(out.getvalue(), "t2")
    for a, b in zip(t.events.columns(), t2.events.columns(), strict=True):
        assert (a == b).all()


@pytest.mark.parametrize("line, message", [
    ("page_alloc 1 11", "above 10"),
    ("page_alloc 1 0 mt=3", "migratetype 3"),
    ("vmalloc 1 0", "npages 0"),
    ("set_memory rwx 1", "expected `set_memory"),
    ("vfree 1 now", "reset_perms"),
])
def test_bad_handle_lines(line, message):
    from dmsim.trace.errors import TraceError

    with pytest.raises(TraceError, match=message):
        parse_native(HEAD + line + "\n", "t")


def test_placement_simulate_leaves_a_trace_by_handle_as_it_is(tmp_path):
    from click.testing import CliRunner

    from dmsim.cli.main import cli

    p = tmp_path / "h.trace"
    p.write_text(HEAD + "vmalloc 1 16\nset_memory ro 1\ncheck direct_map_level2_splits 1\n")
    for extra in ([], ["--placement", "simulate"]):
        r = CliRunner().invoke(cli, ["replay", "--verify", *extra, str(p)])
        assert r.exit_code == 0, r.output
