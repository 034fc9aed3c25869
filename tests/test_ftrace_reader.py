"""The ftrace reader: event lines in the shapes kernels and tools print them."""

from __future__ import annotations

import numpy as np
import pytest

from dmsim.trace.errors import TraceError
from dmsim.trace.events import EV_ALLOC, EV_CHECKPOINT, EV_CPA, EV_FREE, EV_SYSTEM_RUNNING
from dmsim.trace.ftrace import parse_ftrace

E820 = """[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
[    0.000000] BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved
[    0.000000] BIOS-e820: [mem 0x0000000000100000-0x000000007ffdcfff] usable
[    0.009453] e820: update [mem 0x00000000-0x00000fff] usable ==> reserved
"""
POB = "0xffff8c4900000000"
CPA = ("vaddr=0xffff8c4900203000 numpages=1 set=0x0 clr=0x2 flags=0 primary=1 "
       f"pob={POB} pb=0xbc00000")

# the same four events as printed by: the 6.1 `trace` file (5 flag chars),
# an older kernel (4 flag chars, decimal pfn), and `trace-cmd report` (padded)
SHAPES = {
    "trace-6.1": [
        "          <idle>-0       [000] d..1.     0.756052: mm_page_alloc: page=00000000079b73a3 pfn=0x7390 order=2 migratetype=1 gfp_flags=GFP_KERNEL",
        "    kworker/u2:0-9       [000] .....     2.580250: cpa: (__change_page_attr_set_clr+0x0/0xf00) " + CPA,
        "          <idle>-0       [000] ...1.     1.125379: mm_page_free: page=000000002f8f7dc8 pfn=0x32d06 order=0",
        "            init-1       [000] .....     3.615944: tracing_mark_write: dmsim: system_running",
    ],
    "trace-5.10": [
        "          <idle>-0     [000] d..1     0.756052: mm_page_alloc: page=00000000079b73a3 pfn=29584 order=2 migratetype=1 gfp_flags=GFP_KERNEL",
        "  kworker/u2:0-9     [000] ....     2.580250: cpa: (__change_page_attr_set_clr+0x0/0xf00) " + CPA,
        "          <idle>-0     [000] ...1     1.125379: mm_page_free_batched: page=000000002f8f7dc8 pfn=208134 order=0",
        "            init-1     [000] ....     3.615944: tracing_mark_write: dmsim: system_running",
    ],
    "trace-cmd": [
        "          <idle>-0     [000]     0.756052: mm_page_alloc:        page=0xffffea00001ce400 pfn=0x7390 order=2 migratetype=1 gfp_flags=GFP_KERNEL",
        "    kworker/u2:0-9     [000]     2.580250: dmsim/cpa:            (__change_page_attr_set_clr+0x0/0xf00) " + CPA,
        "          <idle>-0     [000]     1.125379: mm_page_free:         page=0xffffea0000cb4180 pfn=0x32d06 order=0",
        "            init-1     [000]     3.615944: print:                tracing_mark_write: dmsim: system_running",
    ],
}


def parse(lines, **kw):
    return parse_ftrace(E820 + "=== TRACE\n# tracer: nop\n" + "\n".join(lines) + "\n", "t", **kw)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_each_shape_gives_the_same_events(shape):
    t = parse(SHAPES[shape])
    ev = t.events
    tail = slice(len(ev) - 4, len(ev))  # after start_kernel's synthesised calls (none here)
    assert list(ev.kind[tail]) == [EV_ALLOC, EV_CPA, EV_FREE, EV_SYSTEM_RUNNING]
    assert list(ev.arg0[tail][[0, 2]]) == [0x7390, 0x32D06]
    assert ev.arg1[tail][0] == 2 and ev.flags[tail][0] == 1 | 2 << 8  # order, mt | Normal << 8
    assert ev.arg0[tail][1] == 0x203 and ev.mask_clr[tail][1] == 2  # direct-map pfn


def test_e820_updates_apply():
    t = parse(SHAPES["trace-6.1"])
    assert (0x1000, 0x9FC00, 1) in t.machine.e820
    assert t.machine.max_pfn() == 0x7FFDD


