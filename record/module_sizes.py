#!/usr/bin/env python3
"""Regenerate dmsim/configs/scenarios/data/module-sizes-debian-6.1.0-56.csv: how much
module memory each module of Debian's linux-image-6.1.0-56-amd64 takes when Linux
6.1 loads it, computed from its .ko the way the module loader lays it out.

Why a script rather than numbers in a YAML: `dmsim gen` places the pages of every
module load, so the sizes must be the kernel's own, per module, for thousands of
modules; they follow from the ELF section headers and 6.1's layout rules:

- `layout_and_allocate()` (kernel/module/main.c): `.modinfo` and `__versions` lose
  SHF_ALLOC (`rewrite_section_headers()`), the per-cpu section `.data..percpu` is
  allocated elsewhere, `.data..ro_after_init` and `__jump_table` get SHF_RO_AFTER_INIT.
- `layout_sections()`: SHF_ALLOC sections, in section-table order within each class,
  go to core or (names starting `.init`) init memory; classes executable, read-only,
  ro_after_init, writable; each section at `ALIGN(size, sh_addralign)`
  (`module_get_offset()`), each class boundary page-aligned (`strict_align()`,
  CONFIG_STRICT_MODULE_RWX=y).
- `layout_symtab()` (kernel/module/kallsyms.c; Debian has CONFIG_KALLSYMS_ALL=y): the
  whole `.symtab` and `.strtab` go to init memory, then a `struct mod_kallsyms` (32
  bytes) and one type byte per symbol; the core symbols (`is_core_symbol()`: defined
  in a SHF_ALLOC non-init section, or the per-cpu one, with a name) are appended to
  the core writable data: 24-byte Elf64_Sym each, their names, one type byte each.
- `move_module()`: one `module_alloc()` of the core size, one of the init size.

Columns (bytes; each class starts on a page boundary, so pages = ceil(bytes / 4096)):
name, ko (the file size: `finit_module()` reads the whole file into a vmalloc buffer),
text, rodata, ro_after_init, data (core writable data + core symbols), init_text,
init_rodata, init_data (init writable data + symtab, strtab, mod_kallsyms, types),
deps (modinfo `depends=`, space-separated).

The modules come from record/work/ (the recording harness's cache, `make
record-real`): the extracted kernel-6.1.0-56-amd64/ tree, else the .deb there (unpacked
with dpkg-deb), else `apt-get download linux-image-6.1.0-56-amd64`. `.ko`, `.ko.xz`
and `.ko.zst` (with the zstandard module) are read.

    python record/module_sizes.py [--kver 6.1.0-56-amd64] [-o CSV]
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import lzma
import os
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "record", "work")
DEFAULT_KVER = "6.1.0-56-amd64"
DEFAULT_OUT = os.path.join(ROOT, "dmsim", "configs", "scenarios", "data",
                           "module-sizes-debian-6.1.0-56.csv")

PAGE = 4096
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
SHF_RO_AFTER_INIT = 0x00200000  # include/uapi/linux/elf.h
SHT_SYMTAB, SHT_NOBITS = 2, 8
SHN_UNDEF = 0
SIZEOF_SYM = 24  # Elf64_Sym
SIZEOF_MOD_KALLSYMS = 32  # struct mod_kallsyms: symtab, num_symtab, strtab, typetab
# layout_sections() masks: (required flags, forbidden flags); ARCH_SHF_SMALL is 0 on x86
MASKS = ((SHF_EXECINSTR | SHF_ALLOC, 0),
         (SHF_ALLOC, SHF_WRITE),
         (SHF_RO_AFTER_INIT | SHF_ALLOC, 0),
         (SHF_WRITE | SHF_ALLOC, 0),
         (SHF_ALLOC, 0))
COLUMNS = ("name", "ko", "text", "rodata", "ro_after_init", "data",
           "init_text", "init_rodata", "init_data", "deps")


def align(x: int, a: int) -> int:
    return (x + a - 1) // a * a if a > 1 else x


class Section:
    __slots__ = ("name", "type", "flags", "offset", "size", "link", "addralign", "entsize")


def sections(elf: bytes) -> list[Section]:
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    out = []
    for i in range(shnum):
        s = Section()
        (name, s.type, s.flags, _addr, s.offset, s.size, s.link, _info, s.addralign,
         s.entsize) = struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize)
        s.name = name
        out.append(s)
    strtab = out[shstrndx]
    for s in out:
        end = elf.index(b"\0", strtab.offset + s.name)
        s.name = elf[strtab.offset + s.name:end].decode()
    return out


def modinfo(elf: bytes, secs: list[Section]) -> dict[str, str]:
    info = {}
    for s in secs:
        if s.name == ".modinfo":
            for item in elf[s.offset:s.offset + s.size].split(b"\0"):
                k, sep, v = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(k, v)
    return info


def layout(elf: bytes) -> dict[str, int]:
    """Byte sizes of the core and init classes as 6.1's loader lays the module out."""
    secs = sections(elf)
    flags = [s.flags for s in secs]
    for i, s in enumerate(secs):
        if s.name in (".modinfo", "__versions", ".data..percpu"):
            flags[i] &= ~SHF_ALLOC
        if s.name in (".data..ro_after_init", "__jump_table"):
            flags[i] |= SHF_RO_AFTER_INIT
    pcpu = next((i for i, s in enumerate(secs) if s.name == ".data..percpu"), 0)
    placed = [False] * len(secs)
    in_init = [False] * len(secs)
    bounds = {}
    for init in (False, True):
        size = 0
        for m, (need, forbid) in enumerate(MASKS):
            for i, s in enumerate(secs):
                if (flags[i] & need) != need or flags[i] & forbid or placed[i] \
                        or s.name.startswith(".init") != init:
                    continue
                size = align(size, s.addralign or 1) + s.size  # module_get_offset()
                placed[i] = True
                in_init[i] = init
            if m in (0, 1, 2, 4):
                size = align(size, PAGE)  # strict_align()
            if m == 0:
                bounds[init, "text"] = size
            elif m == 1:
                bounds[init, "ro"] = size
            elif m == 2:
                bounds[init, "ro_after_init"] = size
        bounds[init, "size"] = size

    # layout_symtab()
    sym = next(i for i, s in enumerate(secs) if s.type == SHT_SYMTAB)
    symsect, strsect = secs[sym], secs[secs[sym].link]
    init_size = align(bounds[True, "size"], symsect.addralign or 1) + symsect.size
    nsrc = symsect.size // SIZEOF_SYM
    ndst = strtab_size = 0
    for k in range(nsrc):
        st_name, _info, _other, shndx = struct.unpack_from("<IBBH", elf, symsect.offset + k * SIZEOF_SYM)
        core = k == 0
        if not core and shndx != SHN_UNDEF and shndx < len(secs) and st_name:
            core = shndx == pcpu or (flags[shndx] & SHF_ALLOC and placed[shndx] and not in_init[shndx])
        if core:
            end = elf.index(b"\0", strsect.offset + st_name)
            strtab_size += end - (strsect.offset + st_name) + 1
            ndst += 1
    core_size = align(bounds[False, "size"], symsect.addralign or 1) + ndst * SIZEOF_SYM
    core_size = align(core_size + strtab_size + ndst, PAGE)
    init_size = align(init_size, strsect.addralign or 1) + strsect.size
    init_size = align(init_size, 8) + SIZEOF_MOD_KALLSYMS + nsrc
    init_size = align(init_size, PAGE)

    c_text, c_ro, c_roai = (bounds[False, k] for k in ("text", "ro", "ro_after_init"))
    i_text, i_ro = bounds[True, "text"], bounds[True, "ro"]
    return {
        "text": c_text, "rodata": c_ro - c_text, "ro_after_init": c_roai - c_ro,
        "data": core_size - c_roai,
        "init_text": i_text, "init_rodata": i_ro - i_text, "init_data": init_size - i_ro,
    }


