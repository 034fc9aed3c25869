"""init_mem_mapping(): the boot direct map and its page counting (Linux 6.1)."""

from __future__ import annotations

import glob
import os

import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from dmsim.core import constants as C
from dmsim.core.constants import START_KERNEL_MAP
from dmsim.core.layout import init_mem_mapping
from dmsim.core.state import (
    ENTRY_LEAF,
    ENTRY_TABLE,
    P_HIGHMAP_PFN,
    P_HIGHMAP_VPFN,
    P_MAX_PFN_MAPPED,
)
from dmsim.load import load_trace
from dmsim.machine import E820_TYPE_RESERVED_KERN, KernelImage, Machine
from dmsim.reference.cpa import core_leaves
from dmsim.reference.layout import boot_layout
from tests.helpers import GiB, counts, qemu_machine


def test_2g_guest_counts_each_ram_page_once():
    # ISA range 256 x 4K, [1M, 2M) head 256 x 4K, 4K tail [0x7fe00000, 0x7ffdd000) = 477
    st = init_mem_mapping(qemu_machine(2))
    assert counts(st)[:3] == (256 + 256 + 477, 1022, 0)


def test_4g_guest_counts_the_top_gib_three_times():
    # memory_map_top_down(): the first 2M step maps [5G-2M, 5G) with a 1G leaf
    # (adjust_range_page_size_mask), the 512M step and the final step revisit it
    # and phys_pud_init() counts the existing leaf again: 2 GiB of phantom 1G.
    st = init_mem_mapping(qemu_machine(4))
    assert counts(st)[:3] == (989, 1022, 4)
    assert st.pud_state[1] == ENTRY_LEAF and st.pud_state[4] == ENTRY_LEAF
    assert st.pud_state[0] == ENTRY_TABLE


def test_nogbpages_maps_2m_only():
    # The same steps as with gbpages, every range at 2M (page_size_mask without
    # PG_LEVEL_1G), nothing mapped twice at 2M:
    #   ISA [0, 1M)                                  256 x 4K
    #   2M step   [5G-2M, 5G)                          1 x 2M
    #   512M step [4.5G, 5G-2M)                      255 x 2M
    #   last step [1M, 0xbffdd000): [1M, 2M) 256 x 4K, [2M, 3G-2M) 1534 x 2M,
    #             [3G-2M, 0xbffdd000) 477 x 4K; [4G, 4.5G) 256 x 2M
    st = init_mem_mapping(qemu_machine(4, gbpages=False))
    assert counts(st)[:3] == (256 + 256 + 477, 1 + 255 + 1534 + 256, 0)
    # a partition of the mapped range: RAM plus the ISA range's non-RAM pages
    # (pfn 0 and [0x9f, 0x100): 256 - 158 = 98)
    assert 2046 * 512 + 989 == qemu_machine(4).total_ram_pages() + 98


def test_isa_range_always_mapped_with_4k():
    st = init_mem_mapping(Machine(e820=[(0x100000, 64 << 20, 1)]))
    row = st.pmd_table[0]
    assert st.pmd_state[0] == ENTRY_TABLE
    assert all(st.pte[row, i] != 0 for i in range(256))  # [0, 1M) although not RAM


def test_reserved_top_moves_the_first_step():
    # memory_map_top_down(): a reservation at the top of RAM (the last page of an
    # initrd at [5G-4K, 5G)) makes memblock_find_in_range() return [5G-4M, 5G-2M),
    # so real_end = 5G-2M. The 1G leaf over [4G, 5G) is then counted once more:
    #   2M step [5G-4M, 5G-2M): adjust_range_page_size_mask() -> 1G leaf     1
    #   512M step [4.5G, 5G-4M): revisits the leaf                           2
    #   last step [1M, 4.5G): [1G, 2G) a new 1G leaf, [4G, 4.5G) the leaf    4
    #   init_range_memory_mapping(real_end, map_end) = [5G-2M, 5G): again    5
    # (without the reservation real_end = 5G and there is no fourth visit: 4)
    m = qemu_machine(4)
    m.reserved = [(5 * GiB - 0x1000, 5 * GiB)]
    st = init_mem_mapping(m)
    assert counts(st)[:3] == (989, 1022, 5)
    assert counts(init_mem_mapping(qemu_machine(4)))[:3] == (989, 1022, 4)


def test_reserved_top_below_4g_changes_the_step_sizes():
    # 2 GiB guest, initrd at [0x7fa00000, 0x7ffd0000): real_end = 0x7fa00000.
    #   2M step [0x7f800000, 0x7fa00000)            1 x 2M  (mapped 2M: step 512M)
    #   512M step [1.5G, 0x7f800000)              252 x 2M  (mapped 506M: step stays)
    #   512M step [1G, 1.5G)                      256 x 2M  (step 128G)
    #   last step [1M, 1G): 256 x 4K, 511 x 2M
    #   [real_end, end): [0x7fa00000, 0x7fe00000) 2 x 2M, [0x7fe00000, 0x7ffdd000) 477 x 4K
    # The totals equal the unreserved ones: the same RAM at the same page sizes,
    # mapped in a different order (nothing is revisited at 1G on a 2 GiB guest).
    m = qemu_machine(2)
    m.reserved = [(0x7FA00000, 0x7FFD0000)]
    assert counts(init_mem_mapping(m))[:3] == (256 + 256 + 477, 1 + 252 + 256 + 511 + 2, 0)


