"""The simulated page tables as plain arrays (what the numba kernels take).

One virtual-pfn space holds both mappings whose splits the kernel counts:
the direct map (vpfn == pfn, from PAGE_OFFSET) and, one GiB slot above its
end, the kernel image's high mapping (from __START_KERNEL_map).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .constants import NR_COUNTERS

# pud_state / pmd_state values
ENTRY_NONE = 0  # pud_none() / pmd_none()
ENTRY_LEAF = 1  # pud_leaf() / pmd_leaf(): a 1G or 2M mapping
ENTRY_TABLE = 2  # points to the next level

# Indexes into DirectMapState.params
P_HIGHMAP_VPFN = 0  # first vpfn of the high map slot
P_HIGHMAP_PFN = 1  # pfn that the high map's first vpfn maps (phys_base >> PAGE_SHIFT)
P_TEXT_START = 2  # vpfn of _text
P_TEXT_LAST = 3  # vpfn of the page holding _etext - 1 (protect_kernel_text)
P_TEXT_RO_LAST = 4  # vpfn of __end_rodata_hpage_align - 1 (protect_kernel_text_ro)
P_RODATA_SPFN = 5  # protect_rodata(): PFN_DOWN(__pa_symbol(__start_rodata))
P_RODATA_EPFN = 6  # PFN_DOWN(__pa_symbol(__end_rodata)) - 1
P_MAX_PFN_MAPPED = 7  # max_pfn_mapped: faults below it are direct-map holes
P_HAVE_KERNEL = 8  # 1 when the kernel image's bounds are known
P_MERGE_POLICY = 9  # MERGE_NONE / MERGE_CPA / MERGE_ROX (docs/design-policies.md)
P_PT_LOG = 10  # 1: log page-table pages allocated and freed (simulated placement)
P_GBPAGES = 11  # direct_gbpages (collapse_pud_page() needs it)
P_HIGHMAP_START_PFN = 12  # highmap_start_pfn(): __pa_symbol(_text) >> PAGE_SHIFT
P_HIGHMAP_END_PFN = 13  # highmap_end_pfn(): __pa_symbol(roundup(_brk_end, PMD_SIZE)) >> PAGE_SHIFT
NR_PARAMS = 16

MERGE_NONE = 0
MERGE_CPA = 1  # Aaron Lu's cpa merge (2022)
MERGE_ROX = 2  # 6.15 collapse after set_memory_rox()

# pmd_prot / pud_prot of an ENTRY_TABLE entry: 0 for tables init_mem_mapping()
# built, SPLITPGT for tables __split_large_page() made (PageSplitpgt in the cpa
# merge patch: only those are merged back).
SPLITPGT = 1

# nr_tables[]: rows of pte[] in use, the stack of freed rows, and the log of
# page-table pages allocated/freed during one call (read by simulated placement)
NT_USED = 0  # rows ever handed out (the pool's high-water mark)
NT_FREE_HEAD = 1  # first freed row, -1 when none (next row kept in pte[row, 0] + 1)
NT_LOG_LEN = 2
NT_LOG_OVERFLOW = 3  # log entries with no room (a bug if > 0)
NT_LOG = 4  # log entries from here: id << 2 | is_pmd_table << 1 | is_free
LOG_CAPACITY = 64


@dataclass
class DirectMapState:
    """Page-table state; every field is an array so numba can take it as is."""

    pud_state: np.ndarray  # int8[nr_puds]
    pud_prot: np.ndarray  # uint64[nr_puds]: pud value flags when a leaf
    pmd_state: np.ndarray  # int8[nr_puds * 512]
    pmd_prot: np.ndarray  # uint64[nr_puds * 512]
    pmd_table: np.ndarray  # int32[nr_puds * 512]: row of pte[] when a table
    pte: np.ndarray  # uint64[capacity, 512]: 0 is pte_none()
    nr_tables: np.ndarray  # int64[NT_LOG + log capacity]: see NT_*
    counters: np.ndarray  # int64[NR_COUNTERS]
    params: np.ndarray  # int64[NR_PARAMS]
    pfn_mapped: np.ndarray  # int64[n, 2]: pfn_mapped[] ranges (arch/x86/mm/init.c)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls, nr_puds: int, capacity: int = 64) -> DirectMapState:
        n_pmd = nr_puds * 512
        return cls(
            pud_state=np.zeros(nr_puds, np.int8),
            pud_prot=np.zeros(nr_puds, np.uint64),
            pmd_state=np.zeros(n_pmd, np.int8),
            pmd_prot=np.zeros(n_pmd, np.uint64),
            pmd_table=np.full(n_pmd, -1, np.int32),
            pte=np.zeros((capacity, 512), np.uint64),
            nr_tables=empty_nr_tables(LOG_CAPACITY),
            counters=np.zeros(NR_COUNTERS, np.int64),
            params=np.zeros(NR_PARAMS, np.int64),
            pfn_mapped=np.zeros((0, 2), np.int64),
        )

    def ensure_log(self, entries: int) -> None:
        """Room for `entries` page-table log entries in one call."""
        if NT_LOG + entries <= self.nr_tables.shape[0]:
            return
        grown = empty_nr_tables(max(entries, 2 * (self.nr_tables.shape[0] - NT_LOG)))
        grown[:NT_LOG] = self.nr_tables[:NT_LOG]
        self.nr_tables = grown

    def alloc_table(self) -> int:
        """Hand out a zeroed pte[] row, growing the pool when full."""
        self.ensure_tables(1)
        row = int(self.nr_tables[0])
        self.nr_tables[0] += 1
        return row

    def ensure_tables(self, extra: int) -> None:
        need = int(self.nr_tables[0]) + extra
        if need <= self.pte.shape[0]:
            return
        cap = max(need, 2 * self.pte.shape[0])
        grown = np.zeros((cap, 512), np.uint64)
        grown[: self.pte.shape[0]] = self.pte
        self.pte = grown

    def copy(self) -> DirectMapState:
        return DirectMapState(
            *(getattr(self, f).copy() for f in (
                "pud_state", "pud_prot", "pmd_state", "pmd_prot", "pmd_table", "pte",
                "nr_tables", "counters", "params", "pfn_mapped")),
            notes=list(self.notes),
        )


def empty_nr_tables(log_capacity: int) -> np.ndarray:
    nt = np.zeros(NT_LOG + log_capacity, np.int64)
    nt[NT_FREE_HEAD] = -1
    return nt
