"""A slow, obvious model of __change_page_attr_set_clr() (arch/x86/mm/pat/set_memory.c,
Linux 6.1), written from the kernel source to check the numba core against.

It shares nothing with dmsim/core/cpa.py but the input (the boot state that
init_mem_mapping() builds) and the shape of the output. The page tables are a
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
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core import constants as C
from ..core.state import (
    ENTRY_LEAF,
    ENTRY_TABLE,
    P_HIGHMAP_VPFN,
    P_MAX_PFN_MAPPED,
    DirectMapState,
)
from ..machine import Machine

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
)


def protval_large_2_4k(val: int) -> int:
    """Clear PSE (aka _PAGE_PAT) and move the PAT bit from bit 12 to bit 7
    (protval_large_2_4k(), arch/x86/include/asm/pgtable_types.h)."""
    return (val & ~(_PAGE_PAT | _PAGE_PAT_LARGE)) | ((val & _PAGE_PAT_LARGE) >> 5)


def protval_4k_2_large(val: int) -> int:
    """Move the PAT bit from bit 7 to bit 12 (protval_4k_2_large())."""
    return (val & ~(_PAGE_PAT | _PAGE_PAT_LARGE)) | ((val & _PAGE_PAT) << 5)


def pgprot_clear_protnone_bits(val: int) -> int:
    """pgprot_clear_protnone_bits(): a !PRESENT entry drops _PAGE_GLOBAL, which
    would otherwise read as _PAGE_PROTNONE."""
    if not val & PRESENT:
        val &= ~GLOBAL
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

    def __init__(self, machine: Machine, st: DirectMapState):
        """Read the boot state out of st (before anything is replayed on it)."""
        self.leaves_by_key: dict[tuple[int, int], int] = _leaves_from_state(st)
        self.direct_pages_count = {
            C.PG_LEVEL_4K: int(st.counters[C.NR_DIRECT_4K]),
            C.PG_LEVEL_2M: int(st.counters[C.NR_DIRECT_2M]),
            C.PG_LEVEL_1G: int(st.counters[C.NR_DIRECT_1G]),
        }
        self.events = {name: int(st.counters[getattr(C, name)]) for name in COUNTER_NAMES[3:]}
        self.highmap_vpfn = int(st.params[P_HIGHMAP_VPFN])
        self.max_pfn_mapped = int(st.params[P_MAX_PFN_MAPPED])
        self.pfn_mapped = [(int(s), int(e)) for s, e in st.pfn_mapped]
        k = machine.kernel
        self.phys_base_pfn = 0 if k is None else k.phys_base >> C.PAGE_SHIFT
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
        ref_prot = pgprot_clear_protnone_bits(ref_prot)
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
        req_prot = pgprot_clear_protnone_bits(req_prot)
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
        # all checks passed: rewrite the large leaf in place
        self.leaves_by_key[(level, base)] = new_prot
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
                new = pgprot_clear_protnone_bits(new)
                cpa.pfn = pfn
                self.leaves_by_key[(level, vpfn)] = new
                cpa.numpages = 1
                return 0
            do_split = self.should_split_large_page(cpa, level, base, old, vpfn)
            if do_split <= 0:
                return do_split
            self.split_large_page(cpa, level, base, old, vpfn)

    def change_page_attr_set_clr(self, vpfn: int, numpages: int, mask_set: int, mask_clr: int,
                                 primary: bool = True, force_split: bool = False) -> int:
        """__change_page_attr_set_clr(cpa, primary) on a fresh cpa_data; returns
        0 or -EFAULT. Aliases are not derived (callers issue them)."""
        mask_set &= U64
        mask_clr &= U64
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
                return ret
            # BUG_ON(cpa->numpages > rempages || !cpa->numpages)
            assert 0 < cpa.numpages <= rempages, (cpa, rempages)
            rempages -= cpa.numpages
            cpa.curpage += cpa.numpages
        return 0

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


def _leaves_from_state(st: DirectMapState) -> dict[tuple[int, int], int]:
    return {(lv, base): flags for lv, base, flags in core_leaves(st)}


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


def core_counters(st: DirectMapState) -> dict[str, int]:
    """The numba state's counters, keyed like ReferenceDirectMap.counters()."""
    return counters_from_row(st.counters)


def counters_from_row(row) -> dict[str, int]:
    return {name: int(row[getattr(C, name)]) for name in COUNTER_NAMES}
