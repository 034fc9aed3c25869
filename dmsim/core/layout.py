"""The boot-time direct map: a model of init_mem_mapping() (arch/x86/mm/init.c,
init_64.c, Linux 6.1), including its page counting.

DirectMap4k/2M/1G are the kernel's own arithmetic (update_page_count()), not a
partition of RAM: phys_pud_init()/phys_pmd_init()/phys_pte_init() count an
entry that is already present again when a later init_memory_mapping() call
revisits it (`if (!after_bootmem) pages++`). This runs once per replay, so it
is plain Python written to follow the kernel line by line.
"""

from __future__ import annotations

import numpy as np

from ..machine import E820_TYPE_RAM, E820_TYPE_RESERVED_KERN, Machine, merge_ranges
from .constants import (
    _PAGE_PSE,
    HIGHMAP_PMDS,
    ISA_END_ADDRESS,
    NR_DIRECT_1G,
    NR_DIRECT_2M,
    NR_DIRECT_4K,
    PAGE_KERNEL,
    PAGE_KERNEL_LARGE_EXEC,
    PAGE_SHIFT,
    PAGE_SIZE,
    PG_LEVEL_1G,
    PG_LEVEL_2M,
    PMD_PAGES,
    PUD_PAGES,
    START_KERNEL_MAP,
)
from .state import (
    ENTRY_LEAF,
    ENTRY_NONE,
    ENTRY_TABLE,
    P_GBPAGES,
    P_HAVE_KERNEL,
    P_HIGHMAP_END_PFN,
    P_HIGHMAP_PFN,
    P_HIGHMAP_START_PFN,
    P_HIGHMAP_VPFN,
    P_MAX_PFN_MAPPED,
    P_RODATA_EPFN,
    P_RODATA_SPFN,
    P_TEXT_LAST,
    P_TEXT_RO_LAST,
    P_TEXT_START,
    DirectMapState,
)

PMD_SIZE = 1 << 21
PUD_SIZE = 1 << 30
P4D_SIZE = 1 << 39  # one pgd entry with 4-level paging
NR_RANGE_MR = 5


def _round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def _round_down(x: int, a: int) -> int:
    return x // a * a


