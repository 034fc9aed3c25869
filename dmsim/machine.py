"""The simulated machine: the firmware memory map and what boot did with it."""

from __future__ import annotations

from dataclasses import dataclass, field

E820_TYPES = {
    "usable": 1, "ram": 1, "reserved": 2, "acpi": 3, "nvs": 4, "unusable": 5,
    "persistent": 7, "reserved_kern": 128, "soft_reserved": 0xEFFFFFFF,
}
E820_TYPE_RAM = 1
E820_TYPE_ACPI = 3
E820_TYPE_RESERVED_KERN = 128


class MachineError(ValueError):
    """A machine description that cannot describe a real x86-64 box."""


@dataclass(frozen=True)
class KernelImage:
    """Where the kernel image sits: its section bounds (vaddr) and phys_base."""

    text: int
    etext: int
    start_rodata: int
    end_rodata: int
    end_rodata_hpage_align: int
    end: int
    phys_base: int

    def pa(self, vaddr: int) -> int:
        """__pa_symbol(): a high-map address to its physical address."""
        from .core.constants import START_KERNEL_MAP

        return (vaddr - START_KERNEL_MAP + self.phys_base) & ((1 << 64) - 1)


@dataclass
class Machine:
    """e820 ranges as [start, end) byte ranges with their type, plus boot facts."""

    e820: list[tuple[int, int, int]]
    gbpages: bool = True
    kernel: KernelImage | None = None
    # memblock reservations that memory_map_top_down() must step around when it
    # looks for its first 2M block (kernel image, initrd); [start, end) bytes.
    reserved: list[tuple[int, int]] = field(default_factory=list)
    name: str = ""

    def ram_ranges(self) -> list[tuple[int, int]]:
        """memblock.memory: the E820_TYPE_RAM and RESERVED_KERN ranges, merged."""
        return merge_ranges((s, e) for s, e, t in self.e820
                            if t in (E820_TYPE_RAM, E820_TYPE_RESERVED_KERN))

    def ram_pfn_ranges(self) -> list[tuple[int, int]]:
        """memblock.memory in pfns, [start, end): pages rounded inwards, as
        for_each_mem_pfn_range() gives them (PFN_UP(start), PFN_DOWN(end))."""
        return [((s + 4095) >> 12, e >> 12) for s, e in self.ram_ranges()]

    def nr_direct_puds(self) -> int:
        """GiB slots of the simulated direct map (up to max_pfn, at least one)."""
        from .core.constants import PUD_PAGES

        return max(1, -(-self.max_pfn() // PUD_PAGES))

    def highmap_vpfn(self) -> int:
        """The vpfn of __START_KERNEL_map: the slot after the direct map (core/state.py)."""
        from .core.constants import PUD_PAGES

        return self.nr_direct_puds() * PUD_PAGES

    def max_pfn(self) -> int:
        """e820__end_of_ram_pfn(): the end of the highest RAM range, in pages."""
        return max((e >> 12 for s, e in self.ram_ranges()), default=0)

    def total_ram_pages(self) -> int:
        return sum(e - s for s, e in self.ram_pfn_ranges())

    def validate(self) -> None:
        if not self.ram_ranges():
            raise MachineError("the memory map has no usable RAM")
        for s, e, _type in self.e820:
            if e <= s:
                raise MachineError(f"e820 range [{s:#x}, {e:#x}) is empty or reversed")
        if self.max_pfn() > (1 << 40):
            raise MachineError("more than 4 PiB of RAM is outside x86-64 4-level paging")


def merge_ranges(ranges) -> list[tuple[int, int]]:
    """[start, end) ranges sorted, empty ones dropped, overlapping or touching ones joined."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if s >= e:
            continue
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def apply_e820_update(e820: list[tuple[int, int, int]], start: int, end: int,
                      old_type: int | None, new_type: int | None) -> list[tuple[int, int, int]]:
    """e820__range_update()/e820__range_remove(): retype or drop [start, end)."""
    out = []
    for s, e, t in e820:
        if e <= start or s >= end or (old_type is not None and t != old_type):
            out.append((s, e, t))
            continue
        if s < start:
            out.append((s, start, t))
        if new_type is not None:
            out.append((max(s, start), min(e, end), new_type))
        if e > end:
            out.append((end, e, t))
    return sorted(out)