def read_ko(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".zst"):
        import zstandard  # only for zstd-compressed modules

        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return data


def module_tree(kver: str) -> str:
    """The extracted kernel package: the harness's cache, else unpack or download it."""
    kdir = os.path.join(WORK, f"kernel-{kver}")
    if os.path.isdir(os.path.join(kdir, "lib", "modules", kver)):
        return kdir
    debs = glob.glob(os.path.join(WORK, f"linux-image-{kver}_*.deb"))
    tmp = tempfile.mkdtemp(prefix="dmsim-modsizes-")
    if not debs:
        print(f"downloading linux-image-{kver} with apt-get", file=sys.stderr)
        subprocess.run(["apt-get", "download", f"linux-image-{kver}"], cwd=tmp, check=True)
        debs = glob.glob(os.path.join(tmp, f"linux-image-{kver}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", debs[0], tmp], check=True)
    return tmp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kver", default=DEFAULT_KVER)
    ap.add_argument("-o", "--output", default=DEFAULT_OUT)
    args = ap.parse_args()
    mdir = os.path.join(module_tree(args.kver), "lib", "modules", args.kver)
    paths = sorted(glob.glob(os.path.join(mdir, "**", "*.ko*"), recursive=True))
    if not paths:
        raise SystemExit(f"{mdir}: no modules")
    rows = []
    for p in paths:
        base = os.path.basename(p)
        elf = read_ko(p)
        secs = sections(elf)
        info = modinfo(elf, secs)
        name = info.get("name") or base.split(".ko")[0].replace("-", "_")
        row = {"name": name, "ko": len(elf), **layout(elf),
               "deps": " ".join(d.replace("-", "_") for d in info.get("depends", "").split(",") if d)}
        rows.append(row)
    rows.sort(key=lambda r: r["name"])
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", newline="") as f:
        f.write(f"# Module memory of Debian linux-image-{args.kver} (6.1.192-2) as Linux 6.1 lays\n"
                "# it out (bytes per class; each class starts page-aligned). Generated by\n"
                "# record/module_sizes.py, which documents the columns and the kernel code.\n")
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} modules to {os.path.relpath(args.output, ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
