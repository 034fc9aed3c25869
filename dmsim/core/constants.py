"""Kernel constants, spelled as in arch/x86 and mm/ (Linux 6.1)."""

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PTRS_PER_PTE = 512
PMD_SHIFT = 21
PUD_SHIFT = 30
PMD_PAGES = 1 << (PMD_SHIFT - PAGE_SHIFT)  # 512 pages in a 2M leaf
PUD_PAGES = 1 << (PUD_SHIFT - PAGE_SHIFT)  # 262144 pages in a 1G leaf

# enum pg_level (arch/x86/include/asm/pgtable_types.h)
PG_LEVEL_4K = 1
PG_LEVEL_2M = 2
PG_LEVEL_1G = 3

# Page table entry bits (arch/x86/include/asm/pgtable_types.h)
_PAGE_PRESENT = 0x1
_PAGE_RW = 0x2
_PAGE_USER = 0x4
_PAGE_ACCESSED = 0x20
_PAGE_DIRTY = 0x40
_PAGE_PSE = 0x80
_PAGE_GLOBAL = 0x100
_PAGE_NX = 1 << 63

# __PAGE_KERNEL: what init_memory_mapping() installs in the direct map.
PAGE_KERNEL = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_GLOBAL | _PAGE_NX
# __PAGE_KERNEL_LARGE_EXEC: head_64.S level2_kernel_pgt entries of the high map.
PAGE_KERNEL_LARGE_EXEC = (
    _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_GLOBAL | _PAGE_PSE
)

# cpa_data.flags (arch/x86/mm/pat/set_memory.c)
CPA_ARRAY = 2
CPA_PAGES_ARRAY = 4

# x86-64 virtual layout (arch/x86/include/asm/page_64_types.h)
START_KERNEL_MAP = 0xFFFFFFFF80000000
KERNEL_IMAGE_SIZE = 1 << 30  # with CONFIG_RANDOMIZE_BASE
HIGHMAP_PMDS = KERNEL_IMAGE_SIZE >> PMD_SHIFT
ISA_END_ADDRESS = 0x100000

# Indexes into the counters array: direct_pages_count[] then vm_event items.
NR_DIRECT_4K = 0  # direct_pages_count[PG_LEVEL_4K]
NR_DIRECT_2M = 1
NR_DIRECT_1G = 2
DIRECT_MAP_LEVEL2_SPLIT = 3  # enum vm_event_item
DIRECT_MAP_LEVEL3_SPLIT = 4
SYSTEM_RUNNING = 5  # system_state == SYSTEM_RUNNING
KERNEL_SET_TO_READONLY = 6  # kernel_set_to_readonly in set_memory.c
NR_CPA_CALLS = 7  # __change_page_attr_set_clr() calls applied
NR_CPA_FAULTS = 8  # __cpa_process_fault() hits
NR_CPA_EFAULT = 9  # calls aborted with -EFAULT
NR_PTE_TABLES = 10  # page-table pages allocated by split_large_page()
NR_HANDLE_ERRORS = 11  # simulated placement: events on a handle that is not live
NR_PT_ALLOC_FAIL = 12  # simulated placement: page-table pages the buddy could not give
DIRECT_MAP_LEVEL1_MERGE = 13  # cpa_merge: PTE table -> 2M leaf (merge_page_count)
DIRECT_MAP_LEVEL2_MERGE = 14  # cpa_merge: PMD table -> 1G leaf
DIRECT_MAP_LEVEL2_COLLAPSE = 15  # 6.15 collapse_page_count(PG_LEVEL_2M)
DIRECT_MAP_LEVEL3_COLLAPSE = 16  # 6.15 collapse_page_count(PG_LEVEL_1G)
NR_PT_FREED = 17  # page-table pages freed by merges and collapses
NR_UNMAPPED_PAGEBLOCKS = 18  # migrate_unmapped: set_pageblock_unmapped() conversions
NR_UNMAPPED_REFILLS = 19  # unmapped_alloc: cache refills from the buddy
NR_CPA_CHANGED = 20  # entries a call changed (it sets CPA_FLUSHTLB when > 0)
NR_COUNTERS = 24

# _PAGE_KERNEL_4K (6.15, software bit 11): set_memory_4k() marks ptes never to collapse
_PAGE_KERNEL_4K = 1 << 11

# CPA_COLLAPSE (6.15)
CPA_COLLAPSE = 16
