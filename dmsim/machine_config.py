"""Load a machine description from YAML (dmsim/configs/machines/*.yaml).

Schema (unknown keys are errors, so a typo cannot silently change the machine):

    name: qemu-2g                 # optional; defaults to the file name
    description: free text        # optional, ignored
    gbpages: true                 # optional, default true (false = booted with nogbpages)
    e820:                         # the firmware map as the kernel ends up using it
      - {start: 0x0, end: 0x1000, type: reserved}      # [start, end) bytes; end exclusive
      - {start: 0x1000, end: 0x9fc00, type: usable}
      ...
    ram: 2G                       # instead of e820: a qemu-like map, see qemu_e820()
    kernel:                       # optional: where the kernel image sits (KernelImage)
      text: 0xffffffff81000000    # _text (vaddr)
      etext: ...                  # _etext
      start_rodata: ...           # __start_rodata
      end_rodata: ...             # __end_rodata
      end_rodata_hpage_align: ... # __end_rodata_hpage_align
      end: ...                    # _end
      phys_base: 0x0              # phys_base: physical address of _text - (text - __START_KERNEL_map)
    reserved:                     # optional memblock reservations boot's first 2M block avoids
      - {start: 0x1000000, end: 0x3400000}             # [start, end) bytes

Numbers are ints or strings: hex `0x..` or decimal. Sizes (`ram`) are ints (bytes) or
strings with a binary unit: `512M`, `2G`, `2GiB`, `1T`. e820 types are names (usable,
reserved, acpi, nvs, unusable, persistent, reserved_kern, soft_reserved) or numbers.

Every problem raises MachineError naming the file and the key, e.g.
`dmsim/configs/machines/x.yaml: e820[2].end: not a number: 'zz'`.
"""

from __future__ import annotations

import os
import re

from .core.constants import KERNEL_IMAGE_SIZE, START_KERNEL_MAP
from .machine import E820_TYPES, KernelImage, Machine, MachineError
from .yamlfile import load_yaml

E820_TYPE_NAMES = {}
for _name, _value in E820_TYPES.items():
    E820_TYPE_NAMES.setdefault(_value, _name)  # first spelling wins: 1 -> usable, not ram

KERNEL_FIELDS = ("text", "etext", "start_rodata", "end_rodata", "end_rodata_hpage_align",
                 "end", "phys_base")
TOP_KEYS = ("name", "description", "gbpages", "e820", "ram", "kernel", "reserved")

SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
SIZE_RE = re.compile(r"\s*(\d+)\s*([KMGTP]?)(?:i?B)?\s*", re.IGNORECASE)
NUMBER_RE = re.compile(r"\s*(0[xX][0-9a-fA-F]+|\d+)\s*")

# The qemu pc (i440fx) + SeaBIOS layout the real traces were recorded on.
GiB = 1 << 30
QEMU_LOWMEM_SPLIT = 0xE0000000  # pc_init1(): guests this big keep only 3 GiB below 4 GiB
QEMU_LOWMEM_MAX = 0xC0000000
SEABIOS_HIGH_RESERVE = 0x23000  # reserved at the top of low RAM (0x7ffdd000 in a 2 GiB guest)
BIOS_ROM = (0xFFFC0000, 0x100000000)  # the flash/BIOS mapping below 4 GiB
AMD_HT_HOLE = (0xFD00000000, 0x10000000000)  # qemu >= 7.1 reserves [1 TiB - 12 GiB, 1 TiB)