def test_vmalloc_calls_are_dropped_and_counted():
    line = SHAPES["trace-6.1"][1].replace("vaddr=0xffff8c4900203000", "vaddr=0xffffffffc0332000")
    t = parse([line])
    assert t.meta["cpa_vmalloc"] == 1 and not (t.events.kind == EV_CPA).any()


def test_checkpoints_keep_their_step():
    t = parse(["   init-1  [000] .....  3.6: tracing_mark_write: dmsim: step mod:xfs",
               "   init-1  [000] .....  3.7: tracing_mark_write: dmsim: vmstat direct_map_level2_splits 2",
               "   init-1  [000] .....  3.8: tracing_mark_write: dmsim: meminfo DirectMap4k: 32628 kB"])
    assert [(c.step, c.counter, c.value) for c in t.checkpoints] == [
        ("mod:xfs", "direct_map_level2_splits", 2), ("mod:xfs", "DirectMap4k", 32628)]
    assert (t.events.kind == EV_CHECKPOINT).sum() == 2
    assert t.machine.gbpages is False  # DirectMap1G absent: direct_gbpages off


def test_malformed_cpa_names_its_line():
    bad = SHAPES["trace-6.1"][1].replace(" numpages=1", "")
    with pytest.raises(TraceError) as e:
        parse(SHAPES["trace-6.1"][:1] + [bad])
    assert e.value.line == 8 and "malformed cpa event" in str(e.value)


def test_other_tracepoints_are_skipped_and_counted_by_name():
    odd = "   init-1  [000] .....  3.6: sched_switch: prev_comm=init"
    wake = "   init-1  [000] .....  3.7: sched_wakeup: comm=init"
    t = parse([odd, wake, odd] + SHAPES["trace-6.1"])
    assert t.meta["other_tracepoints"] == {"sched_switch": 2, "sched_wakeup": 1}
    assert t.meta["skipped_lines"] == 0
    assert np.count_nonzero(t.events.kind == EV_ALLOC) == 1


def test_a_line_that_is_no_trace_line_is_bad_input_and_lenient_skips_it():
    odd = "this is not a trace line"
    with pytest.raises(TraceError, match="not a trace event") as e:
        parse([odd])
    assert e.value.line == 7
    t = parse([odd] + SHAPES["trace-6.1"], lenient=True)
    assert t.meta["skipped_lines"] == 1
    assert np.count_nonzero(t.events.kind == EV_ALLOC) == 1


def test_overflow_is_reported():
    text = E820 + "# entries-in-buffer/entries-written: 10/20   #P:1\n" + "\n".join(SHAPES["trace-6.1"])
    assert parse_ftrace(text, "t").meta["overflow"]


def test_no_e820_needs_a_machine():
    with pytest.raises(TraceError, match="--machine"):
        parse_ftrace("\n".join(SHAPES["trace-6.1"]), "t")


def test_array_calls_replay_their_first_page_and_warn():
    line = SHAPES["trace-6.1"][1].replace("numpages=1 ", "numpages=7 ").replace("flags=0", "flags=2")
    t = parse([line])
    cpa = t.events.kind == EV_CPA
    assert list(t.events.arg1[cpa]) == [1]
    assert t.meta["cpa_array_calls"] == 1


@pytest.mark.parametrize("gfp, zone", [
    ("GFP_KERNEL", 2), ("GFP_KERNEL|__GFP_DMA32", 1), ("GFP_DMA32|__GFP_ZERO", 1),
    ("GFP_DMA", 0), ("__GFP_DMA|__GFP_ZERO", 0), ("0xcc0", 2), ("0xcc4", 1), ("0x1", 0),
    ("none", 2),
])
def test_gfp_zone_is_kept_with_the_allocation(gfp, zone):
    line = SHAPES["trace-6.1"][0].replace("gfp_flags=GFP_KERNEL", f"gfp_flags={gfp}")
    t = parse([line])
    assert t.events.flags[t.events.kind == EV_ALLOC][0] >> 8 == zone


