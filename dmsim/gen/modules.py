"""Module loads and unloads as Linux 6.1 does them, with Debian's module sizes.

Sizes: dmsim/configs/scenarios/data/module-sizes-debian-6.1.0-56.csv, computed from the
.ko files of linux-image-6.1.0-56-amd64 by record/module_sizes.py (which explains
the layout rules it follows). One load, `load_module()` in kernel/module/main.c:

1. `kernel_read_file()` (finit_module) reads the whole .ko into a vmalloc() buffer:
   plain unmovable pages, freed by `free_copy()` before the module's init runs.
2. `layout_and_allocate()` -> `move_module()`: `module_alloc()` of the core layout
   (text, rodata, ro_after_init, data) and one of the init layout; x86's
   `module_alloc()` is a vmalloc in module space: `unmapped=module`.
3. `complete_formation()` (kernel/module/strict_rwx.c, main.c):
   `module_enable_ro(mod, false)`: `set_memory_ro` on core text, core rodata, init
   text, init rodata (`frob_text`, `frob_rodata`); `module_enable_nx(mod)`:
   `set_memory_nx` on core rodata, ro_after_init, writable data, init rodata, init
   data; `module_enable_x(mod)`: `set_memory_x` on core and init text.
4. `do_init_module()`: the init function runs, then `module_enable_ro(mod, true)`
   repeats the four RO calls and adds ro_after_init (`frob_ro_after_init`); the init
   area is freed later by the `do_free_init()` work item: `module_memfree()` ->
   `vfree()`, and `set_vm_flush_reset_perms()` (set in `module_enable_ro()`) makes
   that `vfree ... reset_perms`.
Unload, `free_module()`: `module_memfree(mod->core_layout.base)`: `vfree ... reset_perms`.

Calls on zero pages are not written (the native format's `n` 0 means "the rest").
`modprobe` loads missing dependencies first (modinfo `depends=`, in the CSV);
`modprobe -r` unloads the module and then the dependencies nothing else uses and
that were not loaded on their own.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from . import rows as R

PAGE = 4096
DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "configs", "scenarios", "data")
DEFAULT_SIZES = os.path.join(DATA_DIR, "module-sizes-debian-6.1.0-56.csv")
STEP = 1e-5  # seconds between the calls of one load (they interleave with nothing else)


def pages(nbytes: int) -> int:
    return -(-nbytes // PAGE)


class ModuleInfo:
    __slots__ = ("name", "ko", "text", "ro", "roai", "data", "itext", "iro", "idata", "deps")

    @property
    def core(self) -> int:
        return self.text + self.ro + self.roai + self.data

    @property
    def init(self) -> int:
        return self.itext + self.iro + self.idata


def load_table(path: str = DEFAULT_SIZES) -> dict[str, ModuleInfo]:
    """name -> ModuleInfo with sizes in pages (ko: pages of the file's vmalloc copy)."""
    out = {}
    with open(path) as f:
        lines = [ln for ln in f if not ln.startswith("#")]
    for r in csv.DictReader(lines):
        m = ModuleInfo()
        m.name = r["name"]
        m.ko = pages(int(r["ko"]))
        m.text, m.ro, m.roai, m.data = (pages(int(r[k])) for k in
                                        ("text", "rodata", "ro_after_init", "data"))
        m.itext, m.iro, m.idata = (pages(int(r[k])) for k in ("init_text", "init_rodata", "init_data"))
        m.deps = tuple(r["deps"].split())
        out[m.name] = m
    return out


class ModuleSystem:
    """Which modules are loaded, and the rows their loads and unloads write."""

    def __init__(self, table: dict[str, ModuleInfo], rows: R.Rows, objs: R.Objects,
                 init_time, rng):
        self.table = table
        self.rows = rows
        self.objs = objs
        self.init_time = init_time  # Dist: seconds the module's init function runs
        self.rng = rng
        self.loaded: dict[str, int] = {}  # name -> core object
        self.wanted: set[str] = set()  # loaded on their own (not as a dependency)
        self.pinned: set[str] = set()  # never unloaded (boot modules)
        self.loads = self.unloads = 0

    def closure(self, name: str) -> list[str]:
        """`name` and its dependencies, dependencies first."""
        out: list[str] = []
        seen: set[str] = set()

        def visit(n):
            if n in seen:
                return
            seen.add(n)
            for d in self.table[n].deps:
                visit(d)
            out.append(n)

        visit(name)
        return out

    def modprobe(self, name: str, t: float) -> float:
        """Load `name` and what it needs from time t; returns when the last load ends."""
        for n in self.closure(name):
            if n not in self.loaded:
                t = self._load(self.table[n], t)
        self.wanted.add(name)
        return t

    def users(self, name: str) -> list[str]:
        return [n for n in self.loaded if name in self.table[n].deps]

    def can_remove(self, name: str) -> bool:
        return name in self.loaded and name not in self.pinned and not self.users(name)

    def modprobe_r(self, name: str, t: float) -> float:
        """Unload `name`, then the dependencies it leaves unused."""
        todo = [name]
        while todo:
            n = todo.pop(0)
            if not self.can_remove(n) or (n != name and n in self.wanted):
                continue
            t = self._unload(n, t)
            todo.extend(self.table[n].deps)
        self.wanted.discard(name)
        return t

    def _load(self, m: ModuleInfo, t: float) -> float:
        add, objs = self.rows.add, self.objs
        copy, core = objs.new(), objs.new()
        init = objs.new() if m.init else -1
        s = STEP
        add(t, R.VMALLOC, copy, m.ko)  # kernel_read_file(): the .ko in a vmalloc buffer
        add(t + s, R.VMALLOC_MODULE, core, m.core)  # move_module(): module_alloc(core)
        if m.init:
            add(t + 2 * s, R.VMALLOC_MODULE, init, m.init)  # module_alloc(init)
        t += 3 * s
        t = self._enable_ro(m, core, init, t, after_init=False)
        # module_enable_nx(): frob_rodata, frob_ro_after_init, frob_writable_data (core),
        # frob_rodata, frob_writable_data (init)
        for obj, first, n in ((core, m.text, m.ro), (core, m.text + m.ro, m.roai),
                              (core, m.text + m.ro + m.roai, m.data),
                              (init, m.itext, m.iro), (init, m.itext + m.iro, m.idata)):
            if n and obj >= 0:
                add(t, R.SET_NX, obj, first, n)
                t += s
        # module_enable_x(): frob_text(core), frob_text(init)
        for obj, n in ((core, m.text), (init, m.itext)):
            if n and obj >= 0:
                add(t, R.SET_X, obj, 0, n)
                t += s
        add(t, R.VFREE, copy, m.ko)  # free_copy()
        t += self.init_time.one(self.rng)  # do_init_module(): mod->init() runs
        t = self._enable_ro(m, core, init, t, after_init=True)
        if init >= 0:
            add(t + 100 * s, R.VFREE_RESET, init, m.init)  # do_free_init() work item
        self.loaded[m.name] = core
        self.loads += 1
        return t + 200 * s

    def _enable_ro(self, m: ModuleInfo, core: int, init: int, t: float, after_init: bool) -> float:
        """module_enable_ro(): frob_text(core), frob_rodata(core), frob_text(init),
        frob_rodata(init), and with after_init frob_ro_after_init(core)."""
        calls = [(core, 0, m.text), (core, m.text, m.ro), (init, 0, m.itext), (init, m.itext, m.iro)]
        if after_init:
            calls.append((core, m.text + m.ro, m.roai))
        for obj, first, n in calls:
            if n and obj >= 0:
                self.rows.add(t, R.SET_RO, obj, first, n)
                t += STEP
        return t

    def _unload(self, name: str, t: float) -> float:
        m = self.table[name]
        self.rows.add(t, R.VFREE_RESET, self.loaded.pop(name), m.core)  # free_module()
        self.unloads += 1
        return t + 100 * STEP


def check_names(table: dict[str, ModuleInfo], names, fail) -> None:
    for n in names:
        if not isinstance(n, str) or n not in table:
            fail(f"{n!r}: no such module in {os.path.basename(DEFAULT_SIZES)}")


def cycles(sec, ctx, system: ModuleSystem) -> None:
    """`modules:` load/unload cycles over the workload window: each cycle picks a
    module of the pool; loads it if it is not loaded, else unloads it (modprobe -r)."""
    pool = sec.list("pool")
    check_names(system.table, pool, lambda msg: sec.fail(msg, "pool"))
    n = round(sec.num("cycles", lo=0) * ctx.scale)
    sec.done()
    pool = [p for p in pool if p not in system.pinned]
    if not pool or n == 0:
        return
    rng = ctx.rng("modules.cycles")
    starts = np.sort(rng.uniform(ctx.t0, ctx.t1, n))
    picks = rng.integers(0, len(pool), n)
    t = ctx.t0
    for start, k in zip(starts.tolist(), picks.tolist(), strict=True):
        t = max(t, start)  # one modprobe at a time: loads never overlap
        name = pool[k]
        if name in system.loaded:
            if system.can_remove(name):
                t = system.modprobe_r(name, t)
        else:
            t = system.modprobe(name, t)
        if t >= ctx.t1:
            break
