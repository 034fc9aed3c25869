"""A slow, obvious model of the boot page tables (Linux 6.1): init_mem_mapping()
(arch/x86/mm/init.c) with its page-table walkers phys_pud_init(), phys_pmd_init()
and phys_pte_init() (arch/x86/mm/init_64.c), and the kernel image's high mapping
as head_64.S, __startup_64() and cleanup_highmap() leave it.

Written from the kernel source to check dmsim/core/layout.py against, and the
starting state of the reference models (reference/cpa.py, reference/placement.py).
It shares nothing with the core but the input (a Machine) and the vpfn
numbering of core/state.py (the high map sits in the GiB slot after the direct
map: Machine.highmap_vpfn()).

The page tables are two plain containers, keyed by (level, first pfn of the
entry): `leaf` maps an entry that is a leaf to its flags, `table` holds the
entries (pud or pmd) that point to a lower table. An entry in neither is none.
Only the direct map is walked this way; the high map's leaves are added at the
end. Levels are enum pg_level: 1 = 4K (pte), 2 = 2M (pmd), 3 = 1G (pud).

The walkers are one function over the three levels: each walks one table from
the entry holding paddr to the table's last entry, as the kernel's three do:
  - an entry at or past paddr_end is cleared when no E820_TYPE_RAM or
    E820_TYPE_RESERVED_KERN range overlaps it (6.1; later kernels keep
    E820_TYPE_ACPI entries too, for kdump), and is otherwise left alone;
  - a present leaf is kept and counted again (`if (!after_bootmem) pages++`)
    when the level's page size is allowed; a present pte is always counted
    again; a present table is walked;
  - a large leaf whose size is not allowed is replaced by a fresh (zeroed) table
    with the leaf's flags minus PSE (pte_clrhuge()), of which only the entries in
    [paddr, paddr_end) get mapped;
  - a none entry becomes a leaf (flags | PSE above 4K) when the size is allowed,
    else a fresh table that is walked.
Each walk returns paddr_last: the end of the last entry it mapped or kept at its
level (a table's walk returns what the table's walk returned), paddr_end if
none; phys_pte_init() moves it only for ptes it sets.

With 4-level paging phys_p4d_init() goes straight to phys_pud_init(), and a
pud table covers a 512 GiB-aligned span of physical addresses (the direct map
starts at a PUD-aligned PAGE_OFFSET; with KASLR's memory randomization the pud
tables are cut elsewhere, which moves only the clearing of none entries).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core import constants as C
from ..machine import E820_TYPE_RAM, E820_TYPE_RESERVED_KERN, Machine

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4 * KiB
PTE_4K, PMD_2M, PUD_1G = C.PG_LEVEL_4K, C.PG_LEVEL_2M, C.PG_LEVEL_1G
ENTRY_BYTES = {PTE_4K: PAGE, PMD_2M: 2 * MiB, PUD_1G: GiB}  # what one entry maps
ENTRIES = 512  # entries in one table at every level
ISA_END = 1 * MiB  # ISA_END_ADDRESS
PSE = C._PAGE_PSE
PAGE_KERNEL = C.PAGE_KERNEL  # __PAGE_KERNEL (no PTI: _PAGE_GLOBAL kept)
PAGE_KERNEL_LARGE_EXEC = C.PAGE_KERNEL_LARGE_EXEC  # level2_kernel_pgt's PMDS() flags
KERNEL_IMAGE_SIZE = GiB  # CONFIG_RANDOMIZE_BASE: level2_kernel_pgt maps 1 GiB
START_KERNEL_MAP = C.START_KERNEL_MAP
NR_RANGE_MR = 5


def _down(x: int, a: int) -> int:
    return x - x % a


def _up(x: int, a: int) -> int:
    return _down(x + a - 1, a)


@dataclass
class BootLayout:
    """What boot leaves behind, in the units the reference CPA model uses."""

    leaves: dict[tuple[int, int], int]  # (level, base vpfn) -> entry flags; both maps
    direct_pages_count: dict[int, int]  # PG_LEVEL_4K/2M/1G -> direct_pages_count[]
    max_pfn_mapped: int
    pfn_mapped: list[tuple[int, int]]  # pfn_mapped[]: sorted, merged [start, end) pfns
    highmap_vpfn: int  # vpfn of __START_KERNEL_map (core/state.py's numbering)
    phys_base: int  # signed: negative when KASLR put the image below its link address
    # the init_memory_mapping() calls made, in order ([start, end) bytes), for notes
    calls: list[tuple[int, int]] = field(default_factory=list)

    def sorted_leaves(self) -> list[tuple[int, int, int]]:
        return sorted((lv, base, flags) for (lv, base), flags in self.leaves.items())

    def meminfo_kb(self) -> dict[str, int]:
        """DirectMap4k/2M/1G as arch_report_meminfo() prints them (kB)."""
        c = self.direct_pages_count
        return {"DirectMap4k": c[PTE_4K] << 2, "DirectMap2M": c[PMD_2M] << 11,
                "DirectMap1G": c[PUD_1G] << 20}


class _Boot:
    """init_mem_mapping()'s inputs and its page tables (the direct map only)."""

    def __init__(self, machine: Machine):
        self.e820 = [(s, e, t) for s, e, t in machine.e820]
        # e820__memblock_setup(): memblock.memory is the RAM and RESERVED_KERN
        # entries, byte-exact; memblock_add() merges touching regions
        self.memory = _merged((s, e) for s, e, t in self.e820
                              if t in (E820_TYPE_RAM, E820_TYPE_RESERVED_KERN))
        self.reserved = _merged(getattr(machine, "reserved", []))
        # probe_page_size_mask(): PSE always, GB pages unless nogbpages
        self.sizes = {PMD_2M} | ({PUD_1G} if machine.gbpages else set())
        self.leaf: dict[tuple[int, int], int] = {}
        self.table: set[tuple[int, int]] = set()
        self.count = {PTE_4K: 0, PMD_2M: 0, PUD_1G: 0}
        self.pfn_mapped: list[tuple[int, int]] = []
        self.max_pfn_mapped = 0
        self.calls: list[tuple[int, int]] = []

    # --- e820 and memblock ------------------------------------------------------------
    def max_pfn(self) -> int:
        """e820__end_of_ram_pfn(): the end of the highest E820_TYPE_RAM entry (only
        that type: RESERVED_KERN does not count here)."""
        return max((e // PAGE for s, e, t in self.e820 if t == E820_TYPE_RAM), default=0)

    def e820_keeps(self, start: int, end: int) -> bool:
        """Does an entry over [start, end) past paddr_end survive? (6.1:
        e820__mapped_any(E820_TYPE_RAM) || e820__mapped_any(E820_TYPE_RESERVED_KERN))"""
        return any(t in (E820_TYPE_RAM, E820_TYPE_RESERVED_KERN) and s < end and start < e
                   for s, e, t in self.e820)

    def is_memory(self, start: int, end: int) -> bool:
        """memblock_is_region_memory(): [start, end) inside one memory region."""
        return any(s <= start and end <= e for s, e in self.memory)

    def free_ranges(self) -> list[tuple[int, int]]:
        """memblock.memory minus memblock.reserved."""
        out = []
        for s, e in self.memory:
            cur = s
            for rs, re_ in self.reserved:
                if re_ <= cur or rs >= e:
                    continue
                if rs > cur:
                    out.append((cur, rs))
                cur = max(cur, re_)
            if cur < e:
                out.append((cur, e))
        return out

    def top_free_block(self, lo: int, hi: int, size: int) -> int:
        """memblock_phys_alloc_range(size, size, lo, hi) (top-down): the highest
        size-aligned block of free memory inside [lo, hi), 0 if there is none."""
        best = 0
        for s, e in self.free_ranges():
            s, e = max(s, lo, PAGE), min(e, hi)  # memblock never hands out page 0
            if e - s < size:
                continue
            cand = _down(e - size, size)
            if cand >= s:
                best = max(best, cand)
        return best

    # --- the page tables --------------------------------------------------------------
    def clear(self, level: int, base_pfn: int) -> None:
        """set_p?d_init(entry, 0): the entry and everything under it is gone."""
        key = (level, base_pfn)
        self.leaf.pop(key, None)
        if key in self.table:
            self.table.discard(key)
            last = base_pfn + ENTRY_BYTES[level] // PAGE
            for k in [k for k in self.leaf if k[0] < level and base_pfn <= k[1] < last]:
                del self.leaf[k]
            for k in [k for k in self.table if k[0] < level and base_pfn <= k[1] < last]:
                self.table.discard(k)

    def walk(self, level: int, paddr: int, paddr_end: int, sizes: set[int], prot: int) -> int:
        """phys_pud_init() / phys_pmd_init() / phys_pte_init() on the table that
        holds paddr at `level`; returns paddr_last."""
        size = ENTRY_BYTES[level]
        table_end = _down(paddr, size * ENTRIES) + size * ENTRIES
        paddr_last = paddr_end
        pages = 0
        while paddr < table_end:
            base = _down(paddr, size)
            nxt = base + size
            key = (level, base // PAGE)
            if paddr >= paddr_end:
                if not self.e820_keeps(base, nxt):
                    self.clear(*key)
            elif level == PTE_4K:
                pages += 1  # a new pte, or an existing one counted again
                if key not in self.leaf:
                    self.leaf[key] = prot
                    paddr_last = nxt
            elif key in self.table:
                paddr_last = self.walk(level - 1, paddr, paddr_end, sizes, prot)
            elif key in self.leaf and level in sizes:
                pages += 1  # kept, and counted again
                paddr_last = nxt
            elif level in sizes:  # none: a new leaf
                self.leaf[key] = prot | PSE
                pages += 1
                paddr_last = nxt
            else:  # none, or a leaf too big for this range: a new table
                sub_prot = self.leaf.pop(key) & ~PSE if key in self.leaf else prot
                self.table.add(key)
                paddr_last = self.walk(level - 1, paddr, paddr_end, sizes, sub_prot)
            paddr = nxt
        self.count[level] += pages  # update_page_count()
        return paddr_last

    def kernel_physical_mapping_init(self, start: int, end: int, sizes: set[int]) -> int:
        """One walk of the pud table per pgd entry that [start, end) touches."""
        paddr_last = end
        pgd_span = ENTRY_BYTES[PUD_1G] * ENTRIES
        paddr = start
        while paddr < end:
            paddr_last = self.walk(PUD_1G, paddr, end, sizes, PAGE_KERNEL)
            paddr = _down(paddr, pgd_span) + pgd_span
        return paddr_last

    # --- arch/x86/mm/init.c -------------------------------------------------------------
    def split_mem_range(self, start: int, end: int) -> list[tuple[int, int, set[int]]]:
        """split_mem_range(): 4K head up to 2M, 2M up to 1G, 1G, 2M tail, 4K tail
        (all in pages); then adjust_range_page_size_mask() and the merge."""
        P2M, P1G = 512, 512 * 512  # pages
        limit = end // PAGE
        pfn = start // PAGE
        pieces: list[tuple[int, int, set[int]]] = []

        def save(s: int, e: int, sizes: set[int]) -> bool:
            if s >= e:
                return False
            if len(pieces) == NR_RANGE_MR:
                raise RuntimeError("run out of range for init_memory_mapping")
            pieces.append((s, e, set(sizes)))
            return True

        e = min(_up(pfn, P2M), limit)  # head
        if save(pfn, e, set()):
            pfn = e
        s, e = _up(pfn, P2M), min(_up(pfn, P1G), _down(limit, P2M))  # 2M up to 1G
        if save(s, e, self.sizes & {PMD_2M}):
            pfn = e
        s, e = _up(pfn, P1G), _down(limit, P1G)  # 1G
        if save(s, e, self.sizes & {PMD_2M, PUD_1G}):
            pfn = e
        s, e = _up(pfn, P2M), _down(limit, P2M)  # 2M tail
        if save(s, e, self.sizes & {PMD_2M}):
            pfn = e
        save(pfn, limit, set())  # 4K tail

        # adjust_range_page_size_mask(): a bigger size when the range, rounded out
        # to it, is all memory
        for s, e, sizes in pieces:
            for level in (PMD_2M, PUD_1G):
                if level in self.sizes and level not in sizes:
                    n = ENTRY_BYTES[level] // PAGE
                    lo, hi = _down(s, n) * PAGE, _up(e, n) * PAGE
                    if self.is_memory(lo, hi):
                        sizes.add(level)

        merged: list[tuple[int, int, set[int]]] = []  # touching ranges, same sizes
        for s, e, sizes in pieces:
            if merged and merged[-1][1] == s and merged[-1][2] == sizes:
                merged[-1] = (merged[-1][0], e, sizes)
            else:
                merged.append((s, e, sizes))
        return [(s * PAGE, e * PAGE, sizes) for s, e, sizes in merged]

    def add_pfn_range_mapped(self, start_pfn: int, end_pfn: int) -> None:
        """add_range_with_merge() + clean_sort_range(): overlapping or touching
        ranges join, empty ones are dropped; max_pfn_mapped takes end_pfn anyway."""
        if start_pfn < end_pfn:
            keep = []
            for s, e in self.pfn_mapped:
                if max(s, start_pfn) <= min(e, end_pfn):
                    start_pfn, end_pfn = min(s, start_pfn), max(e, end_pfn)
                else:
                    keep.append((s, e))
            self.pfn_mapped = sorted(keep + [(start_pfn, end_pfn)])
        self.max_pfn_mapped = max(self.max_pfn_mapped, end_pfn)

    def init_memory_mapping(self, start: int, end: int) -> None:
        self.calls.append((start, end))
        ret = 0
        for s, e, sizes in self.split_mem_range(start, end):
            ret = self.kernel_physical_mapping_init(s, e, sizes)
        self.add_pfn_range_mapped(start // PAGE, ret // PAGE)

    def init_range_memory_mapping(self, r_start: int, r_end: int) -> int:
        """Map the memory inside [r_start, r_end), region by region (each rounded
        inwards to whole pages: for_each_mem_pfn_range()); returns bytes mapped."""
        done = 0
        for s, e in self.memory:
            s, e = _up(s, PAGE), _down(e, PAGE)
            if s >= e:
                continue
            s, e = min(max(s, r_start), r_end), min(max(e, r_start), r_end)
            if s < e:
                self.init_memory_mapping(s, e)
                done += e - s
        return done

    def memory_map_top_down(self, map_start: int, map_end: int) -> None:
        """First the highest free 2M block, then downwards in steps that grow
        256-fold once as much RAM as the step is mapped; then what lies above."""
        real_end = self.top_free_block(map_start, map_end, 2 * MiB) + 2 * MiB
        step = 2 * MiB
        self.max_pfn_mapped = 0  # "will get exact value next"
        top, mapped = real_end, 0
        while top > map_start:
            bottom = max(_down(top - 1, step), map_start) if top > step else map_start
            mapped += self.init_range_memory_mapping(bottom, top)
            top = bottom
            if mapped >= step:
                step <<= 21 - 12 - 1  # get_new_step_size()
        if real_end < map_end:
            self.init_range_memory_mapping(real_end, map_end)

    def init_mem_mapping(self) -> None:
        self.init_memory_mapping(0, ISA_END)  # the ISA range, always
        self.memory_map_top_down(ISA_END, self.max_pfn() * PAGE)


def highmap_leaves(machine: Machine) -> dict[tuple[int, int], int]:
    """level2_kernel_pgt after boot, keyed by vpfn: head_64.S fills all 512 entries
    (PMDS(0, __PAGE_KERNEL_LARGE_EXEC, KERNEL_IMAGE_SIZE/PMD_SIZE)); __startup_64()
    clears _PAGE_PRESENT outside pmd_index(_text)..pmd_index(_end) and relocates
    the rest (the flags stay); cleanup_highmap() zeroes every non-none entry whose
    address is below _text or above roundup(_brk_end, PMD_SIZE) - 1. We have no
    _brk_end and take _end (brk lies inside the image, before _end)."""
    k = machine.kernel
    if k is None:
        return {}
    hv = machine.highmap_vpfn()
    two_m = ENTRY_BYTES[PMD_2M]
    out = {}
    brk_end = k.end
    for i in range(KERNEL_IMAGE_SIZE // two_m):
        vaddr = START_KERNEL_MAP + i * two_m
        present = (k.text - START_KERNEL_MAP) // two_m <= i <= (k.end - START_KERNEL_MAP) // two_m
        zeroed = vaddr < k.text or vaddr > _up(brk_end, two_m) - 1
        if present and not zeroed:
            out[(PMD_2M, hv + i * (two_m // PAGE))] = PAGE_KERNEL_LARGE_EXEC
    return out


def boot_layout(machine: Machine) -> BootLayout:
    """The direct map and the high map as boot leaves them, with the counters."""
    machine.validate()
    boot = _Boot(machine)
    boot.init_mem_mapping()
    hv = machine.highmap_vpfn()
    leaves = dict(boot.leaf)
    assert all(base < hv for _, base in leaves), "direct map past its slot"
    leaves.update(highmap_leaves(machine))
    phys_base = 0
    if machine.kernel is not None:
        pb = machine.kernel.phys_base
        phys_base = pb - (1 << 64) if pb >= 1 << 63 else pb
    return BootLayout(leaves=leaves, direct_pages_count=dict(boot.count),
                      max_pfn_mapped=boot.max_pfn_mapped, pfn_mapped=list(boot.pfn_mapped),
                      highmap_vpfn=hv, phys_base=phys_base, calls=boot.calls)


def _merged(ranges) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for s, e in sorted(ranges):
        if s >= e:
            continue
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]