# Verbatim lines of a Linux 5.10 recording (traces/real/vm2g-5.10-modules-bpf.trace.gz,
# Debian 5.10.0-32-amd64): pfn in decimal, 4 flag columns, page= a bare vmemmap
# address; /proc/vmstat has no direct_map split counters, so only DirectMap checkpoints.
E820_510 = """[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
[    0.000000] BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved
[    0.000000] BIOS-e820: [mem 0x00000000000f0000-0x00000000000fffff] reserved
[    0.000000] BIOS-e820: [mem 0x0000000000100000-0x000000007ffdcfff] usable
[    0.000000] BIOS-e820: [mem 0x000000007ffdd000-0x000000007fffffff] reserved
[    0.000000] BIOS-e820: [mem 0x00000000fffc0000-0x00000000ffffffff] reserved
[    0.000000] BIOS-e820: [mem 0x000000fd00000000-0x000000ffffffffff] reserved
[    0.000000] e820: update [mem 0x00000000-0x00000fff] usable ==> reserved
[    0.000000] e820: remove [mem 0x000a0000-0x000fffff] usable
"""
LINES_510 = [
    "# entries-in-buffer/entries-written: 6/6   #P:1",
    "            init-1       [000] ....     2.539021: mm_page_alloc: page=fffff332c1fa8c00 pfn=518704 order=0 migratetype=1 gfp_flags=GFP_HIGHUSER_MOVABLE",
    "      pgdatinit0-16      [000] ....     0.765984: mm_page_free: page=fffff332c0400000 pfn=65536 order=9",
    "    kworker/u2:0-54      [000] d...     3.140623: mm_page_free_batched: page=fffff332c1ffc140 pfn=524037 order=0",
    "            init-1       [000] ....     2.949060: cpa: (__change_page_attr_set_clr+0x0/0xd80) vaddr=0xffff9163feb5f000 numpages=5233 set=0x2 clr=0x0 flags=0 primary=1 pob=0xffff916380000000 pb=0x2fa00000",
    " dmsim-record.sh-75      [000] ....     5.681201: tracing_mark_write: dmsim: system_running",
    " dmsim-record.sh-75      [000] ....     5.694032: tracing_mark_write: dmsim: uname 5.10.0-32-amd64",
    " dmsim-record.sh-98      [000] ....     6.317911: tracing_mark_write: dmsim: meminfo DirectMap4k: 24436 kB",
    " dmsim-record.sh-98      [000] ....     6.318127: tracing_mark_write: dmsim: meminfo DirectMap2M: 2072576 kB",
    " dmsim-record.sh-98      [000] ....     6.318583: tracing_mark_write: dmsim: meminfo DirectMap1G: 0 kB",
]


def test_linux_5_10_lines():
    t = parse_ftrace(E820_510 + "=== TRACE\n" + "\n".join(LINES_510) + "\n", "t510")
    ev = t.events
    assert t.meta["page_allocs"] == 1 and t.meta["page_frees"] == 2 and not t.meta["overflow"]
    assert t.meta["system_running_marker"] and t.meta["skipped_lines"] == 0
    alloc, free = (np.nonzero(ev.kind == k)[0] for k in (EV_ALLOC, EV_FREE))
    assert ev.arg0[alloc][0] == 518704 and ev.arg1[alloc][0] == 0
    assert ev.flags[alloc][0] == 1 | 2 << 8  # movable, Normal zone
    assert list(ev.arg0[free]) == [65536, 524037] and list(ev.arg1[free]) == [9, 0]  # decimal pfns
    cpa = ev.kind == EV_CPA
    assert list(ev.arg0[cpa][-1:]) == [0x7EB5F] and list(ev.arg1[cpa][-1:]) == [5233]
    assert t.machine.max_pfn() == 0x7FFDD
    assert [(c.counter, c.value) for c in t.checkpoints] == [
        ("DirectMap4k", 24436), ("DirectMap2M", 2072576), ("DirectMap1G", 0)]
