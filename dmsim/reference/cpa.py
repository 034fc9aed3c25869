"""A slow, obvious model of __change_page_attr_set_clr() (arch/x86/mm/pat/set_memory.c,
Linux 6.1), written from the kernel source to check the numba core against.

It shares nothing with dmsim/core/cpa.py but the shape of the input and the
output: its boot state comes from reference/layout.py, the reference model of
init_mem_mapping(), not from the core's. The page tables are a
dict of leaves, {(level, base_vpfn): raw entry flags}; tables are implicit (an
address with no leaf above it is "not mapped"), and direct_pages_count[] is a
dict keyed by level.

Addresses are vpfns (see dmsim/core/state.py): the direct map is vpfn == pfn;
the kernel image's high mapping (__START_KERNEL_map) sits in the GiB slot after
the direct map, and its pfn is vpfn - highmap_vpfn + (phys_base >> PAGE_SHIFT).
Every byte-address comparison in the kernel code modelled here is between a
page-aligned start and an inclusive "last byte" end, so comparing page numbers
gives the same answers; the slot bases are 1G-aligned, so alignment tests on
vpfns agree with the kernel's alignment tests on addresses.

Deliberately not modelled, as in the core: cpa_process_alias() (callers issue
the alias calls themselves), CPA_ARRAY/CPA_PAGES_ARRAY, populate_pgd()
(cpa->pgd is only set for EFI), and TLB/cache flushing (no visible state).

Merge policies (docs/design-policies.md), chosen by `merge`:
- "none": Linux 6.1, nothing merges.
- "cpa_merge": Aaron Lu, "[RFC PATCH 1/4] x86/mm/cpa: restore global bit when page
  is present", "[RFC PATCH 2/4] x86/mm/cpa: merge splitted direct mapping when
  possible" and "[RFC PATCH 3/4] x86/mm/cpa: add merge event counter" (Aug 2022). Tables made by __split_large_page() are remembered in
  `split_tables` (PageSplitpgt); after every write that changes an entry of such
  a table (set_pte_adjust_nr_same_prot()) the table is merged into one leaf a
  level up when all 512 entries are equal and present (and, in a PMD table, 2M
  leaves). The patch keeps a running count (nr_same_prot) and recounts when it
  drops to 0; after a changing write that count is 512 exactly when all 512
  entries are equal, so this model just looks at all 512.
- "rox_collapse": 6.15, commit 41d88484c71c "x86/mm/pat: restore large ROX pages
  after fragmentation": change_page_attr_set_clr() with CPA_COLLAPSE (the
  `collapse` argument) runs cpa_collapse_large_pages() over the call's range in
  cpa_flush(), which it reaches only when the call changed something
  (CPA_FLUSHTLB). The same kernel's set_memory_4k() marks its ptes
  _PAGE_KERNEL_4K, so under this policy a force_split call sets that bit.

Page-table pages: every split appends ("alloc", table) to `pt_log` and every
merged or collapsed table ("free", table), in the order the kernel allocates and
frees them (merges free inside the call, collapses after it, last queued first),
so a placement model (dmsim/reference/placement.py) can take them from and give
them back to its allocator. A table is named (level of its entries, first vpfn):
(PG_LEVEL_4K, b) is the PTE table under the 2M entry at b, (PG_LEVEL_2M, B) the
PMD table under the 1G entry at B.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core import constants as C
from ..core.state import (
    ENTRY_LEAF,
    ENTRY_TABLE,
    DirectMapState,
)
from ..machine import Machine
from .layout import BootLayout, boot_layout

PRESENT = C._PAGE_PRESENT
RW = C._PAGE_RW
PSE = C._PAGE_PSE
GLOBAL = C._PAGE_GLOBAL
NX = C._PAGE_NX
_PAGE_PAT = 0x80  # bit 7: PAT in a 4K pte, PSE in a pmd/pud
_PAGE_PAT_LARGE = 0x1000  # bit 12: PAT in a large leaf
_PAGE_KNL_ERRATUM_MASK = C._PAGE_DIRTY | C._PAGE_ACCESSED
U64 = (1 << 64) - 1
EFAULT = 14

# pages per entry at each level: page_level_size(level) >> PAGE_SHIFT
LEVEL_PAGES = {C.PG_LEVEL_4K: 1, C.PG_LEVEL_2M: C.PMD_PAGES, C.PG_LEVEL_1G: C.PUD_PAGES}

# The counters compared with the core, by their index names in core/constants.py.
COUNTER_NAMES = (
    "NR_DIRECT_4K", "NR_DIRECT_2M", "NR_DIRECT_1G",
    "DIRECT_MAP_LEVEL2_SPLIT", "DIRECT_MAP_LEVEL3_SPLIT",
    "SYSTEM_RUNNING", "KERNEL_SET_TO_READONLY",
    "NR_CPA_CALLS", "NR_CPA_FAULTS", "NR_CPA_EFAULT", "NR_PTE_TABLES",
    "DIRECT_MAP_LEVEL1_MERGE", "DIRECT_MAP_LEVEL2_MERGE",
    "DIRECT_MAP_LEVEL2_COLLAPSE", "DIRECT_MAP_LEVEL3_COLLAPSE", "NR_PT_FREED",
)
MERGE_POLICIES = ("none", "cpa_merge", "rox_collapse")
_PAGE_PROTNONE = GLOBAL  # _PAGE_PROTNONE shares bit 8 with _PAGE_GLOBAL
_PAGE_KERNEL_4K = C._PAGE_KERNEL_4K


def protval_large_2_4k(val: int) -> int:
    """Clear PSE (aka _PAGE_PAT) and move the PAT bit from bit 12 to bit 7
    (protval_large_2_4k(), arch/x86/include/asm/pgtable_types.h)."""
    return (val & ~(_PAGE_PAT | _PAGE_PAT_LARGE)) | ((val & _PAGE_PAT_LARGE) >> 5)


def protval_4k_2_large(val: int) -> int:
    """Move the PAT bit from bit 7 to bit 12 (protval_4k_2_large())."""
    return (val & ~(_PAGE_PAT | _PAGE_PAT_LARGE)) | ((val & _PAGE_PAT) << 5)


def pgprot_clear_protnone_bits(val: int, restore_global: bool = False) -> int:
    """pgprot_clear_protnone_bits(): a !PRESENT entry drops _PAGE_GLOBAL, which
    would otherwise read as _PAGE_PROTNONE. restore_global: Aaron Lu, "[RFC PATCH
    1/4] x86/mm/cpa: restore global bit when page is present" (the cpa merge
    series): a present entry gets _PAGE_GLOBAL & __default_kernel_pte_mask back
    (the boot map has _PAGE_GLOBAL: no PTI), so a present -> not present -> present
    cycle leaves the pte equal to its neighbours again."""
    if not val & PRESENT:
        val &= ~GLOBAL
    elif restore_global:
        val |= GLOBAL
    return val


def overlaps(r1_start: int, r1_end: int, r2_start: int, r2_end: int) -> bool:
    """overlaps() in set_memory.c: inclusive ranges."""
    return (r1_start <= r2_end and r1_end >= r2_start) or (r2_start <= r1_end and r2_end >= r1_start)


@dataclass
class CpaData:
    """struct cpa_data, the fields this model needs (vaddr is a vpfn here)."""

    vaddr: int
    numpages: int
    mask_set: int
    mask_clr: int
    force_split: bool
    curpage: int = 0
    pfn: int = 0
    force_static_prot: bool = False


@dataclass(frozen=True)
class KernelBounds:
    """The kernel image's symbols in the units static_protections() compares."""

    text_vpfn: int  # _text
    etext_last_vpfn: int  # _etext - 1 (protect_kernel_text)
    hpage_last_vpfn: int  # __end_rodata_hpage_align - 1 (protect_kernel_text_ro)
    rodata_spfn: int  # PFN_DOWN(__pa_symbol(__start_rodata)) (protect_rodata)
    rodata_epfn: int  # PFN_DOWN(__pa_symbol(__end_rodata)) - 1


