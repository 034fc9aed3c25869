"""static_protections(): what the kernel image forbids (arch/x86/mm/pat/set_memory.c)."""

from __future__ import annotations

from dmsim.core import constants as C
from dmsim.core.state import ENTRY_TABLE, P_HIGHMAP_VPFN
from dmsim.machine import KernelImage
from tests.helpers import NX, RW, counts, qemu_machine, run_calls

TEXT = C.START_KERNEL_MAP + 0x1000000  # _text, 2M aligned; phys_base 0: pa 16M
KERNEL = KernelImage(text=TEXT, etext=TEXT + 0xE01D32, start_rodata=TEXT + 0x1000000,
                     end_rodata=TEXT + 0x18EB000, end_rodata_hpage_align=TEXT + 0x1A00000,
                     end=TEXT + 0x3430000, phys_base=0)
HM = 2 * 262144  # P_HIGHMAP_VPFN of a 2 GiB machine
TEXT_VPFN = HM + (0x1000000 >> 12)
TEXT_PFN = 0x1000000 >> 12
RODATA_PFN = TEXT_PFN + 0x1000


def machine():
    return qemu_machine(2, kernel=KERNEL)


def pte_of(st, vpfn):
    return int(st.pte[st.pmd_table[vpfn >> 9], vpfn & 511])


def test_high_map_covers_the_image_with_2m_leaves():
    st = run_calls(machine(), [])
    assert st.params[P_HIGHMAP_VPFN] == HM
    first, last = TEXT_VPFN >> 9, (HM + ((0x1000000 + 0x3430000 + 0x1FFFFF) >> 12)) >> 9
    assert all(st.pmd_state[i] == 1 for i in range(first, last))
    assert st.pmd_state[first - 1] == 0 and st.pmd_state[last] == 0


def test_text_cannot_become_nx():
    # protect_kernel_text(): NX is forbidden on the high map's text
    st = run_calls(machine(), ["running", (TEXT_VPFN + 3, 1, NX, 0)])
    assert st.pmd_state[TEXT_VPFN >> 9] == ENTRY_TABLE  # partial request: split
    assert pte_of(st, TEXT_VPFN + 3) & NX == 0
    assert counts(st)[3] == 1  # the high map's split is counted (virt_addr_valid)


def test_rodata_alias_stays_read_only_once_kernel_is_ro():
    leaf = RODATA_PFN & ~511
    calls = [(leaf, 512, 0, RW, False), "kro", "running", (RODATA_PFN + 5, 1, RW, 0, False),
             (leaf + 511, 1, RW, 0, False)]
    st = run_calls(machine(), calls)
    assert pte_of(st, RODATA_PFN + 5) & RW == 0  # protect_rodata()
    assert pte_of(st, leaf + 511) & RW == 0  # still inside rodata
    st = run_calls(machine(), calls[:1] + ["running", calls[3]])  # before mark_rodata_ro
    assert pte_of(st, RODATA_PFN + 5) & RW


def test_conflicting_leaf_is_split_with_static_protections_enforced():
    # An RW direct-map leaf over rodata after kernel_set_to_readonly: any change
    # finds chk_prot != old_prot, splits with force_static_prot, and the
    # children inside rodata lose RW (split_set_pte).
    leaf = RODATA_PFN & ~511
    st = run_calls(machine(), ["kro", "running", (leaf + 7, 1, C._PAGE_USER, 0, False)])
    assert counts(st)[3] == 1
    row = st.pmd_table[leaf >> 9]
    assert all(int(st.pte[row, i]) & RW == 0 for i in range(512))  # whole leaf is rodata
    assert int(st.pte[row, 7]) & C._PAGE_USER


def test_rodata_rules_apply_by_pfn_not_address():
    # a direct-map page outside the image is not protected
    st = run_calls(machine(), ["kro", (0x30000, 1, 0, RW, False), (0x30000, 1, RW, 0, False)])
    assert pte_of(st, 0x30000) & RW
