"""Change-page-attribute on the simulated page tables: a model of
__change_page_attr_set_clr() and its helpers (arch/x86/mm/pat/set_memory.c,
Linux 6.1). Numba kernels over the arrays of DirectMapState; no objects.

Protection values are raw entry flags (uint64), as in the kernel: large leaves
carry _PAGE_PSE, so "same protection" compares exactly what the kernel compares.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import constants as C
from . import state as S

U64 = np.uint64
PRESENT = U64(C._PAGE_PRESENT)
RW = U64(C._PAGE_RW)
PSE = U64(C._PAGE_PSE)
GLOBAL = U64(C._PAGE_GLOBAL)
NX = U64(C._PAGE_NX)
PAT = U64(0x80)  # _PAGE_PAT (4K entries) shares bit 7 with _PAGE_PSE
PAT_LARGE = U64(0x1000)  # _PAGE_PAT_LARGE
ZERO = U64(0)
KNL_ERRATUM_MASK = U64(C._PAGE_DIRTY | C._PAGE_ACCESSED)
KERNEL_4K = U64(C._PAGE_KERNEL_4K)
SPLITPGT = U64(S.SPLITPGT)
PAGE_KERNEL_LARGE = U64(C.PAGE_KERNEL | C._PAGE_PSE)  # a direct-map 2M leaf at boot
CPAF_PRIMARY = 1  # mirrored from dmsim/trace/events.py (tests/test_events.py)
CPAF_FORCE_SPLIT = 2
CPAF_COLLAPSE = 8

LEVEL_NONE = 0
LEVEL_4K = 1
LEVEL_2M = 2
LEVEL_1G = 3


@njit(cache=True, inline="always")
def protval_large_2_4k(val):
    """Clear PSE and move the PAT bit from bit 12 to bit 7."""
    return (val & ~(PAT | PAT_LARGE)) | ((val & PAT_LARGE) >> U64(5))


@njit(cache=True, inline="always")
def protval_4k_2_large(val):
    return (val & ~(PAT | PAT_LARGE)) | ((val & PAT) << U64(5))


@njit(cache=True, inline="always")
def pgprot_clear_protnone_bits(val, params):
    """A !PRESENT entry must not look like PROT_NONE: drop _PAGE_GLOBAL. The cpa
    merge series (Aaron Lu, "[RFC PATCH 1/4] x86/mm/cpa: restore global bit when
    page is present") sets it back on present entries, or an invalid/default
    cycle would leave a pte that never matches its neighbours again."""
    if (val & PRESENT) == ZERO:
        return val & ~GLOBAL
    if params[S.P_MERGE_POLICY] == S.MERGE_CPA:
        return val | GLOBAL  # _PAGE_GLOBAL & __default_kernel_pte_mask (no PTI)
    return val


@njit(cache=True, inline="always")
def pte_none(flags, pfn_is_zero):
    """pte_none(): no bits but _PAGE_KNL_ERRATUM_MASK (DIRTY|ACCESSED). Entries
    store flags with the pfn implicit, so only pfn 0 can look none while not 0."""
    if flags == ZERO:
        return True
    return pfn_is_zero and (flags & ~KNL_ERRATUM_MASK) == ZERO


@njit(cache=True, inline="always")
def lookup_level(pud_state, pmd_state, pmd_table, pte, vpfn):
    """lookup_address(): (level, slot) of the entry that maps vpfn.

    slot is the pud index (1G), pmd index (2M) or pte row (4K); LEVEL_NONE when
    a pud/pmd is none or the pte is pte_none()."""
    gb = vpfn >> 18
    if vpfn < 0 or gb >= pud_state.shape[0]:
        return LEVEL_NONE, -1
    ps = pud_state[gb]
    if ps == S.ENTRY_NONE:
        return LEVEL_NONE, -1
    if ps == S.ENTRY_LEAF:
        return LEVEL_1G, gb
    pi = vpfn >> 9
    ms = pmd_state[pi]
    if ms == S.ENTRY_NONE:
        return LEVEL_NONE, -1
    if ms == S.ENTRY_LEAF:
        return LEVEL_2M, pi
    row = pmd_table[pi]
    if pte_none(pte[row, vpfn & 511], vpfn == 0):
        return LEVEL_NONE, -1
    return LEVEL_4K, row


@njit(cache=True, inline="always")
def vpfn_to_pfn(params, vpfn):
    """__pa() of the address: identity in the direct map, phys_base-relative in the high map."""
    hv = params[S.P_HIGHMAP_VPFN]
    if vpfn >= hv:
        return vpfn - hv + params[S.P_HIGHMAP_PFN]
    return vpfn


@njit(cache=True, inline="always")
def pfn_range_is_mapped(pfn_mapped, pfn):
    for i in range(pfn_mapped.shape[0]):
        if pfn_mapped[i, 0] <= pfn and pfn + 1 <= pfn_mapped[i, 1]:
            return True
    return False


@njit(cache=True, error_model="numpy", inline="always")
def static_protections(prot, start, pfn, npg, lpsize, params, counters,
                       pud_state, pmd_state, pmd_table, pte):
    """static_protections(): bits that the kernel image forbids.

    Text NX (protect_kernel_text) and Text RO (protect_kernel_text_ro) work on
    the high map's virtual range; Rodata RO (protect_rodata) on pfns, so it also
    covers rodata's direct-map alias. PCIBIOS NX is 32-bit only. lpsize is in
    pages; 0 asks for the per-page check."""
    if (prot & PRESENT) == ZERO:  # no RW/NX conflicts for a !PRESENT request
        return prot
    if params[S.P_HAVE_KERNEL] == 0:
        return prot
    forbidden = ZERO
    end = start + npg - 1
    if start <= params[S.P_TEXT_LAST] and end >= params[S.P_TEXT_START]:
        forbidden |= NX
    kro = counters[C.KERNEL_SET_TO_READONLY] != 0
    if lpsize != npg or (start % lpsize) != 0:
        if kro and start <= params[S.P_TEXT_RO_LAST] and end >= params[S.P_TEXT_START]:
            level, _ = lookup_level(pud_state, pmd_state, pmd_table, pte, start)
            if level != LEVEL_NONE and level != LEVEL_4K:
                forbidden |= RW
    if kro and pfn <= params[S.P_RODATA_EPFN] and pfn + npg - 1 >= params[S.P_RODATA_SPFN]:
        forbidden |= RW
    return prot & ~forbidden


@njit(cache=True, inline="always")
def split_page_count(counters, level):
    """split_page_count(): one leaf moves down a level; vmstat once running."""
    if counters[level - 1] == 0:  # direct_pages_count[level] == 0
        return
    counters[level - 1] -= 1
    if counters[C.SYSTEM_RUNNING] != 0:
        if level == LEVEL_2M:
            counters[C.DIRECT_MAP_LEVEL2_SPLIT] += 1
        elif level == LEVEL_1G:
            counters[C.DIRECT_MAP_LEVEL3_SPLIT] += 1
    counters[level - 2] += 512


@njit(cache=True, inline="always")
def alloc_row(nr_tables, pte):
    """A pte[] row for a new pte table: the last one freed, else a new one."""
    row = nr_tables[S.NT_FREE_HEAD]
    if row >= 0:
        nr_tables[S.NT_FREE_HEAD] = np.int64(pte[row, 0]) - 1
        return row
    row = nr_tables[S.NT_USED]
    nr_tables[S.NT_USED] += 1
    return row


@njit(cache=True, inline="always")
def free_row(nr_tables, pte, row):
    pte[row, 0] = U64(nr_tables[S.NT_FREE_HEAD] + 1)
    nr_tables[S.NT_FREE_HEAD] = row


@njit(cache=True, inline="always")
def pt_log(nr_tables, params, ident, is_pmd_table, is_free):
    """Record a page-table page allocated (split) or freed (merge, collapse),
    in order, for simulated placement to take from / give to the buddy."""
    if params[S.P_PT_LOG] == 0:
        return
    n = nr_tables[S.NT_LOG_LEN]
    if S.NT_LOG + n >= nr_tables.shape[0]:
        nr_tables[S.NT_LOG_OVERFLOW] += 1  # no room: place() sizes the log for each event
        return
    nr_tables[S.NT_LOG + n] = (ident << 2) | (is_pmd_table << 1) | is_free
    nr_tables[S.NT_LOG_LEN] = n + 1


@njit(cache=True, inline="always")
def free_pte_table(row, nr_tables, pte, counters, params):
    """A merge or collapse gives back a pte table: its row for reuse, its page
    (__free_page(), logged for the allocator)."""
    free_row(nr_tables, pte, row)
    pt_log(nr_tables, params, row, 0, 1)
    counters[C.NR_PT_FREED] += 1


@njit(cache=True, inline="always")
def merge_page_count(counters, level):
    """merge_page_count() (cpa merge patch): 512 leaves become one a level up."""
    if counters[level - 1] < 512:
        return  # WARN_ON_ONCE
    counters[level - 1] -= 512
    if counters[C.SYSTEM_RUNNING] != 0:
        if level == LEVEL_4K:
            counters[C.DIRECT_MAP_LEVEL1_MERGE] += 1
        elif level == LEVEL_2M:
            counters[C.DIRECT_MAP_LEVEL2_MERGE] += 1
    counters[level] += 1


@njit(cache=True, inline="always")
def collapse_page_count(counters, level):
    """collapse_page_count() (6.15)."""
    counters[level - 1] += 1
    if counters[C.SYSTEM_RUNNING] != 0:
        if level == LEVEL_2M:
            counters[C.DIRECT_MAP_LEVEL2_COLLAPSE] += 1
        elif level == LEVEL_1G:
            counters[C.DIRECT_MAP_LEVEL3_COLLAPSE] += 1
    counters[level - 2] -= 512


@njit(cache=True, inline="always")
def pmd_table_to_leaf(gb, prot, pud_state, pud_prot, pmd_state, pmd_prot, nr_tables, counters,
                      params):
    """A PMD table replaced by one 1G leaf (a merge or a collapse); its page is freed."""
    pud_state[gb] = S.ENTRY_LEAF
    pud_prot[gb] = prot
    for i in range(512):
        pmd_state[(gb << 9) + i] = S.ENTRY_NONE
        pmd_prot[(gb << 9) + i] = ZERO
    pt_log(nr_tables, params, gb, 1, 1)
    counters[C.NR_PT_FREED] += 1


@njit(cache=True)
def merge_pmd_table(gb, pud_state, pud_prot, pmd_state, pmd_prot, nr_tables, counters, params):
    """set_pte_adjust_nr_same_prot() on a split PMD table, then
    merge_splitted_mapping(PG_LEVEL_2M): all 512 entries present 2M leaves with
    one protection -> one 1G leaf; the table page is freed."""
    if pud_state[gb] != S.ENTRY_TABLE or pud_prot[gb] != SPLITPGT:
        return
    base = gb << 9
    first = pmd_prot[base]
    if pmd_state[base] != S.ENTRY_LEAF or (first & PRESENT) == ZERO or (first & PSE) == ZERO:
        return
    for i in range(1, 512):
        if pmd_state[base + i] != S.ENTRY_LEAF or pmd_prot[base + i] != first:
            return
    pmd_table_to_leaf(gb, first, pud_state, pud_prot, pmd_state, pmd_prot, nr_tables, counters,
                      params)
    merge_page_count(counters, LEVEL_2M)


@njit(cache=True)
def merge_pte_table(pi, pud_state, pud_prot, pmd_state, pmd_prot, pmd_table, pte, nr_tables,
                    counters, params):
    """set_pte_adjust_nr_same_prot() on a split pte table, then
    merge_splitted_mapping(PG_LEVEL_4K): all 512 ptes present with one
    protection -> one 2M leaf (pgprot_4k_2_large() | _PAGE_PSE); the new leaf
    is a write to the PMD table above, which may merge in turn."""
    if pmd_state[pi] != S.ENTRY_TABLE or pmd_prot[pi] != SPLITPGT:
        return
    row = pmd_table[pi]
    first = pte[row, 0]
    if (first & PRESENT) == ZERO:
        return
    for i in range(1, 512):
        if pte[row, i] != first:
            return
    pmd_state[pi] = S.ENTRY_LEAF
    pmd_prot[pi] = protval_4k_2_large(first) | PSE
    pmd_table[pi] = -1
    # __set_pmd_pte() of the new leaf may merge the PMD table first (its page is
    # freed inside), then this table's page goes
    merge_pmd_table(pi >> 9, pud_state, pud_prot, pmd_state, pmd_prot, nr_tables, counters,
                    params)
    free_pte_table(row, nr_tables, pte, counters, params)
    merge_page_count(counters, LEVEL_4K)


@njit(cache=True)
def collapse_pmd_page(pi, pud_state, pmd_state, pmd_prot, pmd_table, pte, nr_tables,
                      counters, params, pfn_mapped):
    """collapse_pmd_page() (6.15): a pte table whose first pfn is 2M-aligned,
    first pte without _PAGE_KERNEL_4K, the other 511 present with the first's
    flags (pfns are contiguous by construction) -> a 2M leaf. Returns 1 when
    collapsed."""
    if pmd_state[pi] != S.ENTRY_TABLE:
        return 0
    row = pmd_table[pi]
    pfn = vpfn_to_pfn(params, pi << 9)
    if (pfn & 511) != 0:
        return 0
    first = pte[row, 0]
    if (first & KERNEL_4K) != ZERO:
        return 0
    for i in range(1, 512):
        e = pte[row, i]
        if (e & PRESENT) == ZERO or e != first:
            return 0
    pmd_state[pi] = S.ENTRY_LEAF
    pmd_prot[pi] = protval_4k_2_large(first) | PSE
    pmd_table[pi] = -1
    free_pte_table(row, nr_tables, pte, counters, params)
    if pfn_range_is_mapped(pfn_mapped, pfn):  # virt_addr_valid() && pfn_range_is_mapped()
        collapse_page_count(counters, LEVEL_2M)
    return 1


@njit(cache=True)
def set_direct_map_pmd(pi, pmd_state, pmd_prot, pmd_table, pte, nr_tables, counters, params,
                       pfn_mapped):
    """set_direct_map_PMD() of the Jan 2022 RFC's `#if 0` FIXME in __free_one_page(),
    which the prototype never wrote: map the free pageblock with one 2M leaf again,
    as init_mem_mapping() did (PAGE_KERNEL | _PAGE_PSE), whatever its ptes say (they
    lost _PAGE_GLOBAL in every invalid/default cycle). Returns 1 when a table went."""
    if pmd_state[pi] != S.ENTRY_TABLE:
        return 0
    row = pmd_table[pi]
    pmd_state[pi] = S.ENTRY_LEAF
    pmd_prot[pi] = PAGE_KERNEL_LARGE
    pmd_table[pi] = -1
    free_pte_table(row, nr_tables, pte, counters, params)
    if pfn_range_is_mapped(pfn_mapped, vpfn_to_pfn(params, pi << 9)):
        collapse_page_count(counters, LEVEL_2M)
    return 1


@njit(cache=True)
def collapse_pud_page(gb, pud_state, pud_prot, pmd_state, pmd_prot, nr_tables, counters,
                      params, pfn_mapped):
    """collapse_pud_page() (6.15): only with direct_gbpages; 512 present 2M
    leaves with the first's flags, first pfn 1G-aligned -> a 1G leaf."""
    if params[S.P_GBPAGES] == 0 or pud_state[gb] != S.ENTRY_TABLE:
        return 0
    base = gb << 9
    pfn = vpfn_to_pfn(params, gb << 18)
    first = pmd_prot[base]
    if pmd_state[base] != S.ENTRY_LEAF or (pfn & 262143) != 0:
        return 0
    for i in range(1, 512):
        if pmd_state[base + i] != S.ENTRY_LEAF or (pmd_prot[base + i] & PRESENT) == ZERO \
                or pmd_prot[base + i] != first:
            return 0
    pmd_table_to_leaf(gb, first, pud_state, pud_prot, pmd_state, pmd_prot, nr_tables, counters,
                      params)
    if pfn_range_is_mapped(pfn_mapped, pfn):
        collapse_page_count(counters, LEVEL_1G)
    return 1


@njit(cache=True)
def cpa_collapse_large_pages(vpfn, numpages, pud_state, pud_prot, pmd_state, pmd_prot,
                             pmd_table, pte, nr_tables, counters, params, pfn_mapped):
    """cpa_collapse_large_pages() from cpa_flush() (6.15, CPA_COLLAPSE): every
    2M step from the 2M-aligned start to the end of the call's range,
    collapse_large_pages(): the pte table, and if it collapsed, the PMD table."""
    addr = vpfn & ~511
    end = vpfn + numpages
    while addr < end:
        gb = addr >> 18
        if gb < pud_state.shape[0] and pud_state[gb] == S.ENTRY_TABLE:
            if collapse_pmd_page(addr >> 9, pud_state, pmd_state, pmd_prot, pmd_table, pte,
                                 nr_tables, counters, params, pfn_mapped):
                collapse_pud_page(gb, pud_state, pud_prot, pmd_state, pmd_prot, nr_tables,
                                  counters, params, pfn_mapped)
        addr += 512


@njit(cache=True, error_model="numpy")
def split_large_page(level, slot, vpfn, force_static_prot, pud_state, pud_prot,
                     pmd_state, pmd_prot, pmd_table, pte, nr_tables, counters, params,
                     pfn_mapped):
    """split_large_page() + __split_large_page(): replace a leaf by 512 children
    that inherit its protection (one page-table page from the buddy, order 0)."""
    if level == LEVEL_2M:
        base = slot << 9
        ref_prot = pgprot_clear_protnone_bits(protval_large_2_4k(pmd_prot[slot]), params)
        row = alloc_row(nr_tables, pte)
        pt_log(nr_tables, params, row, 0, 0)
        base_pfn = vpfn_to_pfn(params, base)
        for i in range(512):
            p = ref_prot
            if force_static_prot:
                # split_set_pte(): a 4K child can be fixed up to the static rules
                p = static_protections(ref_prot, base + i, base_pfn + i, 1, 0, params,
                                       counters, pud_state, pmd_state, pmd_table, pte)
            pte[row, i] = p
        pmd_state[slot] = S.ENTRY_TABLE
        pmd_table[slot] = row
        pmd_prot[slot] = SPLITPGT
    else:
        ref_prot = pud_prot[slot]
        if (ref_prot & PRESENT) == ZERO:
            ref_prot &= ~PSE
        ref_prot = pgprot_clear_protnone_bits(ref_prot, params)
        # a 2M child cannot be fixed up: "Cannot fixup static protections for PUD split"
        for i in range(512):
            pmd_state[(slot << 9) + i] = S.ENTRY_LEAF
            pmd_prot[(slot << 9) + i] = ref_prot
            pmd_table[(slot << 9) + i] = -1
        pud_state[slot] = S.ENTRY_TABLE
        pud_prot[slot] = SPLITPGT
        pt_log(nr_tables, params, slot, 1, 0)
    counters[C.NR_PTE_TABLES] += 1
    # virt_addr_valid(address) && pfn_range_is_mapped(pfn, pfn + 1)
    if pfn_range_is_mapped(pfn_mapped, vpfn_to_pfn(params, vpfn)):
        split_page_count(counters, level)


@njit(cache=True, error_model="numpy")
def change_large_page(level, slot, vpfn, numpages, mask_set, mask_clr, force_split, fsp,
                      pud_state, pud_prot, pmd_state, pmd_prot, pmd_table, pte, nr_tables,
                      counters, params, pfn_mapped):
    """__change_page_attr() on a 1G/2M leaf: should_split_large_page(), then
    either keep/rewrite the leaf or split it.

    Returns (pages done, cpa->force_static_prot); 0 pages means "split: look
    the address up again" (the kernel's `goto repeat`)."""
    if force_split:  # set_memory_4k()
        split_large_page(level, slot, vpfn, fsp, pud_state, pud_prot, pmd_state,
                         pmd_prot, pmd_table, pte, nr_tables, counters, params, pfn_mapped)
        return 0, fsp
    # __should_split_large_page()
    if level == LEVEL_2M:
        psize = 512
        old_prot = pmd_prot[slot]
    else:
        psize = 262144
        old_prot = pud_prot[slot]
    lpbase = vpfn & ~(psize - 1)
    n = lpbase + psize - vpfn  # pages of this leaf from vpfn on
    if n > numpages:
        n = numpages
    req_prot = (protval_large_2_4k(old_prot) & ~mask_clr) | mask_set
    req_prot = pgprot_clear_protnone_bits(protval_4k_2_large(req_prot), params)
    if (req_prot & PRESENT) != ZERO:
        req_prot |= PSE
    old_pfn = vpfn_to_pfn(params, lpbase)
    chk_prot = static_protections(old_prot, lpbase, old_pfn, psize, psize, params,
                                  counters, pud_state, pmd_state, pmd_table, pte)
    if chk_prot != old_prot:
        # the existing leaf violates a static rule: split and enforce it
        split_large_page(level, slot, vpfn, True, pud_state, pud_prot, pmd_state,
                         pmd_prot, pmd_table, pte, nr_tables, counters, params, pfn_mapped)
        return 0, True
    if req_prot == old_prot:
        return n, fsp  # same protection: keep the leaf, skip the rest of it
    if vpfn != lpbase or n != psize:
        # the request does not cover the whole leaf
        split_large_page(level, slot, vpfn, fsp, pud_state, pud_prot, pmd_state,
                         pmd_prot, pmd_table, pte, nr_tables, counters, params, pfn_mapped)
        return 0, fsp
    new_prot = static_protections(req_prot, lpbase, old_pfn, psize, psize, params,
                                  counters, pud_state, pmd_state, pmd_table, pte)
    if new_prot != req_prot:
        # a static rule conflicts with the new protection somewhere inside
        split_large_page(level, slot, vpfn, fsp, pud_state, pud_prot, pmd_state,
                         pmd_prot, pmd_table, pte, nr_tables, counters, params, pfn_mapped)
        return 0, fsp
    counters[C.NR_CPA_CHANGED] += 1  # cpa->flags |= CPA_FLUSHTLB
    if level == LEVEL_2M:  # all checks passed: rewrite the leaf in place
        pmd_prot[slot] = new_prot
        if params[S.P_MERGE_POLICY] == S.MERGE_CPA:  # __set_pmd_pte() on a split PMD table
            merge_pmd_table(slot >> 9, pud_state, pud_prot, pmd_state, pmd_prot, nr_tables,
                            counters, params)
    else:
        pud_prot[slot] = new_prot
    return n, fsp


@njit(cache=True, error_model="numpy")
def change_page_attr_set_clr(vpfn, numpages, mask_set, mask_clr, primary, force_split,
                             pud_state, pud_prot, pmd_state, pmd_prot, pmd_table, pte,
                             nr_tables, counters, params, pfn_mapped):
    """__change_page_attr_set_clr(): walk [vpfn, vpfn + numpages) step by step,
    each step being __change_page_attr() at the current address.

    Aliases are not derived here: a recorded trace carries them as their own
    calls, and callers that synthesise calls issue the alias calls themselves.
    The 4K step is inline (it is the hot path); large leaves go out of line."""
    if mask_set == ZERO and mask_clr == ZERO and not force_split:
        return  # no changes, easy
    counters[C.NR_CPA_CALLS] += 1
    fsp = False  # cpa->force_static_prot: sticky for the rest of the call
    rem = numpages
    cur = vpfn
    while rem > 0:
        level, slot = lookup_level(pud_state, pmd_state, pmd_table, pte, cur)
        if slot == 0 and (level == LEVEL_2M or level == LEVEL_1G):
            # pmd_none()/pud_none() of the leaf mapping pfn 0 (see pte_none())
            lp = pmd_prot[0] if level == LEVEL_2M else pud_prot[0]
            if (lp & ~KNL_ERRATUM_MASK) == ZERO:
                level = LEVEL_NONE
        if level == LEVEL_4K:
            i = cur & 511
            new_prot = (pte[slot, i] & ~mask_clr) | mask_set
            # lpsize = 0 enforces the protection mechanism on the single page
            new_prot = static_protections(new_prot, cur, vpfn_to_pfn(params, cur), 1, 0,
                                          params, counters, pud_state, pmd_state, pmd_table, pte)
            new_prot = pgprot_clear_protnone_bits(new_prot, params)
            if new_prot != pte[slot, i]:  # "Do we really change anything?"
                pte[slot, i] = new_prot
                counters[C.NR_CPA_CHANGED] += 1  # cpa->flags |= CPA_FLUSHTLB
                if params[S.P_MERGE_POLICY] == S.MERGE_CPA:
                    merge_pte_table(cur >> 9, pud_state, pud_prot, pmd_state, pmd_prot,
                                    pmd_table, pte, nr_tables, counters, params)
            done = 1
        elif level == LEVEL_NONE:
            # __cpa_process_fault()
            counters[C.NR_CPA_FAULTS] += 1
            if primary and cur >= params[S.P_MAX_PFN_MAPPED]:
                # -EFAULT: not a direct-map hole (alias paths and holes skip a page)
                counters[C.NR_CPA_EFAULT] += 1
                return
            done = 1
        else:
            done, fsp = change_large_page(level, slot, cur, rem, mask_set, mask_clr, force_split,
                                          fsp, pud_state, pud_prot, pmd_state, pmd_prot,
                                          pmd_table, pte, nr_tables, counters, params, pfn_mapped)
        rem -= done
        cur += done


@njit(cache=True, error_model="numpy")
def cpa_apply(vpfn, numpages, mask_set, mask_clr, cpa_flags, pud_state, pud_prot, pmd_state,
              pmd_prot, pmd_table, pte, nr_tables, counters, params, pfn_mapped):
    """One call as the policy's kernel makes it: 6.15 (rox_collapse) marks
    set_memory_4k() ptes _PAGE_KERNEL_4K and collapses after CPA_COLLAPSE calls."""
    force_split = (cpa_flags & CPAF_FORCE_SPLIT) != 0
    rox = params[S.P_MERGE_POLICY] == S.MERGE_ROX
    if rox and force_split:
        mask_set |= KERNEL_4K
    changed = counters[C.NR_CPA_CHANGED]
    change_page_attr_set_clr(vpfn, numpages, mask_set, mask_clr, (cpa_flags & CPAF_PRIMARY) != 0,
                             force_split, pud_state, pud_prot, pmd_state, pmd_prot, pmd_table,
                             pte, nr_tables, counters, params, pfn_mapped)
    # change_page_attr_set_clr(): no CPA_FLUSHTLB, no cpa_flush(), so no collapse
    # (alias calls are nested __change_page_attr_set_clr(.., 0): they never reach it)
    if rox and (cpa_flags & CPAF_COLLAPSE) != 0 and (cpa_flags & CPAF_PRIMARY) != 0 \
            and counters[C.NR_CPA_CHANGED] != changed:
        cpa_collapse_large_pages(vpfn, numpages, pud_state, pud_prot, pmd_state, pmd_prot,
                                 pmd_table, pte, nr_tables, counters, params, pfn_mapped)
