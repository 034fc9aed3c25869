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