def parse_size(value, where: str = "ram") -> int:
    """A size in bytes from an int or a string like `2G`, `512MiB`, `0x80000000`."""
    if isinstance(value, bool):
        raise MachineError(f"{where}: not a size: {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = SIZE_RE.fullmatch(value)
        if m:
            n = int(m.group(1)) * SIZE_UNITS[m.group(2).upper()]
        elif NUMBER_RE.fullmatch(value):
            n = parse_number(value, where)
        else:
            raise MachineError(f"{where}: not a size (like 2G, 512M, 1T): {value!r}")
    else:
        raise MachineError(f"{where}: not a size: {value!r}")
    if n <= 0:
        raise MachineError(f"{where}: size must be positive: {value!r}")
    return n


def parse_number(value, where: str) -> int:
    """An address from an int or a `0x..`/decimal string."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise MachineError(f"{where}: not a number: {value!r}")
    if isinstance(value, str):
        if not NUMBER_RE.fullmatch(value):
            raise MachineError(f"{where}: not a number: {value!r}")
        s = value.strip()
        value = int(s, 16) if s[:2] in ("0x", "0X") else int(s)
    if value < 0 or value >= 1 << 64:
        raise MachineError(f"{where}: out of range (0 .. 2^64-1): {value:#x}")
    return value


def parse_e820_type(value, where: str) -> int:
    """An e820 type: a name from machine.E820_TYPES or its number."""
    if isinstance(value, bool):
        raise MachineError(f"{where}: not an e820 type: {value!r}")
    if isinstance(value, int):
        if value <= 0 or value >= 1 << 32:
            raise MachineError(f"{where}: e820 type out of range: {value}")
        return value
    if isinstance(value, str):
        key = value.strip().lower().replace(" ", "_")
        if key in E820_TYPES:
            return E820_TYPES[key]
        if key.isdigit():
            return parse_e820_type(int(key), where)
    names = ", ".join(sorted(E820_TYPES))
    raise MachineError(f"{where}: unknown e820 type {value!r} (one of {names}, or a number)")


def qemu_e820(size: int) -> list[tuple[int, int, int]]:
    """The e820 map a qemu pc guest with `size` bytes of RAM boots with (Linux's view).

    Mirrors the real traces (qemu pc/i440fx, SeaBIOS, Linux 6.1):
      [0, 0x1000)            reserved  (Linux: e820 update usable ==> reserved, page 0)
      [0x1000, 0x9fc00)      usable
      [0x9fc00, 0xa0000)     reserved  (EBDA)
      [0xf0000, 0x100000)    reserved  (BIOS)
      [0x100000, low - 0x23000) usable, [low - 0x23000, low) reserved (SeaBIOS)
      [0xfffc0000, 4 GiB)    reserved  (BIOS flash)
      [4 GiB, 4 GiB + high)  usable    (when size >= 0xe0000000: low = 3 GiB, high = the rest)
      [0xfd00000000, 1 TiB)  reserved  (AMD HyperTransport hole)
    where low = size below 0xe0000000, else 3 GiB. Like qemu 7.1+, above-4G RAM that would
    run into the HyperTransport hole starts at 1 TiB instead.
    """
    if size < 16 << 20 or size % 4096:
        raise MachineError(f"ram: {size:#x} bytes: need a multiple of 4 KiB, at least 16 MiB")
    low = size if size < QEMU_LOWMEM_SPLIT else QEMU_LOWMEM_MAX
    high = size - low
    e820 = [
        (0x0, 0x1000, 2),
        (0x1000, 0x9FC00, 1),
        (0x9FC00, 0xA0000, 2),
        (0xF0000, 0x100000, 2),
        (0x100000, low - SEABIOS_HIGH_RESERVE, 1),
        (low - SEABIOS_HIGH_RESERVE, low, 2),
        (BIOS_ROM[0], BIOS_ROM[1], 2),
    ]
    high_start = 1 << 32
    if high and high_start + high > AMD_HT_HOLE[0]:
        high_start = AMD_HT_HOLE[1]  # x86_update_above_4g_mem_start()
    if high:
        e820.append((high_start, high_start + high, 1))
    e820.append((AMD_HT_HOLE[0], AMD_HT_HOLE[1], 2))
    return sorted(e820)


def kernel_problem(k: KernelImage) -> str | None:
    """Why a KernelImage cannot be a kernel's layout, or None when it can."""
    bounds = [("text", k.text), ("etext", k.etext), ("start_rodata", k.start_rodata),
              ("end_rodata", k.end_rodata), ("end_rodata_hpage_align", k.end_rodata_hpage_align),
              ("end", k.end)]
    for name, v in bounds:
        if not START_KERNEL_MAP <= v <= START_KERNEL_MAP + KERNEL_IMAGE_SIZE:
            return f"{name}={v:#x} is outside the kernel image mapping " \
                   f"[{START_KERNEL_MAP:#x}, +1 GiB)"
    for (na, a), (nb, b) in zip(bounds, bounds[1:], strict=False):
        if a > b:
            return f"{na}={a:#x} is above {nb}={b:#x}"
    if not 0 <= k.phys_base < 1 << 64:
        return f"phys_base={k.phys_base:#x} is not a 64-bit value"
    return None


def machine_from_dict(data, where: str) -> Machine:
    """Build and validate a Machine from parsed YAML; `where` prefixes every error."""
    if not isinstance(data, dict):
        raise MachineError(f"{where}: expected a mapping of keys (name, e820 or ram, ...)")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise MachineError(f"{where}: {unknown[0]}: unknown key (known: {', '.join(TOP_KEYS)})")

    name = data.get("name", os.path.splitext(os.path.basename(where))[0])
    if not isinstance(name, str) or not name:
        raise MachineError(f"{where}: name: expected a string: {name!r}")

    gbpages = data.get("gbpages", True)
    if not isinstance(gbpages, bool):
        raise MachineError(f"{where}: gbpages: expected true or false: {gbpages!r}")

    if "e820" in data and "ram" in data:
        raise MachineError(f"{where}: e820: give either e820 or ram, not both")
    if "ram" in data:
        size = parse_size(data["ram"], f"{where}: ram")
        try:
            e820 = qemu_e820(size)
        except MachineError as e:
            raise MachineError(f"{where}: {e}") from None
    elif "e820" in data:
        e820 = _e820_list(data["e820"], f"{where}: e820")
    else:
        raise MachineError(f"{where}: e820: missing (give e820: [...] or ram: <size>)")

    kernel = None
    if data.get("kernel") is not None:
        kernel = _kernel(data["kernel"], f"{where}: kernel")

    reserved = []
    res = data.get("reserved") or []
    if not isinstance(res, list):
        raise MachineError(f"{where}: reserved: expected a list of {{start, end}}")
    for i, r in enumerate(res):
        w = f"{where}: reserved[{i}]"
        s, e = _range(r, w, ("start", "end"))
        reserved.append((s, e))

    m = Machine(e820=e820, gbpages=gbpages, kernel=kernel, reserved=reserved, name=name)
    try:
        m.validate()
    except MachineError as e:
        raise MachineError(f"{where}: e820: {e}") from None
    return m


def load_machine(path: str) -> Machine:
    """Read a machine YAML file; MachineError names the file and the bad key."""
    data = load_yaml(path, path, MachineError)
    return machine_from_dict(data, path)


def _range(r, where: str, keys: tuple[str, ...]) -> tuple[int, ...]:
    if not isinstance(r, dict):
        raise MachineError(f"{where}: expected a mapping with {', '.join(keys)}")
    extra = [k for k in r if k not in keys]
    if extra:
        raise MachineError(f"{where}.{extra[0]}: unknown key (known: {', '.join(keys)})")
    for k in keys[:2]:
        if k not in r:
            raise MachineError(f"{where}.{k}: missing")
    s = parse_number(r["start"], f"{where}.start")
    e = parse_number(r["end"], f"{where}.end")
    if e <= s:
        raise MachineError(f"{where}.end: {e:#x} is not above start {s:#x} (end is exclusive)")
    if len(keys) == 2:
        return s, e
    return s, e, parse_e820_type(r["type"], f"{where}.type")


def _e820_list(entries, where: str) -> list[tuple[int, int, int]]:
    if not isinstance(entries, list) or not entries:
        raise MachineError(f"{where}: expected a non-empty list of {{start, end, type}}")
    out = []
    for i, r in enumerate(entries):
        w = f"{where}[{i}]"
        if isinstance(r, dict) and "type" not in r:
            raise MachineError(f"{w}.type: missing")
        out.append(_range(r, w, ("start", "end", "type")))
    ordered = sorted(out)
    for (_, e0, _), (s1, _, _) in zip(ordered, ordered[1:], strict=False):
        if s1 < e0:
            raise MachineError(f"{where}: ranges overlap at {s1:#x} (e820 ranges must not overlap)")
    return out


def _kernel(k, where: str) -> KernelImage:
    if not isinstance(k, dict):
        raise MachineError(f"{where}: expected a mapping with {', '.join(KERNEL_FIELDS)}")
    extra = [x for x in k if x not in KERNEL_FIELDS]
    if extra:
        raise MachineError(f"{where}.{extra[0]}: unknown key (known: {', '.join(KERNEL_FIELDS)})")
    missing = [x for x in KERNEL_FIELDS if x not in k]
    if missing:
        raise MachineError(f"{where}.{missing[0]}: missing")
    img = KernelImage(**{x: parse_number(k[x], f"{where}.{x}") for x in KERNEL_FIELDS})
    problem = kernel_problem(img)
    if problem:
        raise MachineError(f"{where}: {problem}")
    return img
