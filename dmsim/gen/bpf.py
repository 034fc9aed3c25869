"""BPF JIT memory as Linux 6.1 allocates it: bpftrace-style runs.

kernel/bpf/core.c (6.1):
- `bpf_prog_alloc()` keeps the program (struct bpf_prog and its instructions) in a
  `__vmalloc()` area: plain unmovable pages, for the program's life.
- x86's JIT takes the image from `bpf_jit_binary_pack_alloc()`:
  `size = round_up(proglen + sizeof(struct bpf_binary_header) + 16, 64)`, then
  `bpf_prog_pack_alloc()`: first fit (`bitmap_find_next_zero_area()`) in 64-byte
  chunks over the packs in list order; none fits -> `alloc_new_pack()`:
  `module_alloc(BPF_PROG_PACK_SIZE)` (2 MiB on one node, `unmapped=bpf`),
  `set_vm_flush_reset_perms()`, `set_memory_ro()` and `set_memory_x()` on all 512
  pages -- once per pack, not per program. An image over BPF_PROG_PACK_SIZE gets its
  own `module_alloc()` (ro + x). `bpf_prog_pack_free()` clears the chunks and
  frees a pack left empty (`module_memfree()`: `vfree ... reset_perms`).
- With `packs: false` (before 5.18, or archs without packs) `bpf_jit_binary_alloc()`
  gives every program `module_alloc(round_up(proglen + 8 + 128, PAGE_SIZE))`, made
  ro then x by `bpf_jit_binary_lock_ro()`.
- Trampolines (fentry/fexit, kernel/bpf/trampoline.c): `bpf_tramp_image_alloc()`
  takes one page from `bpf_jit_alloc_exec(PAGE_SIZE)` (= module_alloc, `unmapped=bpf`)
  and `bpf_trampoline_update()` makes it ro then x; freed with reset_perms.
- kprobes not on an ftrace site take instruction slots from pages of
  `alloc_insn_page()` (arch/x86/kernel/kprobes/core.c): `module_alloc(PAGE_SIZE)`
  (`unmapped=module`: the module_alloc group), ro then x.

The boot-time pack (ptp_classifier_init) is made here too: it stays, so in 6.1
small programs usually fit in it and allocate nothing -- what the real traces show.
"""

from __future__ import annotations

import numpy as np

from . import rows as R

PAGE = 4096
PACK_SIZE = 2 << 20  # BPF_PROG_PACK_SIZE: PMD_SIZE * num_possible_nodes(), one node
PACK_PAGES = PACK_SIZE // PAGE
CHUNK = 64  # BPF_PROG_CHUNK_SIZE
CHUNKS = PACK_SIZE // CHUNK
HDR = 8  # sizeof(struct bpf_binary_header): u32 size, image[] aligned to 8
STEP = 1e-5