class _Boot:
    """init_mem_mapping()'s working state: the page tables plus memblock."""

    def __init__(self, machine: Machine, st: DirectMapState, nr_direct_puds: int):
        self.m = machine
        self.st = st
        self.nr_direct_puds = nr_direct_puds
        self.memory = machine.ram_ranges()  # memblock.memory, byte-exact
        self.page_size_mask = (1 << PG_LEVEL_2M) | ((1 << PG_LEVEL_1G) if machine.gbpages else 0)
        self.pfn_mapped: list[tuple[int, int]] = []
        self.max_pfn_mapped = 0

    # --- memblock / e820 queries -------------------------------------------------
    def memblock_is_region_memory(self, base: int, size: int) -> bool:
        end = base + size
        return any(s <= base and end <= e for s, e in self.memory)

    def e820_mapped_any(self, start: int, end: int) -> bool:
        """e820__mapped_any() for E820_TYPE_RAM or E820_TYPE_RESERVED_KERN (Linux 6.1;
        keeping E820_TYPE_ACPI entries too came later, for kdump of SNP/TDX guests)."""
        return any(t in (E820_TYPE_RAM, E820_TYPE_RESERVED_KERN) and s < end and e > start
                   for s, e, t in self.m.e820)

    def mem_pfn_ranges(self):
        """for_each_mem_pfn_range(): memblock.memory rounded inwards to pages."""
        for s, e in self.memory:
            sp, ep = (s + PAGE_SIZE - 1) >> PAGE_SHIFT, e >> PAGE_SHIFT
            if sp < ep:
                yield sp, ep

    def find_top_down(self, start: int, end: int, size: int, align: int) -> int:
        """__memblock_find_range_top_down() over memory minus reservations."""
        free = []
        for s, e in self.memory:
            pieces = [(s, e)]
            for rs, re_ in self.m.reserved:
                nxt = []
                for ps, pe in pieces:
                    if re_ <= ps or rs >= pe:
                        nxt.append((ps, pe))
                        continue
                    if ps < rs:
                        nxt.append((ps, rs))
                    if re_ < pe:
                        nxt.append((re_, pe))
                pieces = nxt
            free.extend(pieces)
        for s, e in sorted(free, reverse=True):
            this_start, this_end = max(s, start), min(e, end)
            if this_end < size:
                continue
            cand = _round_down(this_end - size, align)
            if cand >= this_start:
                return cand
        return 0

    # --- update_page_count() --------------------------------------------------
    def update_page_count(self, level: int, pages: int) -> None:
        idx = {1: NR_DIRECT_4K, 2: NR_DIRECT_2M, 3: NR_DIRECT_1G}[level]
        self.st.counters[idx] += pages

    # --- arch/x86/mm/init_64.c ------------------------------------------------
    def phys_pte_init(self, row: int, paddr: int, paddr_end: int, prot: int) -> int:
        pages = 0
        paddr_last = paddr_end
        pte = self.st.pte[row]
        i = (paddr >> PAGE_SHIFT) & 511
        while i < 512:
            paddr_next = (paddr & ~(PAGE_SIZE - 1)) + PAGE_SIZE
            if paddr >= paddr_end:
                if not self.e820_mapped_any(paddr & ~(PAGE_SIZE - 1), paddr_next):
                    pte[i] = 0
            elif pte[i] != 0:
                pages += 1  # re-used mapping, counted again before bootmem
            else:
                pages += 1
                pte[i] = prot
                paddr_last = paddr_next
            i += 1
            paddr = paddr_next
        self.update_page_count(1, pages)
        return paddr_last

    def _set_pmd_none(self, idx: int) -> None:
        self.st.pmd_state[idx] = ENTRY_NONE
        self.st.pmd_table[idx] = -1
        self.st.pmd_prot[idx] = 0

    def phys_pmd_init(self, paddr: int, paddr_end: int, mask: int, prot: int) -> int:
        st = self.st
        pages = 0
        paddr_last = paddr_end
        gb_base = (paddr >> 30) << 9
        i = (paddr >> 21) & 511
        while i < 512:
            idx = gb_base + i
            paddr_next = (paddr & ~(PMD_SIZE - 1)) + PMD_SIZE
            new_prot = prot
            if paddr >= paddr_end:
                if not self.e820_mapped_any(paddr & ~(PMD_SIZE - 1), paddr_next):
                    self._set_pmd_none(idx)
                i += 1
                paddr = paddr_next
                continue
            if st.pmd_state[idx] != ENTRY_NONE:
                if st.pmd_state[idx] == ENTRY_TABLE:
                    paddr_last = self.phys_pte_init(int(st.pmd_table[idx]), paddr, paddr_end, prot)
                    i += 1
                    paddr = paddr_next
                    continue
                if mask & (1 << PG_LEVEL_2M):
                    pages += 1  # existing 2M leaf re-used and counted again
                    paddr_last = paddr_next
                    i += 1
                    paddr = paddr_next
                    continue
                new_prot = int(st.pmd_prot[idx]) & ~_PAGE_PSE  # pte_clrhuge()
            if mask & (1 << PG_LEVEL_2M):
                pages += 1
                st.pmd_state[idx] = ENTRY_LEAF
                st.pmd_prot[idx] = prot | _PAGE_PSE
                st.pmd_table[idx] = -1
                paddr_last = paddr_next
                i += 1
                paddr = paddr_next
                continue
            row = st.alloc_table()  # alloc_low_page(): a zeroed pte page
            paddr_last = self.phys_pte_init(row, paddr, paddr_end, new_prot)
            st.pmd_state[idx] = ENTRY_TABLE
            st.pmd_table[idx] = row
            st.pmd_prot[idx] = 0
            i += 1
            paddr = paddr_next
        self.update_page_count(2, pages)
        return paddr_last

    def phys_pud_init(self, paddr: int, paddr_end: int, mask: int) -> int:
        st = self.st
        pages = 0
        paddr_last = paddr_end
        first = paddr >> 30
        limit = min(_round_down(first, 512) + 512, self.nr_direct_puds)
        i = first
        while i < limit:
            prot = PAGE_KERNEL
            paddr_next = (paddr & ~(PUD_SIZE - 1)) + PUD_SIZE
            if paddr >= paddr_end:
                if not self.e820_mapped_any(paddr & ~(PUD_SIZE - 1), paddr_next):
                    st.pud_state[i] = ENTRY_NONE
                    st.pud_prot[i] = 0
                    for j in range(i * 512, i * 512 + 512):
                        self._set_pmd_none(j)
                i += 1
                paddr = paddr_next
                continue
            if st.pud_state[i] != ENTRY_NONE:
                if st.pud_state[i] == ENTRY_TABLE:
                    paddr_last = self.phys_pmd_init(paddr, paddr_end, mask, prot)
                    i += 1
                    paddr = paddr_next
                    continue
                if mask & (1 << PG_LEVEL_1G):
                    pages += 1  # existing 1G leaf re-used and counted again
                    paddr_last = paddr_next
                    i += 1
                    paddr = paddr_next
                    continue
                prot = int(st.pud_prot[i]) & ~_PAGE_PSE
            if mask & (1 << PG_LEVEL_1G):
                pages += 1
                st.pud_state[i] = ENTRY_LEAF
                st.pud_prot[i] = prot | _PAGE_PSE
                paddr_last = paddr_next
                i += 1
                paddr = paddr_next
                continue
            # alloc_low_page(): a new, empty pmd page replaces whatever was there
            st.pud_state[i] = ENTRY_TABLE
            st.pud_prot[i] = 0
            for j in range(i * 512, i * 512 + 512):
                self._set_pmd_none(j)
            paddr_last = self.phys_pmd_init(paddr, paddr_end, mask, prot)
            i += 1
            paddr = paddr_next
        self.update_page_count(3, pages)
        return paddr_last

    def kernel_physical_mapping_init(self, start: int, end: int, mask: int) -> int:
        """__kernel_physical_mapping_init(): walk the pgd entries of [start, end)."""
        paddr_last = end
        vaddr = start
        while vaddr < end:
            vaddr_next = _round_down(vaddr, P4D_SIZE) + P4D_SIZE
            paddr_last = self.phys_pud_init(vaddr, end, mask)
            vaddr = vaddr_next
        return paddr_last

    # --- arch/x86/mm/init.c ---------------------------------------------------
    def split_mem_range(self, start: int, end: int) -> list[list[int]]:
        mr: list[list[int]] = []
        psm = self.page_size_mask
        pmd_pfns, pud_pfns = PMD_PAGES, PUD_PAGES

        def save_mr(s: int, e: int, mask: int) -> None:
            if s < e:
                if len(mr) >= NR_RANGE_MR:
                    raise RuntimeError("run out of range for init_memory_mapping")
                mr.append([s << PAGE_SHIFT, e << PAGE_SHIFT, mask])

        limit_pfn = end >> PAGE_SHIFT
        pfn = start_pfn = start >> PAGE_SHIFT
        end_pfn = min(_round_up(pfn, pmd_pfns), limit_pfn)  # head, 4K
        if start_pfn < end_pfn:
            save_mr(start_pfn, end_pfn, 0)
            pfn = end_pfn
        start_pfn = _round_up(pfn, pmd_pfns)  # 2M up to the next 1G boundary
        end_pfn = min(_round_up(pfn, pud_pfns), _round_down(limit_pfn, pmd_pfns))
        if start_pfn < end_pfn:
            save_mr(start_pfn, end_pfn, psm & (1 << PG_LEVEL_2M))
            pfn = end_pfn
        start_pfn = _round_up(pfn, pud_pfns)  # 1G
        end_pfn = _round_down(limit_pfn, pud_pfns)
        if start_pfn < end_pfn:
            save_mr(start_pfn, end_pfn, psm & ((1 << PG_LEVEL_2M) | (1 << PG_LEVEL_1G)))
            pfn = end_pfn
        start_pfn = _round_up(pfn, pmd_pfns)  # 2M tail
        end_pfn = _round_down(limit_pfn, pmd_pfns)
        if start_pfn < end_pfn:
            save_mr(start_pfn, end_pfn, psm & (1 << PG_LEVEL_2M))
            pfn = end_pfn
        save_mr(pfn, limit_pfn, 0)  # 4K tail

        # adjust_range_page_size_mask(): go big where the rounded region is all RAM
        for r in mr:
            if (psm & (1 << PG_LEVEL_2M)) and not (r[2] & (1 << PG_LEVEL_2M)):
                s, e = _round_down(r[0], PMD_SIZE), _round_up(r[1], PMD_SIZE)
                if self.memblock_is_region_memory(s, e - s):
                    r[2] |= 1 << PG_LEVEL_2M
            if (psm & (1 << PG_LEVEL_1G)) and not (r[2] & (1 << PG_LEVEL_1G)):
                s, e = _round_down(r[0], PUD_SIZE), _round_up(r[1], PUD_SIZE)
                if self.memblock_is_region_memory(s, e - s):
                    r[2] |= 1 << PG_LEVEL_1G

        i = 0  # merge contiguous ranges with the same page size
        while len(mr) > 1 and i < len(mr) - 1:
            if mr[i][1] != mr[i + 1][0] or mr[i][2] != mr[i + 1][2]:
                i += 1
                continue
            mr[i + 1][0] = mr[i][0]
            del mr[i]
            i = max(i - 1, 0)
        return mr

    def add_pfn_range_mapped(self, start_pfn: int, end_pfn: int) -> None:
        self.pfn_mapped = merge_ranges(self.pfn_mapped + [(start_pfn, end_pfn)])
        self.max_pfn_mapped = max(self.max_pfn_mapped, end_pfn)

    def init_memory_mapping(self, start: int, end: int) -> int:
        ret = 0
        for s, e, mask in self.split_mem_range(start, end):
            ret = self.kernel_physical_mapping_init(s, e, mask)
        self.add_pfn_range_mapped(start >> PAGE_SHIFT, ret >> PAGE_SHIFT)
        return ret >> PAGE_SHIFT

    def init_range_memory_mapping(self, r_start: int, r_end: int) -> int:
        mapped = 0
        for sp, ep in self.mem_pfn_ranges():
            s = min(max(sp << PAGE_SHIFT, r_start), r_end)
            e = min(max(ep << PAGE_SHIFT, r_start), r_end)
            if s >= e:
                continue
            self.init_memory_mapping(s, e)
            mapped += e - s
        return mapped

    def memory_map_top_down(self, map_start: int, map_end: int) -> None:
        addr = self.find_top_down(map_start, map_end, PMD_SIZE, PMD_SIZE)
        real_end = addr + PMD_SIZE
        step_size = PMD_SIZE
        self.max_pfn_mapped = 0
        last_start = real_end
        mapped_ram_size = 0
        while last_start > map_start:
            if last_start > step_size:
                start = max(_round_down(last_start - 1, step_size), map_start)
            else:
                start = map_start
            mapped_ram_size += self.init_range_memory_mapping(start, last_start)
            last_start = start
            if mapped_ram_size >= step_size:
                step_size <<= PMD_SHIFT_MINUS_PAGE_SHIFT_MINUS_1  # get_new_step_size()
        if real_end < map_end:
            self.init_range_memory_mapping(real_end, map_end)

    def e820_end_of_ram_pfn(self) -> int:
        """max_pfn: e820__end_of_ram_pfn() looks at E820_TYPE_RAM entries only, so a
        RESERVED_KERN range (setup_data) at the top of memory does not count
        (Machine.max_pfn() does: it sizes the simulated direct map)."""
        return max((e >> PAGE_SHIFT for s, e, t in self.m.e820 if t == E820_TYPE_RAM), default=0)

    def init_mem_mapping(self) -> None:
        end = self.e820_end_of_ram_pfn() << PAGE_SHIFT
        self.init_memory_mapping(0, ISA_END_ADDRESS)  # the ISA range, always
        self.memory_map_top_down(ISA_END_ADDRESS, end)


