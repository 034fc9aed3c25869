"""init_mem_mapping(): the boot direct map and its page counting (Linux 6.1)."""

from __future__ import annotations

from dmsim.core.layout import init_mem_mapping
from dmsim.core.state import ENTRY_LEAF, ENTRY_TABLE
from dmsim.machine import Machine
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
    st = init_mem_mapping(qemu_machine(4, gbpages=False))
    four_k, two_m, one_g = counts(st)[:3]
    assert one_g == 0
    assert two_m * 512 + four_k >= qemu_machine(4).total_ram_pages()


def test_isa_range_always_mapped_with_4k():
    st = init_mem_mapping(Machine(e820=[(0x100000, 64 << 20, 1)]))
    row = st.pmd_table[0]
    assert st.pmd_state[0] == ENTRY_TABLE
    assert all(st.pte[row, i] != 0 for i in range(256))  # [0, 1M) although not RAM


def test_reserved_top_moves_the_first_step():
    # a reservation at the top of RAM (the initrd) moves real_end down; with
    # 2G of RAM the counts stay the same, only the order of the steps changes
    m = qemu_machine(2)
    m.reserved = [(0x7FA00000, 0x7FFD0000)]
    assert counts(init_mem_mapping(m))[:3] == (989, 1022, 0)


def test_unaligned_ram_end_uses_4k_tail():
    st = init_mem_mapping(Machine(e820=[(0x100000, GiB + 0x5000, 1)]))
    four_k, two_m, one_g = counts(st)[:3]
    assert (four_k, two_m, one_g) == (256 + 256 + 5, 511, 0)
