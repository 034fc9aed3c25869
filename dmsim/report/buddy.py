"""/proc/buddyinfo and /proc/pagetypeinfo from the allocator arrays, in mm/vmstat.c's layouts.

Pure functions over a ``dmsim.core.buddy.BuddyState`` (only its arrays are read).
"""

from __future__ import annotations

from ..core.buddy import (
    C_UNMAPPED,
    MAX_ORDER,
    MIGRATE_TYPES,
    PAGEBLOCK_NR_PAGES,
    PAGEBLOCK_ORDER,
    Z_END_PFN,
    Z_PRESENT,
    Z_START_PFN,
)
from ..core.zones import MAX_NR_ZONES, ZONE_NAMES

# migratetype_names[] of a 6.1 kernel with CONFIG_CMA and CONFIG_MEMORY_ISOLATION (Debian),
# each with the simulator's type index (None: a type the simulator never has, always 0).
DEBIAN_6_1_TYPES = (
    ("Unmovable", 0), ("Movable", 1), ("Reclaimable", 2), ("HighAtomic", 3),
    ("CMA", None), ("Isolate", None),
)
# ... with Rapoport's Jan 2022 RFC applied: "Unmapped" follows "Reclaimable"
UNMAPPED_TYPES = DEBIAN_6_1_TYPES[:3] + (("Unmapped", 4),) + DEBIAN_6_1_TYPES[3:]

PAGES_PER_SECTION = 1 << (27 - 12)  # SECTION_SIZE_BITS 27 on x86-64: 128 MiB sections
FREECOUNT_CAP = 100000  # pagetypeinfo_showfree_print() stops counting a list here


def _populated(state):
    """walk_zones_in_node(assert_populated=true): the populated zones, lowest first."""
    return [z for z in range(MAX_NR_ZONES) if state.zone_info[z, Z_PRESENT] > 0]


def _list_len(state, zone, order, mt):
    base = (zone * MAX_ORDER + order) * MIGRATE_TYPES
    return int(state.free_count[base + mt])


def buddyinfo(state, node: int = 0) -> str:
    """/proc/buddyinfo: frag_show_print() per populated zone.

    "Node %d, zone %8s " then "%6lu " for free_area[order].nr_free, order 0..MAX_ORDER-1.
    """
    lines = []
    for z in _populated(state):
        row = f"Node {node}, zone {ZONE_NAMES[z]:>8} "
        row += "".join(f"{state.nr_free(z, o):6d} " for o in range(MAX_ORDER))
        lines.append(row + "\n")
    return "".join(lines)


def _section_has_memory(state, pfn: int) -> bool:
    """pfn_to_online_page() != NULL: sparse_init() made the pfn's 128 MiB section present
    because memblock.memory touches it (early sections are valid as a whole)."""
    lo = (pfn // PAGES_PER_SECTION) * PAGES_PER_SECTION
    hi = lo + PAGES_PER_SECTION
    return any(int(s) < hi and int(e) > lo for s, e in state.memory)


def pagetypeinfo(state, node: int = 0, types=None) -> str:
    """/proc/pagetypeinfo: pagetypeinfo_show() (mixed counts need page_owner: omitted).

    pagetypeinfo_showfree_print(): "Node %4d, zone %8s, type %12s " then "%s%6lu " per order,
    the count capped at 100000 with a ">" in front; pagetypeinfo_showblockcount_print():
    "Node %d, zone %8s " then "%12lu " per type, counting the pageblocks from zone_start_pfn
    in steps of pageblock_nr_pages.
    """
    if types is None:
        types = UNMAPPED_TYPES if state.cfg[C_UNMAPPED] else DEBIAN_6_1_TYPES
    out = [f"Page block order: {PAGEBLOCK_ORDER}\n", f"Pages per block:  {PAGEBLOCK_NR_PAGES}\n", "\n"]
    hdr = f"{'Free pages count per migrate type at order':<43} "
    hdr += "".join(f"{o:6d} " for o in range(MAX_ORDER))
    out.append(hdr + "\n")
    zones = _populated(state)
    for z in zones:
        for name, idx in types:
            row = f"Node {node:4d}, zone {ZONE_NAMES[z]:>8}, type {name:>12} "
            for o in range(MAX_ORDER):
                n = 0 if idx is None else _list_len(state, z, o, idx)
                over = n >= FREECOUNT_CAP
                if over:
                    n = FREECOUNT_CAP
                row += f"{'>' if over else ''}{n:6d} "
            out.append(row + "\n")
    hdr = "\n" + f"{'Number of blocks type ':<23}"
    hdr += "".join(f"{name:>12} " for name, _ in types)
    out.append(hdr + "\n")
    for z in zones:
        counts = blockcounts(state, z)
        row = f"Node {node}, zone {ZONE_NAMES[z]:>8} "
        row += "".join(f"{0 if idx is None else counts.get(idx, 0):12d} " for _, idx in types)
        out.append(row + "\n")
    return "".join(out)


def blockcounts(state, zone: int) -> dict[int, int]:
    """pagetypeinfo_showblockcount_print(): pageblocks per migratetype in one zone."""
    start = int(state.zone_info[zone, Z_START_PFN])
    end = int(state.zone_info[zone, Z_END_PFN])
    counts: dict[int, int] = {}
    for pfn in range(start, end, PAGEBLOCK_NR_PAGES):
        if not _section_has_memory(state, pfn):
            continue
        mt = int(state.pageblock_mt[pfn >> PAGEBLOCK_ORDER])
        counts[mt] = counts.get(mt, 0) + 1
    return counts


def vmstat_lines(state) -> str:
    """The /proc/vmstat lines the allocator owns: nr_free_pages, pgalloc_*, pgfree.

    nr_free_pages is the sum of the zones' NR_FREE_PAGES (pages on pcp lists are not free
    there); pgalloc_movable and pgalloc_device (CONFIG_ZONE_DEVICE) are always 0 here.
    """
    c = state.counters()
    nr_free = c["nr_free_pages_dma"] + c["nr_free_pages_dma32"] + c["nr_free_pages_normal"]
    return (f"nr_free_pages {nr_free}\n"
            f"pgalloc_dma {c['pgalloc_dma']}\n"
            f"pgalloc_dma32 {c['pgalloc_dma32']}\n"
            f"pgalloc_normal {c['pgalloc_normal']}\n"
            f"pgalloc_movable 0\n"
            f"pgalloc_device 0\n"
            f"pgfree {c['pgfree']}\n")
