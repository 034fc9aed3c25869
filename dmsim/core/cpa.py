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
def pgprot_clear_protnone_bits(val):
    """A !PRESENT entry must not look like PROT_NONE: drop _PAGE_GLOBAL."""
    if (val & PRESENT) == ZERO:
        return val & ~GLOBAL
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


@njit(cache=True, error_model="numpy")
def split_large_page(level, slot, vpfn, force_static_prot, pud_state, pud_prot,
                     pmd_state, pmd_prot, pmd_table, pte, nr_tables, counters, params,
                     pfn_mapped):
    """split_large_page() + __split_large_page(): replace a leaf by 512 children
    that inherit its protection (one page-table page from the buddy, order 0)."""
    if level == LEVEL_2M:
        base = slot << 9
        ref_prot = pgprot_clear_protnone_bits(protval_large_2_4k(pmd_prot[slot]))
        row = nr_tables[0]
        nr_tables[0] += 1
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
        pmd_prot[slot] = ZERO
    else:
        ref_prot = pud_prot[slot]
        if (ref_prot & PRESENT) == ZERO:
            ref_prot &= ~PSE
        ref_prot = pgprot_clear_protnone_bits(ref_prot)
        # a 2M child cannot be fixed up: "Cannot fixup static protections for PUD split"
        for i in range(512):
            pmd_state[(slot << 9) + i] = S.ENTRY_LEAF
            pmd_prot[(slot << 9) + i] = ref_prot
            pmd_table[(slot << 9) + i] = -1
        pud_state[slot] = S.ENTRY_TABLE
        pud_prot[slot] = ZERO
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
    req_prot = pgprot_clear_protnone_bits(protval_4k_2_large(req_prot))
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
    if level == LEVEL_2M:  # all checks passed: rewrite the leaf in place
        pmd_prot[slot] = new_prot
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
            pte[slot, i] = pgprot_clear_protnone_bits(new_prot)
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