def test_unaligned_ram_end_uses_4k_tail():
    st = init_mem_mapping(Machine(e820=[(0x100000, GiB + 0x5000, 1)]))
    four_k, two_m, one_g = counts(st)[:3]
    assert (four_k, two_m, one_g) == (256 + 256 + 5, 511, 0)


# --- the core against the reference model (dmsim/reference/layout.py) ----------------------

KiB, MiB = 1 << 10, 1 << 20
RAM, RESERVED, ACPI, NVS = 1, 2, 3, 4
RESERVED_KERN = E820_TYPE_RESERVED_KERN


def _point(lo: int, hi: int):
    """An address in [lo, hi]: 4K-aligned, unaligned, 2M- or 1G-aligned."""
    return st.one_of([st.integers(lo, hi)] + [
        st.integers(-(-lo >> shift), hi >> shift).map(lambda p, s=shift: p << s)
        for shift in (12, 21, 30) if -(-lo >> shift) <= hi >> shift])


@st.composite
def boot_machines(draw) -> Machine:
    """Random e820 maps: 1-4 RAM ranges with holes (typed or not), a PC-like low
    end or RAM from 0, RESERVED_KERN pieces (setup_data) inside RAM, memblock
    reservations (the first 2M block moves), and a kernel image at a random
    phys_base: above or below its link address (negative, stored as the
    kernel's unsigned long), with or without gbpages."""
    gbpages = draw(st.booleans())
    limit = draw(st.sampled_from([64 * MiB, 3 * GiB, 6 * GiB]))
    e820: list[tuple[int, int, int]] = []
    lo = 0
    low_end = draw(st.sampled_from(["pc", "pc", "from0", "none"]))
    if low_end == "pc":
        e820 += [(0, 0x9FC00, RAM), (0x9FC00, 0x100000, RESERVED)]
        lo = 0x100000
    n = draw(st.integers(1, 4))
    pts = sorted(draw(st.lists(_point(lo, limit), min_size=2 * n, max_size=2 * n, unique=True)))
    if low_end == "from0":
        pts[0] = 0
    prev = lo
    for i in range(n):
        s, e = pts[2 * i], pts[2 * i + 1]
        gap = draw(st.sampled_from([None, None, RESERVED, ACPI, NVS]))
        if gap is not None and s > prev:
            e820.append((prev, s, gap))
        if e > s and draw(st.integers(0, 3)) == 0:  # setup_data: RESERVED_KERN inside RAM
            a = draw(st.one_of(st.integers(s, e - 1), _point(s, e - 1)))
            b = draw(st.one_of(st.just(e), _point(a + 1, e),  # often up to the range's end
                               st.integers(a + 1, min(e, a + draw(st.sampled_from([4 * KiB, 2 * MiB]))))))
            e820 += [(x, y, t) for x, y, t in ((s, a, RAM), (a, b, RESERVED_KERN), (b, e, RAM)) if x < y]
        else:
            e820.append((s, e, RAM))
        prev = e
    assume(any(t == RAM and (e >> 12) > ((s + 4095) >> 12) for s, e, t in e820))
    machine = Machine(e820=sorted(e820), gbpages=gbpages)
    ram = machine.ram_ranges()

    reserved = []
    for _ in range(draw(st.integers(0, 2))):  # initrd, EFI: often at the top of RAM
        s, e = draw(st.sampled_from(ram))
        a = draw(st.one_of(st.integers(s, e - 1), st.just(max(s, e - draw(st.integers(1, 64 * MiB))))))
        reserved.append((a, min(e, a + draw(st.integers(1, 256 * MiB)))))

    kernel = None
    if draw(st.booleans()):
        text_off = draw(st.integers(1, 32)) << 21  # _text - __START_KERNEL_map
        text = START_KERNEL_MAP + text_off
        etext = text + draw(st.integers(256, 3000)) * 4096 + draw(st.integers(0, 4095))
        start_rodata = -(-etext // (2 * MiB)) * (2 * MiB)
        end_rodata = start_rodata + draw(st.integers(64, 1500)) * 4096
        hpage = -(-end_rodata // (2 * MiB)) * (2 * MiB)
        end = hpage + draw(st.one_of(st.just(0), st.integers(1, 2500).map(lambda p: p * 4096)))
        s, e = draw(st.sampled_from(ram))
        phys_text = draw(st.integers(-(-s >> 21), max(-(-s >> 21), e >> 21))) << 21
        phys_base = (phys_text - text_off) & ((1 << 64) - 1)  # below 0: KASLR put it low
        kernel = KernelImage(text=text, etext=etext, start_rodata=start_rodata,
                             end_rodata=end_rodata, end_rodata_hpage_align=hpage, end=end,
                             phys_base=phys_base)
        if draw(st.booleans()):
            reserved.append((phys_text, phys_text + (end - text)))
    return Machine(e820=sorted(e820), gbpages=gbpages, kernel=kernel, reserved=reserved)


def _core_layout(m: Machine) -> dict:
    s = init_mem_mapping(m)
    return {"leaves": core_leaves(s),
            "counts": [int(x) for x in s.counters[[C.NR_DIRECT_4K, C.NR_DIRECT_2M, C.NR_DIRECT_1G]]],
            "max_pfn_mapped": int(s.params[P_MAX_PFN_MAPPED]),
            "pfn_mapped": [(int(a), int(b)) for a, b in s.pfn_mapped],
            "highmap_vpfn": int(s.params[P_HIGHMAP_VPFN]),
            "phys_base_pfn": int(s.params[P_HIGHMAP_PFN]) if m.kernel is not None else 0}


def _reference_layout(m: Machine) -> dict:
    b = boot_layout(m)
    return {"leaves": b.sorted_leaves(),
            "counts": [b.direct_pages_count[lv] for lv in (C.PG_LEVEL_4K, C.PG_LEVEL_2M, C.PG_LEVEL_1G)],
            "max_pfn_mapped": b.max_pfn_mapped, "pfn_mapped": b.pfn_mapped,
            "highmap_vpfn": b.highmap_vpfn, "phys_base_pfn": b.phys_base >> C.PAGE_SHIFT}


def _diff(core: dict, ref: dict) -> str:
    out = []
    for k in core:
        if core[k] == ref[k]:
            continue
        if k == "leaves":
            a, b = set(core[k]), set(ref[k])
            fmt = lambda xs: ", ".join(f"(L{lv}, {base:#x}, {fl:#x})" for lv, base, fl in sorted(xs)[:6])  # noqa: E731
            out.append(f"leaves: only in core [{fmt(a - b)}] ({len(a - b)}), "
                       f"only in reference [{fmt(b - a)}] ({len(b - a)})")
        else:
            out.append(f"{k}: core {core[k]} reference {ref[k]}")
    return "; ".join(out)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(boot_machines())
def test_core_layout_agrees_with_reference(machine):
    note(f"machine: {machine}")
    core, ref = _core_layout(machine), _reference_layout(machine)
    assert core == ref, _diff(core, ref)


@pytest.mark.parametrize("gib,gbpages", [(2, True), (4, True), (4, False), (8, True)])
def test_qemu_guests_agree_with_reference(gib, gbpages):
    m = qemu_machine(gib, gbpages=gbpages)
    assert _core_layout(m) == _reference_layout(m)


def test_setup_data_leaf_survives_a_lower_call():
    # memblock.memory is [1M, 4M + 1): the first step maps [2M, 4M) with a 2M leaf
    # over RESERVED_KERN; the next call, [1M, 2M), walks past its end onto that
    # entry and keeps it, since e820 has RESERVED_KERN there (6.1 clears only
    # entries with neither RAM nor RESERVED_KERN; the core used to test ACPI)
    m = Machine(e820=[(0, 0x9FC00, RAM), (0x9FC00, 0x100000, RESERVED),
                      (0x100000, 4 * MiB, RESERVED_KERN), (4 * MiB, 4 * MiB + 1, RAM)],
                gbpages=False)
    core, ref = _core_layout(m), _reference_layout(m)
    assert (C.PG_LEVEL_2M, 512, C.PAGE_KERNEL | C._PAGE_PSE) in ref["leaves"]
    assert core == ref, _diff(core, ref)


def test_max_pfn_counts_ram_only():
    # e820__end_of_ram_pfn() ignores RESERVED_KERN: max_pfn is 159, below the ISA
    # end, so memory_map_top_down() finds no 2M block, takes real_end = 2M and
    # maps [1M, 2M) only; the RESERVED_KERN page at [2M, 2M + 4K) stays unmapped
    m = Machine(e820=[(0, 0x9FC00, RAM), (0x9FC00, 0x100000, RESERVED),
                      (0x100000, 2 * MiB + 4096, RESERVED_KERN)], gbpages=False)
    core, ref = _core_layout(m), _reference_layout(m)
    assert ref["pfn_mapped"] == [(0, 512)] and ref["counts"] == [512, 0, 0]
    assert core == ref, _diff(core, ref)


REAL_TRACES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "traces", "real",
                                            "*.trace.gz")))


@pytest.mark.parametrize("path", REAL_TRACES, ids=os.path.basename)
def test_real_trace_machines_agree_with_reference(path):
    # the machines whose first checkpoint is the kernel's own DirectMap truth
    # (tests/test_real_traces.py checks the core's counts against it)
    m = load_trace(path).machine
    core, ref = _core_layout(m), _reference_layout(m)
    assert core == ref, _diff(core, ref)