class JitMemory:
    """The pack list and the rows its changes write."""

    def __init__(self, rows: R.Rows, objs: R.Objects, packs: bool):
        self.rows, self.objs, self.use_packs = rows, objs, packs
        self.packs: list[list] = []  # [obj, bitmap (bool[CHUNKS]), permanent]
        self.new_packs = self.freed_packs = self.own_allocs = 0

    def exec_area(self, t: float, npages: int, op=R.VMALLOC_BPF) -> int:
        obj = self.objs.new()
        self.rows.add(t, op, obj, npages)
        self.rows.add(t + STEP, R.SET_RO, obj, 0, npages)
        self.rows.add(t + 2 * STEP, R.SET_X, obj, 0, npages)
        return obj

    def alloc(self, proglen: int, t: float, permanent: bool = False):
        """A program image: ('pack', pack, pos, nbits) or ('own', obj, pages)."""
        if not self.use_packs:
            npages = -(-(proglen + HDR + 128) // PAGE)
            self.own_allocs += 1
            return ("own", self.exec_area(t, npages), npages)
        size = -(-(proglen + HDR + 16) // CHUNK) * CHUNK
        if size > PACK_SIZE:
            npages = -(-size // PAGE)
            self.own_allocs += 1
            return ("own", self.exec_area(t, npages), npages)
        nbits = size // CHUNK
        for pack in self.packs:
            pos = first_fit(pack[1], nbits)
            if pos >= 0:
                break
        else:
            pack = [self.exec_area(t, PACK_PAGES), np.zeros(CHUNKS, bool), permanent]
            self.packs.append(pack)
            self.new_packs += 1
            pos = 0
        pack[1][pos:pos + nbits] = True
        return ("pack", pack, pos, nbits)

    def free(self, img, t: float) -> None:
        if img[0] == "own":
            self.rows.add(t, R.VFREE_RESET, img[1], img[2])
            return
        _, pack, pos, nbits = img
        pack[1][pos:pos + nbits] = False
        if not pack[2] and not pack[1].any():
            self.packs.remove(pack)
            self.rows.add(t, R.VFREE_RESET, pack[0], PACK_PAGES)
            self.freed_packs += 1


def first_fit(bitmap: np.ndarray, nbits: int) -> int:
    """bitmap_find_next_zero_area(map, size, 0, nbits, 0): the first run of nbits
    clear bits, or -1."""
    free = np.concatenate(([False], ~bitmap, [False]))
    d = np.diff(free.astype(np.int8))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    ok = np.flatnonzero(ends - starts >= nbits)
    return int(starts[ok[0]]) if ok.size else -1


def boot_pack(sec, ctx, jit: JitMemory, t: float) -> None:
    """ptp_classifier_init(): one small filter in a pack that stays."""
    on = sec.bool("bpf_boot_pack", True)
    nbytes = sec.int("bpf_boot_prog_bytes", 256, lo=1)  # read (checked) even when off
    if on and jit.use_packs:
        jit.alloc(nbytes, t, permanent=True)


def runs(sec, ctx, jit: JitMemory) -> None:
    """`bpf:` bpftrace-style runs over the workload window."""
    count = round(sec.num("runs", 0, lo=0) * ctx.scale)
    length = sec.dist("run_length", 5)
    nprogs = sec.dist("programs", 2)
    size = sec.dist("program_bytes", {"lognormal": {"median": 500, "p75": 2000}})
    insn_ratio = sec.num("insn_bytes_per_jit_byte", 2.0, lo=0)
    load_time = sec.num("load_time", 0.005, lo=0)
    ntramp = sec.dist("trampolines", 0)
    nkprobe = sec.dist("kprobe_pages", 0)
    sec.get("packs")  # read by generate.py
    sec.done()
    if count == 0:
        return
    rng = ctx.rng("bpf.runs")
    start = rng.uniform(ctx.t0, ctx.t1, count)
    n = np.maximum(nprogs.sample(rng, count).astype(np.int64), 1)
    nt = np.maximum(ntramp.sample(rng, count).astype(np.int64), 0)
    nk = np.maximum(nkprobe.sample(rng, count).astype(np.int64), 0)
    setup = n * load_time + (nt + nk + 1) * 4 * STEP  # load, then attach
    end = start + setup + np.maximum(length.sample(rng, count), 1e-3)
    # program loads and frees of all runs, in time order (runs may overlap; the
    # pack allocator's state depends on the order)
    ev = []  # (time, seq, what, run, index)
    seq = 0
    for r in range(count):
        for i in range(int(n[r])):
            ev.append((start[r] + i * load_time, seq, 0, r, i))
            ev.append((end[r] + i * STEP * 10, seq + 1, 1, r, i))
            seq += 2
    ev.sort()
    sizes = np.maximum(size.sample(rng, int(n.sum())), 1).astype(np.int64)
    base = np.cumsum(n) - n
    live = {}
    rows, objs = jit.rows, jit.objs
    for t, _, what, r, i in ev:
        key = (r, i)
        if what == 0:
            proglen = int(sizes[base[r] + i])
            struct_pages = -(-(72 + int(proglen * insn_ratio)) // PAGE)
            sobj = objs.new()
            rows.add(t, R.VMALLOC, sobj, struct_pages)  # bpf_prog_alloc()
            live[key] = (sobj, struct_pages, jit.alloc(proglen, t + STEP))
        else:
            sobj, struct_pages, img = live.pop(key)
            jit.free(img, t)  # bpf_jit_free() from bpf_prog_free_deferred()
            rows.add(t + STEP, R.VFREE, sobj, struct_pages)  # __bpf_prog_free()
    for r in range(count):
        t = start[r] + int(n[r]) * load_time
        for _ in range(int(nt[r])):  # one trampoline image per fentry/fexit target
            obj = jit.exec_area(t, 1)
            rows.add(end[r] - 10 * STEP, R.VFREE_RESET, obj, 1)
            t += 4 * STEP
        for _ in range(int(nk[r])):  # kprobe instruction-slot pages
            obj = jit.exec_area(t, 1, R.VMALLOC_MODULE)
            rows.add(end[r] + 0.01, R.VFREE_RESET, obj, 1)
            t += 4 * STEP