PMD_SHIFT_MINUS_PAGE_SHIFT_MINUS_1 = 21 - 12 - 1


def _map_highmap(st: DirectMapState, machine: Machine, highmap_vpfn: int) -> None:
    """head_64.S level2_kernel_pgt after cleanup_highmap(): 2M leaves over
    [_text, roundup(_brk_end, PMD_SIZE)); we take _end for _brk_end (brk is in use
    by then for the early page tables, so its 2M rounding is the same)."""
    k = machine.kernel
    first = (k.text - START_KERNEL_MAP) >> 21
    last = (_round_up(k.end, PMD_SIZE) - START_KERNEL_MAP) >> 21
    base = highmap_vpfn // PMD_PAGES
    for i in range(first, min(last, HIGHMAP_PMDS)):
        st.pmd_state[base + i] = ENTRY_LEAF
        st.pmd_prot[base + i] = PAGE_KERNEL_LARGE_EXEC


def init_mem_mapping(machine: Machine) -> DirectMapState:
    """Build the page tables and direct_pages_count[] as boot leaves them."""
    machine.validate()
    nr_direct_puds = machine.nr_direct_puds()
    st = DirectMapState.empty(nr_direct_puds + 1)
    boot = _Boot(machine, st, nr_direct_puds)
    boot.init_mem_mapping()

    highmap_vpfn = machine.highmap_vpfn()
    st.pud_state[nr_direct_puds] = ENTRY_TABLE
    p = st.params
    p[P_HIGHMAP_VPFN] = highmap_vpfn
    p[P_MAX_PFN_MAPPED] = boot.max_pfn_mapped
    p[P_GBPAGES] = 1 if machine.gbpages else 0  # direct_gbpages
    if machine.kernel is not None:
        k = machine.kernel
        _map_highmap(st, machine, highmap_vpfn)
        p[P_HAVE_KERNEL] = 1
        # __pa() of a high-map address: x - __START_KERNEL_map + phys_base, where
        # phys_base is negative when KASLR put the image below its link address
        pb = k.phys_base - (1 << 64) if k.phys_base >= 1 << 63 else k.phys_base
        p[P_HIGHMAP_PFN] = pb >> PAGE_SHIFT  # pfn of offset 0, below 0 then
        to_vpfn = lambda va: highmap_vpfn + ((va - START_KERNEL_MAP) >> PAGE_SHIFT)  # noqa: E731
        p[P_TEXT_START] = to_vpfn(k.text)
        p[P_TEXT_LAST] = to_vpfn(k.etext - 1)
        p[P_TEXT_RO_LAST] = to_vpfn(k.end_rodata_hpage_align - 1)
        p[P_RODATA_SPFN] = k.pa(k.start_rodata) >> PAGE_SHIFT
        p[P_RODATA_EPFN] = (k.pa(k.end_rodata) >> PAGE_SHIFT) - 1
        # __cpa_pfn_in_highmap(); _brk_end is not recorded: _end, which follows
        # __brk_limit, rounds up to the same 2M boundary unless brk ends below it
        p[P_HIGHMAP_START_PFN] = k.pa(k.text) >> PAGE_SHIFT
        p[P_HIGHMAP_END_PFN] = k.pa((k.end + PMD_SIZE - 1) & ~(PMD_SIZE - 1)) >> PAGE_SHIFT
    else:
        p[P_HIGHMAP_START_PFN] = p[P_HIGHMAP_END_PFN] = -1
        p[P_TEXT_START] = p[P_TEXT_LAST] = p[P_TEXT_RO_LAST] = -1
        p[P_RODATA_SPFN] = p[P_RODATA_EPFN] = -1
    st.pfn_mapped = np.array(boot.pfn_mapped, dtype=np.int64).reshape(-1, 2)
    return st