class ReferenceDirectMap:
    """The direct map and the kernel high map as a dict of leaves."""

    def __init__(self, machine: Machine, merge: str = "none", boot: BootLayout | None = None):
        """Start from the boot state of reference/layout.py (boot_layout(machine)
        unless given), not from the core's."""
        if merge not in MERGE_POLICIES:
            raise ValueError(f"merge policy {merge!r}: one of {MERGE_POLICIES}")
        if boot is None:
            boot = boot_layout(machine)
        self.merge = merge
        self.gbpages = bool(machine.gbpages)  # direct_gbpages (collapse_pud_page())
        # tables __split_large_page() made (PageSplitpgt): every table there is
        # now was built by init_mem_mapping() or head_64.S, so none is tracked
        self.split_tables: set[tuple[int, int]] = set()
        # page-table pages allocated and freed, in kernel order (see the docstring);
        # the caller empties it
        self.pt_log: list[tuple[str, tuple[int, int]]] = []
        self.flushtlb = False  # cpa->flags & CPA_FLUSHTLB of the current call
        self.leaves_by_key: dict[tuple[int, int], int] = dict(boot.leaves)
        self.direct_pages_count = dict(boot.direct_pages_count)
        self.events = dict.fromkeys(COUNTER_NAMES[3:], 0)  # boot counts no events
        self.highmap_vpfn = boot.highmap_vpfn
        self.max_pfn_mapped = boot.max_pfn_mapped
        self.pfn_mapped = list(boot.pfn_mapped)
        k = machine.kernel
        self.phys_base_pfn = boot.phys_base >> C.PAGE_SHIFT  # signed: below 0 with KASLR
        self.kernel = None if k is None else KernelBounds(
            text_vpfn=self._highmap_vaddr_to_vpfn(k.text),
            etext_last_vpfn=self._highmap_vaddr_to_vpfn(k.etext - 1),
            hpage_last_vpfn=self._highmap_vaddr_to_vpfn(k.end_rodata_hpage_align - 1),
            rodata_spfn=k.pa(k.start_rodata) >> C.PAGE_SHIFT,
            rodata_epfn=(k.pa(k.end_rodata) >> C.PAGE_SHIFT) - 1,
        )

    # --- state flags ---------------------------------------------------------------
    @property
    def system_running_state(self) -> bool:
        return self.events["SYSTEM_RUNNING"] != 0

    @property
    def kernel_set_to_readonly_flag(self) -> bool:
        return self.events["KERNEL_SET_TO_READONLY"] != 0

    def system_running(self) -> None:
        """system_state = SYSTEM_RUNNING (init/main.c: kernel_init())."""
        self.events["SYSTEM_RUNNING"] = 1

    def kernel_set_to_readonly(self) -> None:
        """kernel_set_to_readonly = 1 (mark_rodata_ro())."""
        self.events["KERNEL_SET_TO_READONLY"] = 1

    # --- address arithmetic ------------------------------------------------------
    def _highmap_vaddr_to_vpfn(self, vaddr: int) -> int:
        return self.highmap_vpfn + ((vaddr - C.START_KERNEL_MAP) >> C.PAGE_SHIFT)

    def pa_pfn(self, vpfn: int) -> int:
        """PFN_DOWN(__pa(address)): identity in the direct map, phys_base-relative
        in the high map (__phys_addr(), arch/x86/mm/physaddr.c)."""
        if vpfn >= self.highmap_vpfn:
            return vpfn - self.highmap_vpfn + self.phys_base_pfn
        return vpfn

    def pfn_range_is_mapped(self, start_pfn: int, end_pfn: int) -> bool:
        """pfn_range_is_mapped() (arch/x86/mm/init.c)."""
        return any(s <= start_pfn and end_pfn <= e for s, e in self.pfn_mapped)

    # --- page table walk -------------------------------------------------------------
    def _entry_none(self, base_vpfn: int, flags: int) -> bool:
        """pud_none()/pmd_none()/pte_none(): the whole entry value (pfn and flags)
        is zero apart from the KNL erratum bits (DIRTY, ACCESSED)."""
        value = (self.pa_pfn(base_vpfn) << C.PAGE_SHIFT) | flags
        return value & ~_PAGE_KNL_ERRATUM_MASK == 0

    def lookup_address(self, vpfn: int) -> tuple[int, int, int] | None:
        """lookup_address(): (level, base_vpfn, flags) of the leaf mapping vpfn, or
        None where the walk meets a none entry. A large entry is a leaf whether or
        not it is present (pud_large() || !pud_present(), pmd_large() ||
        !pmd_present()). A none pte at level 4K is also None here: the kernel
        returns its pointer, but every caller then treats it as unmapped
        (__change_page_attr: pte_none(); protect_kernel_text_ro: level is 4K)."""
        for level in (C.PG_LEVEL_1G, C.PG_LEVEL_2M, C.PG_LEVEL_4K):
            base = vpfn - vpfn % LEVEL_PAGES[level]
            flags = self.leaves_by_key.get((level, base))
            if flags is not None:
                if self._entry_none(base, flags):
                    return None
                return level, base, flags
        return None

    # --- static_protections() ----------------------------------------------------
    def protect_kernel_text(self, start: int, end: int) -> int:
        """protect_kernel_text(): no NX on the high map's [_text, _etext)."""
        k = self.kernel
        if k is not None and overlaps(start, end, k.text_vpfn, k.etext_last_vpfn):
            return NX
        return 0

    def protect_kernel_text_ro(self, start: int, end: int) -> int:
        """protect_kernel_text_ro(): once kernel_set_to_readonly, no RW on the
        high map's [_text, __end_rodata_hpage_align) while start is mapped large."""
        k = self.kernel
        if k is None or not self.kernel_set_to_readonly_flag or not overlaps(
                start, end, k.text_vpfn, k.hpage_last_vpfn):
            return 0
        hit = self.lookup_address(start)
        if hit is not None and hit[0] != C.PG_LEVEL_4K:
            return RW
        return 0

    def protect_pci_bios(self, spfn: int, epfn: int) -> int:
        """protect_pci_bios(): CONFIG_PCI_BIOS is X86_32-only, so 0 on x86-64."""
        return 0

    def protect_rodata(self, spfn: int, epfn: int) -> int:
        """protect_rodata(): once kernel_set_to_readonly, no RW on any mapping of
        the rodata pfns [__start_rodata, __end_rodata)."""
        k = self.kernel
        if k is not None and self.kernel_set_to_readonly_flag and overlaps(
                spfn, epfn, k.rodata_spfn, k.rodata_epfn):
            return RW
        return 0

    def static_protections(self, prot: int, start: int, pfn: int, npg: int, lpsize: int) -> int:
        """static_protections(): the bits of prot that the kernel image forbids.
        lpsize is in pages (0: a 4K/split request, enforce everything)."""
        # no point checking RW/NX conflicts when the request makes the page !PRESENT
        if not prot & PRESENT:
            return prot
        end = start + npg - 1
        forbidden = self.protect_kernel_text(start, end)
        # a change spanning a whole, aligned large page keeps it (ftrace special case)
        if lpsize != npg or start % lpsize:  # lpsize == 0 never reaches the modulo
            forbidden |= self.protect_kernel_text_ro(start, end)
        forbidden |= self.protect_pci_bios(pfn, pfn + npg - 1)
        forbidden |= self.protect_rodata(pfn, pfn + npg - 1)
        return prot & ~forbidden

    # --- splitting -------------------------------------------------------------------
    def split_page_count(self, level: int) -> None:
        """split_page_count(): one leaf moves down a level in direct_pages_count;
        the vmstat event counts only once system_state == SYSTEM_RUNNING."""
        if self.direct_pages_count[level] == 0:
            return
        self.direct_pages_count[level] -= 1
        if self.system_running_state:
            if level == C.PG_LEVEL_2M:
                self.events["DIRECT_MAP_LEVEL2_SPLIT"] += 1
            elif level == C.PG_LEVEL_1G:
                self.events["DIRECT_MAP_LEVEL3_SPLIT"] += 1
        self.direct_pages_count[level - 1] += C.PTRS_PER_PTE

    def split_set_pte(self, cpa: CpaData, pfn: int, ref_prot: int, vpfn: int, npg: int) -> int:
        """split_set_pte(): the flags of one child entry."""
        # should_split_large_page() found no inconsistent mapping: inherit as is
        if not cpa.force_static_prot:
            return ref_prot
        prot = self.static_protections(ref_prot, vpfn, pfn, npg, 0)
        if prot == ref_prot:
            return ref_prot
        # PMD split: fix the pte up; PUD split: only pr_warn_once(), not fixed
        if npg == 1:
            return prot
        return ref_prot

    def split_large_page(self, cpa: CpaData, level: int, base: int, flags: int, vpfn: int) -> None:
        """split_large_page() + __split_large_page(): replace the leaf by a table
        of 512 entries of the next level down, each inheriting its protection."""
        self.events["NR_PTE_TABLES"] += 1  # alloc_pages(GFP_KERNEL, 0)
        if level == C.PG_LEVEL_2M:
            # clear PSE (aka _PAGE_PAT) and move the PAT bit to its 4K position
            ref_prot = protval_large_2_4k(flags)
        else:
            ref_prot = flags
            # a !PRESENT pmd must not carry PSE, or pmd_present() says yes
            if not ref_prot & PRESENT:
                ref_prot &= ~PSE
        ref_prot = pgprot_clear_protnone_bits(ref_prot, self.merge == "cpa_merge")
        step = LEVEL_PAGES[level - 1]
        ref_pfn = self.pa_pfn(base)
        # children are computed while the large leaf is still installed: that is
        # what protect_kernel_text_ro()'s lookup_address() sees in split_set_pte()
        children = {
            (level - 1, base + i * step): self.split_set_pte(
                cpa, ref_pfn + i * step, ref_prot, base + i * step, step)
            for i in range(C.PTRS_PER_PTE)
        }
        # virt_addr_valid(address) holds for every pfn_mapped pfn, direct or high map
        pfn = self.pa_pfn(vpfn)
        if self.pfn_range_is_mapped(pfn, pfn + 1):
            self.split_page_count(level)
        del self.leaves_by_key[(level, base)]
        self.leaves_by_key.update(children)
        # cpa merge patch: __SetPageSplitpgt(base), nr_same_prot = PTRS_PER_PTE
        table = (level - 1, base)
        self.split_tables.add(table)
        self.pt_log.append(("alloc", table))
        # __set_pmd_pte(kpte, level, ...) installs the table: for a 2M leaf that is
        # a changing write to the PMD table above (set_pte_adjust_nr_same_prot())
        if level == C.PG_LEVEL_2M:
            self.pmd_entry_written(base)

    def should_split_large_page(self, cpa: CpaData, level: int, base: int, old_prot: int,
                                vpfn: int) -> int:
        """should_split_large_page() + __should_split_large_page(): 1 to split,
        0 when the large leaf was kept (same protection) or rewritten in place."""
        # set_memory_4k(): split without looking
        if cpa.force_split:
            return 1
        psize = LEVEL_PAGES[level]
        # the number of pages that fit into this large page from vpfn on
        cpa.numpages = min(cpa.numpages, base + psize - vpfn)
        # the requested protection, computed in 4K format and converted back
        req_prot = protval_large_2_4k(old_prot)
        req_prot &= ~cpa.mask_clr
        req_prot |= cpa.mask_set
        req_prot = protval_4k_2_large(req_prot)
        req_prot = pgprot_clear_protnone_bits(req_prot, self.merge == "cpa_merge")
        if req_prot & PRESENT:
            req_prot |= PSE
        old_pfn = self.pa_pfn(base)
        cpa.pfn = old_pfn + (vpfn - base)
        # the existing mapping violates the static protections: split, and fix
        # the children up in split_set_pte()
        chk_prot = self.static_protections(old_prot, base, old_pfn, psize, psize)
        if chk_prot != old_prot:
            cpa.force_static_prot = True
            return 1
        # same protection requested: keep the large page, whatever the range
        if req_prot == old_prot:
            return 0
        # the request does not cover the full large page: split
        if vpfn != base or cpa.numpages != psize:
            return 1
        # the new protection conflicts with a static protection: split
        new_prot = self.static_protections(req_prot, base, old_pfn, psize, psize)
        if new_prot != req_prot:
            return 1
        # all checks passed: rewrite the large leaf in place (__set_pmd_pte())
        self.leaves_by_key[(level, base)] = new_prot
        self.flushtlb = True  # cpa->flags |= CPA_FLUSHTLB
        if level == C.PG_LEVEL_2M:
            self.pmd_entry_written(base)  # set_pte_adjust_nr_same_prot(kpte, PG_LEVEL_2M)
        return 0

    # --- the walk ----------------------------------------------------------------------
    def _cpa_process_fault(self, cpa: CpaData, vpfn: int, primary: bool) -> int:
        """__cpa_process_fault(): the address has no mapping."""
        self.events["NR_CPA_FAULTS"] += 1
        # ignore all non primary paths
        if not primary:
            cpa.numpages = 1
            return 0
        # holes in the direct map below max_pfn_mapped are expected: skip a page
        if vpfn < self.highmap_vpfn and vpfn < self.max_pfn_mapped:
            cpa.numpages = 1
            cpa.pfn = vpfn
            return 0
        # the high map (no warning) and everything else: -EFAULT
        return -EFAULT

    def _change_page_attr(self, cpa: CpaData, primary: bool) -> int:
        """__change_page_attr(): one step at cpa->curpage; sets cpa->numpages to
        the pages it handled."""
        vpfn = cpa.vaddr + cpa.curpage
        while True:  # repeat: after a split, look the address up again
            hit = self.lookup_address(vpfn)
            if hit is None:
                return self._cpa_process_fault(cpa, vpfn, primary)
            level, base, old = hit
            if level == C.PG_LEVEL_4K:
                pfn = self.pa_pfn(vpfn)
                new = (old & ~cpa.mask_clr) | cpa.mask_set
                new = self.static_protections(new, vpfn, pfn, 1, 0)
                new = pgprot_clear_protnone_bits(new, self.merge == "cpa_merge")
                cpa.pfn = pfn
                # "Do we really change anything?": only a changing write is made
                if new != old:
                    self.leaves_by_key[(level, vpfn)] = new
                    self.flushtlb = True  # cpa->flags |= CPA_FLUSHTLB
                    self.pte_written(vpfn)  # set_pte_adjust_nr_same_prot(kpte, PG_LEVEL_4K)
                cpa.numpages = 1
                return 0
            do_split = self.should_split_large_page(cpa, level, base, old, vpfn)
            if do_split <= 0:
                return do_split
            self.split_large_page(cpa, level, base, old, vpfn)

    def change_page_attr_set_clr(self, vpfn: int, numpages: int, mask_set: int, mask_clr: int,
                                 primary: bool = True, force_split: bool = False,
                                 collapse: bool = False) -> int:
        """__change_page_attr_set_clr(cpa, primary) on a fresh cpa_data; returns
        0 or -EFAULT. Aliases are not derived (callers issue them).

        collapse: the call is change_page_attr_set_clr() with CPA_COLLAPSE (6.15
        set_memory_rox() on this very range; never an alias call): under
        rox_collapse, cpa_flush() then runs cpa_collapse_large_pages()."""
        mask_set &= U64
        mask_clr &= U64
        if force_split and self.merge == "rox_collapse":
            # 6.15 (41d88484c71c): set_memory_4k(), the one caller that sets force_split,
            # also sets _PAGE_KERNEL_4K, and alias_cpa = *cpa copies it to the aliases
            mask_set |= _PAGE_KERNEL_4K
        self.flushtlb = False
        # no changes, easy
        if not (mask_set | mask_clr) and not force_split:
            return 0
        self.events["NR_CPA_CALLS"] += 1
        cpa = CpaData(vaddr=vpfn, numpages=numpages, mask_set=mask_set, mask_clr=mask_clr,
                      force_split=force_split)
        rempages = numpages
        while rempages:
            # the remaining pages, for the large page preservation check
            cpa.numpages = rempages
            ret = self._change_page_attr(cpa, primary)
            if ret:
                self.events["NR_CPA_EFAULT"] += 1
                return ret  # change_page_attr_set_clr(): cpa_flush_all(), no collapse
            # BUG_ON(cpa->numpages > rempages || !cpa->numpages)
            assert 0 < cpa.numpages <= rempages, (cpa, rempages)
            rempages -= cpa.numpages
            cpa.curpage += cpa.numpages
        # change_page_attr_set_clr(): "Check whether we really changed something":
        # without CPA_FLUSHTLB it returns before cpa_flush(), so before the collapse
        if collapse and self.merge == "rox_collapse" and self.flushtlb:
            self.cpa_collapse_large_pages(vpfn, numpages)
        return 0

    # --- cpa_merge: Aaron Lu's RFC (Aug 2022) ---------------------------------------------
    def pte_written(self, vpfn: int) -> None:
        """set_pte_adjust_nr_same_prot(kpte, PG_LEVEL_4K, pte) after a pte changed:
        its table merges when it is a split table whose 512 entries now agree."""
        table = (C.PG_LEVEL_4K, vpfn - vpfn % C.PMD_PAGES)
        if self.merge != "cpa_merge" or table not in self.split_tables:
            return  # !PageSplitpgt(pgt): set_pte() only
        if self._pte_table_mergeable(table[1]):
            self.merge_splitted_mapping(table)

    def pmd_entry_written(self, base: int) -> None:
        """set_pte_adjust_nr_same_prot(kpte, PG_LEVEL_2M, pte) after the pmd entry
        at base changed (a 2M leaf rewritten, a table installed, a merge from below)."""
        table = (C.PG_LEVEL_2M, base - base % C.PUD_PAGES)
        if self.merge != "cpa_merge" or table not in self.split_tables:
            return
        if self._pmd_table_mergeable(table[1]):
            self.merge_splitted_mapping(table)

    def _pte_table_mergeable(self, base: int) -> bool:
        """nr_same_prot == PTRS_PER_PTE and same_prot & _PAGE_PRESENT, for a PTE table."""
        first = self.leaves_by_key.get((C.PG_LEVEL_4K, base))
        if first is None or not first & PRESENT:
            return False
        return all(self.leaves_by_key.get((C.PG_LEVEL_4K, base + i)) == first
                   for i in range(1, C.PTRS_PER_PTE))

    def _pmd_table_mergeable(self, base: int) -> bool:
        """... for a PMD table: the same, and same_prot & _PAGE_PSE (every entry a
        2M leaf: an entry pointing to a PTE table has _KERNPG_TABLE, without PSE)."""
        first = self.leaves_by_key.get((C.PG_LEVEL_2M, base))
        if first is None or not first & PRESENT or not first & PSE:
            return False
        return all(self.leaves_by_key.get((C.PG_LEVEL_2M, base + i * C.PMD_PAGES)) == first
                   for i in range(1, C.PTRS_PER_PTE))

    def merge_splitted_mapping(self, table: tuple[int, int]) -> None:
        """merge_splitted_mapping(pgt, level): one leaf a level up replaces the table;
        the table page is freed (__free_page()) and merge_page_count(level) counts."""
        level, base = table
        if level == C.PG_LEVEL_4K:
            first = self.leaves_by_key[(C.PG_LEVEL_4K, base)]
            for i in range(C.PTRS_PER_PTE):
                del self.leaves_by_key[(C.PG_LEVEL_4K, base + i)]
            # pgprot_4k_2_large(pte_prot) | _PAGE_PSE, written with __set_pmd_pte(upper_kpte,
            # level + 1): a write to the PMD table above, which may merge in turn (first)
            self.leaves_by_key[(C.PG_LEVEL_2M, base)] = protval_4k_2_large(first) | PSE
            self.split_tables.discard(table)  # __ClearPageSplitpgt(pgt)
            self.pmd_entry_written(base)
        else:
            first = self.leaves_by_key[(C.PG_LEVEL_2M, base)]
            for i in range(C.PTRS_PER_PTE):
                del self.leaves_by_key[(C.PG_LEVEL_2M, base + i * C.PMD_PAGES)]
            # set_pud(upper_kpte, pfn_pud(pfn, pmd_pgprot(first))): not tracked above
            self.leaves_by_key[(C.PG_LEVEL_1G, base)] = first
            self.split_tables.discard(table)
        self.pt_log.append(("free", table))  # __free_page(pgt)
        self.events["NR_PT_FREED"] += 1
        self.merge_page_count(level)

    def merge_page_count(self, level: int) -> None:
        """merge_page_count() (patch 3/4): 512 entries of `level` become one a level up,
        unconditionally (no virt_addr_valid() test); refused with a WARN when fewer
        than 512 are counted at that level."""
        if self.direct_pages_count[level] < C.PTRS_PER_PTE:
            return  # WARN_ON_ONCE(1)
        self.direct_pages_count[level] -= C.PTRS_PER_PTE
        if self.system_running_state:
            if level == C.PG_LEVEL_4K:
                self.events["DIRECT_MAP_LEVEL1_MERGE"] += 1
            elif level == C.PG_LEVEL_2M:
                self.events["DIRECT_MAP_LEVEL2_MERGE"] += 1
        self.direct_pages_count[level + 1] += 1

    # --- rox_collapse: 6.15 collapse_large_pages() ------------------------------------------
    def cpa_collapse_large_pages(self, vpfn: int, numpages: int) -> None:
        """cpa_collapse_large_pages(): collapse_large_pages() on every 2M step from
        the 2M-aligned start while within [start, addr + numpages); then the queued
        tables are freed, the last queued first (list_add() + list_for_each_entry)."""
        start = vpfn - vpfn % C.PMD_PAGES
        end = vpfn + numpages
        pgtables: list[tuple[int, int]] = []
        for addr in range(start, end, C.PMD_PAGES):
            self.collapse_large_pages(addr, pgtables)
        for table in pgtables:  # list_add() put the newest at the head
            self.pt_log.append(("free", table))
            self.events["NR_PT_FREED"] += 1

    def collapse_large_pages(self, addr: int, pgtables: list) -> int:
        """collapse_large_pages(): a pmd pointing to a PTE table under a pud pointing
        to a PMD table; collapse it, then (when that worked) the PMD table."""
        addr -= addr % C.PMD_PAGES
        slot = addr - addr % C.PUD_PAGES
        if (C.PG_LEVEL_1G, slot) in self.leaves_by_key:
            return 0  # pud_leaf(*pud)
        if (C.PG_LEVEL_2M, addr) in self.leaves_by_key:
            return 0  # pmd_leaf(*pmd) (a !present 2M leaf is !pmd_present(): out too)
        if not any((C.PG_LEVEL_4K, addr + i) in self.leaves_by_key for i in range(C.PTRS_PER_PTE)):
            return 0  # pud or pmd none: nothing maps this 2M
        collapsed = self.collapse_pmd_page(addr, pgtables)
        if collapsed:
            collapsed += self.collapse_pud_page(slot, pgtables)
        return collapsed

    def collapse_pmd_page(self, addr: int, pgtables: list) -> int:
        """collapse_pmd_page(): the first pte 2M-aligned and not _PAGE_KERNEL_4K, the
        other 511 present with the first's flags (pfns are contiguous here by
        construction: every pte maps its own pfn)."""
        first = self.leaves_by_key.get((C.PG_LEVEL_4K, addr), 0)  # pte_none(): flags 0
        pfn = self.pa_pfn(addr)
        if pfn % C.PMD_PAGES:
            return 0  # PFN_PHYS(pfn) & ~PMD_MASK
        if first & _PAGE_KERNEL_4K:
            return 0  # the page is 4k intentionally
        for i in range(1, C.PTRS_PER_PTE):
            entry = self.leaves_by_key.get((C.PG_LEVEL_4K, addr + i), 0)
            if not entry & (PRESENT | _PAGE_PROTNONE):
                return 0  # !pte_present(entry)
            if entry != first:
                return 0  # pte_flags(entry) != pte_flags(first)
        for i in range(C.PTRS_PER_PTE):
            self.leaves_by_key.pop((C.PG_LEVEL_4K, addr + i), None)
        # pgprot_4k_2_large(pte_pgprot(first)) | _PAGE_PSE, set_pmd()
        self.leaves_by_key[(C.PG_LEVEL_2M, addr)] = protval_4k_2_large(first) | PSE
        table = (C.PG_LEVEL_4K, addr)
        self.split_tables.discard(table)
        pgtables.insert(0, table)  # list_add(): freed after the TLB flush
        if self.pfn_range_is_mapped(pfn, pfn + 1):  # virt_addr_valid(addr) && ...
            self.collapse_page_count(C.PG_LEVEL_2M)
        return 1

    def collapse_pud_page(self, slot: int, pgtables: list) -> int:
        """collapse_pud_page(): only with direct_gbpages; the first pmd a leaf on a
        1G-aligned pfn, the other 511 present leaves with the first's flags."""
        if not self.gbpages:
            return 0
        first = self.leaves_by_key.get((C.PG_LEVEL_2M, slot), 0)
        pfn = self.pa_pfn(slot)
        if not first & PSE or pfn % C.PUD_PAGES:
            return 0  # !pmd_leaf(first) || PFN_PHYS(pfn) & ~PUD_MASK
        for i in range(1, C.PTRS_PER_PTE):
            entry = self.leaves_by_key.get((C.PG_LEVEL_2M, slot + i * C.PMD_PAGES), 0)
            # pmd_present(): PRESENT | PROTNONE | PSE; pmd_leaf(): PSE; a pmd that points
            # to a PTE table is no leaf (it has no key here)
            if not entry & (PRESENT | _PAGE_PROTNONE | PSE) or not entry & PSE:
                return 0
            if entry != first:
                return 0
        table = (C.PG_LEVEL_2M, slot)
        pgtables.insert(0, table)
        for i in range(C.PTRS_PER_PTE):
            del self.leaves_by_key[(C.PG_LEVEL_2M, slot + i * C.PMD_PAGES)]
        self.leaves_by_key[(C.PG_LEVEL_1G, slot)] = first  # pfn_pud(pfn, pmd_pgprot(first))
        self.split_tables.discard(table)
        if self.pfn_range_is_mapped(pfn, pfn + 1):
            self.collapse_page_count(C.PG_LEVEL_1G)
        return 1

    def collapse_page_count(self, level: int) -> None:
        """collapse_page_count(): one leaf of `level` replaces 512 of the level below."""
        self.direct_pages_count[level] += 1
        if self.system_running_state:
            if level == C.PG_LEVEL_2M:
                self.events["DIRECT_MAP_LEVEL2_COLLAPSE"] += 1
            elif level == C.PG_LEVEL_1G:
                self.events["DIRECT_MAP_LEVEL3_COLLAPSE"] += 1
        self.direct_pages_count[level - 1] -= C.PTRS_PER_PTE

    # --- migrate_unmapped with collapse_free_pageblock ------------------------------------
    def restore_pmd(self, pfn: int) -> None:
        """set_direct_map_PMD(page) of the prototype's disabled FIXME in __free_one_page()
        (RFC 1/3, Jan 2022; docs/design-policies.md): the pageblock at pfn is wholly
        free, so its direct map becomes one 2M leaf again, whatever its ptes say, when
        a PTE table maps it: the leaf init_mem_mapping() installs (PAGE_KERNEL | PSE),
        the table page freed, collapse_page_count(PG_LEVEL_2M) counted. A 2M or 1G
        leaf is left alone. (The function does not exist; this reads its name: set the
        PMD mapping of the page, unconditionally.)"""
        base = pfn - pfn % C.PMD_PAGES
        if (C.PG_LEVEL_2M, base) in self.leaves_by_key:
            return
        if (C.PG_LEVEL_1G, base - base % C.PUD_PAGES) in self.leaves_by_key:
            return
        if not any((C.PG_LEVEL_4K, base + i) in self.leaves_by_key for i in range(C.PTRS_PER_PTE)):
            return  # no PTE table here (nothing maps this 2M), nothing to restore
        for i in range(C.PTRS_PER_PTE):
            self.leaves_by_key.pop((C.PG_LEVEL_4K, base + i), None)
        self.leaves_by_key[(C.PG_LEVEL_2M, base)] = C.PAGE_KERNEL | PSE
        table = (C.PG_LEVEL_4K, base)
        self.split_tables.discard(table)
        self.pt_log.append(("free", table))
        self.events["NR_PT_FREED"] += 1
        if self.pfn_range_is_mapped(base, base + 1):
            self.collapse_page_count(C.PG_LEVEL_2M)
        # the new leaf is a write to the PMD table above (cpa_merge would look at it)
        self.pmd_entry_written(base)

    # --- observable outputs ------------------------------------------------------
    def leaves(self) -> list[tuple[int, int, int]]:
        """Every leaf as (level, base_vpfn, flags), sorted."""
        return sorted((lv, base, flags) for (lv, base), flags in self.leaves_by_key.items())

    def counters(self) -> dict[str, int]:
        """direct_pages_count[] and the event counters, by core/constants.py names."""
        out = {
            "NR_DIRECT_4K": self.direct_pages_count[C.PG_LEVEL_4K],
            "NR_DIRECT_2M": self.direct_pages_count[C.PG_LEVEL_2M],
            "NR_DIRECT_1G": self.direct_pages_count[C.PG_LEVEL_1G],
        }
        out.update(self.events)
        return out

    def check_invariants(self) -> None:
        """No two leaves overlap; large present leaves carry PSE; ptes never do."""
        large_blocks: dict[int, tuple[int, int]] = {}  # 2M block -> the large leaf on it
        pte_blocks: set[int] = set()  # 2M blocks that hold ptes
        for (level, base), flags in self.leaves_by_key.items():
            assert base % LEVEL_PAGES[level] == 0, (level, base)
            if level == C.PG_LEVEL_4K:
                assert not flags & _PAGE_PAT, (level, base, hex(flags))
                pte_blocks.add(base // C.PMD_PAGES)
                continue
            assert bool(flags & PSE) == bool(flags & PRESENT), (level, base, hex(flags))
            first = base // C.PMD_PAGES
            for b in range(first, first + LEVEL_PAGES[level] // C.PMD_PAGES):
                assert b not in large_blocks, ((level, base), large_blocks[b])
                large_blocks[b] = (level, base)
        both = pte_blocks & large_blocks.keys()
        assert not both, f"2M blocks mapped both large and by ptes: {sorted(both)[:4]}"


def core_leaves(st: DirectMapState) -> list[tuple[int, int, int]]:
    """The numba state's leaves as (level, base_vpfn, flags), sorted: walk from
    the pud array down; a pte value of 0 is pte_none() and not a leaf."""
    out = []
    for pud in range(st.pud_state.shape[0]):
        state = int(st.pud_state[pud])
        if state == ENTRY_LEAF:
            out.append((C.PG_LEVEL_1G, pud * C.PUD_PAGES, int(st.pud_prot[pud])))
        elif state == ENTRY_TABLE:
            for idx in range(pud * 512, pud * 512 + 512):
                pstate = int(st.pmd_state[idx])
                if pstate == ENTRY_LEAF:
                    out.append((C.PG_LEVEL_2M, idx * C.PMD_PAGES, int(st.pmd_prot[idx])))
                elif pstate == ENTRY_TABLE:
                    row = st.pte[int(st.pmd_table[idx])]
                    for j in row.nonzero()[0].tolist():
                        out.append((C.PG_LEVEL_4K, idx * C.PMD_PAGES + j, int(row[j])))
    out.sort()
    return out


def counters_from_row(row) -> dict[str, int]:
    return {name: int(row[getattr(C, name)]) for name in COUNTER_NAMES}
