"""Put a scenario together: the timeline, every workload's rows, one sorted stream.

Timeline (seconds of simulated time):
  0          start_kernel()'s CPA calls on the kernel image (kernel_calls.py)
  [0, 0.9)   boot: early allocations; the boot-time BPF pack at 0.5
  0.95       free_initmem() and mark_rodata_ro()'s calls on the kernel image with
             kernel_ro among them (kernel_calls.py; without a data file for the
             machine, a bare kernel_ro), 1.0 system_running
  from 1.0   the boot modules, one modprobe after another; background starts
  t0         boot modules done + `boot.settle`: the workloads start
  t1         t0 + duration x scale: the trace ends (what is still allocated stays)

Rows are merged by time with a stable sort (equal times keep the order the
workloads wrote them), objects become handles in the order their allocations
appear, and two checks guard the replay: every object is allocated before it is
used, and the live memory never comes near the machine's (an allocation that
fails in the replay would turn its later free into a handle error).
"""

from __future__ import annotations

import os
import sys
import zlib
from dataclasses import dataclass, field

import numpy as np

from .. import __version__
from ..machine import Machine, MachineError
from ..trace.errors import TraceError
from . import background, boot, bpf, kernel_calls, modules, secretmem
from . import rows as R
from .scenario import SCENARIO_DIR, ScaleError, Scenario, ScenarioError, Section

T_KERNEL_RO = 0.95
T_RUNNING = 1.0
T_BOOT_PACK = 0.5
MAX_LIVE_SHARE = 0.95  # of the pages the allocator starts with
MAX_HANDLE = (1 << 31) - 1  # native format: handles below 2^31


class Context:
    """What every workload needs: where rows go, object numbers, the time window."""

    def __init__(self, seed: int, scale: float):
        self.seed, self.scale = seed, scale
        self.rows = R.Rows()
        self.objs = R.Objects()
        self.t_running = T_RUNNING
        self.t0 = self.t1 = T_RUNNING

    def rng(self, name: str) -> np.random.Generator:
        """Each workload draws from its own stream: adding one changes no other."""
        return np.random.default_rng([self.seed, zlib.crc32(name.encode())])


@dataclass
class Generated:
    machine: Machine
    header: str
    op: np.ndarray
    handle: np.ndarray
    b: np.ndarray
    c: np.ndarray
    stats: dict = field(default_factory=dict)
    # native text written before row `at` (ascending): the kernel image's boot calls
    inserts: list[tuple[int, bytes]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.op.shape[0]) + sum(t.count(b"\n") for _, t in self.inserts)


def _machine(root: Section, sc: Scenario) -> Machine:
    from ..machine_config import load_machine, machine_from_dict

    spec = root.get("machine")
    file = sc.file_of(("machine",))
    try:
        if isinstance(spec, str):
            path = os.path.join(os.path.dirname(file), spec)
            if not os.path.exists(path):
                named = os.path.join(os.path.dirname(SCENARIO_DIR), "machines", spec + ".yaml")
                path = named if os.path.exists(named) else path
            if not os.path.exists(path):
                raise ScenarioError(f"{file}: machine: {spec}: no such machine file "
                                    "(a name in dmsim/configs/machines/ or a path)")
            return load_machine(path)
        if spec is None:
            raise ScenarioError(f"{file}: machine: missing (a machine name or mapping)")
        return machine_from_dict(spec, f"{file}: machine")
    except MachineError as e:
        raise ScenarioError(str(e)) from None


def build(sc: Scenario, seed: int, scale: float, label: str | None = None) -> Generated:
    """The scenario's rows, sorted, with handles; raises ScenarioError."""
    if not scale > 0:
        raise ScaleError(f"--scale {scale}: must be above 0")
    root = sc.root()
    root.get("description")
    machine = _machine(root, sc)
    duration = root.num("duration", lo=0)
    ctx = Context(seed, scale)
    rows = ctx.rows

    sizes_path = root.get("module_sizes")
    if sizes_path is None:
        sizes_path = modules.DEFAULT_SIZES
    elif not isinstance(sizes_path, str):
        root.fail(f"expected a file name, got {sizes_path!r}", "module_sizes")
    else:
        sizes_path = os.path.join(os.path.dirname(sc.file_of(("module_sizes",))), sizes_path)
    try:
        table = modules.load_table(sizes_path)
    except (OSError, KeyError, ValueError) as e:
        root.fail(f"cannot read module sizes: {e}", "module_sizes")

    bsec = root.sub("boot")
    kcalls, kcalls_note = _kernel_calls(bsec, sc, machine)
    bpf_sec = root.sub("bpf")
    packs = bpf_sec.bool("packs", True)
    jit = bpf.JitMemory(rows, ctx.objs, packs)
    boot.early(bsec, ctx)
    bpf.boot_pack(bsec, ctx, jit, T_BOOT_PACK)
    if kcalls is None:  # else kernel_ro comes with the recorded calls, where the kernel had it
        rows.add(T_KERNEL_RO, R.KERNEL_RO)
    rows.add(T_RUNNING, R.SYSTEM_RUNNING)
    init_time = bsec.dist("module_init_time", {"uniform": [0.001, 0.05]})
    system = modules.ModuleSystem(table, rows, ctx.objs, init_time, ctx.rng("modules.init"))
    t = boot.modules(bsec, ctx, system)
    boot_loads = system.loads
    settle = bsec.num("settle", 5.0, lo=0)
    bsec.done()
    ctx.t0 = t + settle
    ctx.t1 = ctx.t0 + duration * scale

    bg = root.sub("background")
    background.fill(bg.sub("fill"), ctx, T_RUNNING, ctx.t0, _allocator_pages(machine))
    background.streams(bg, ctx, T_RUNNING)
    background.pipes(bg.sub("pipes"), ctx, T_RUNNING)
    bg.done()
    if root.has("modules"):
        modules.cycles(root.sub("modules"), ctx, system)
    if bpf_sec.data:
        bpf.runs(bpf_sec, ctx, jit)
    else:
        bpf_sec.done()
    if root.has("secretmem"):
        secretmem.processes(root.sub("secretmem"), ctx)
    root.done()

    if ctx.objs.n > MAX_HANDLE:
        raise ScaleError(f"{sc.path}: {ctx.objs.n:,} allocations: more than the native "
                            f"format's handles (< 2^31); lower --scale")
    t_, op, obj, b, c = rows.columns()
    order = time_order(t_)
    op, obj, b, c = op[order], obj[order], b[order], c[order]
    handle, peak = _handles_and_peak(op, obj, b, ctx.objs.n)
    inserts = []
    if kcalls is not None:
        # start_kernel()'s calls before every row; kernel_init()'s before the rows from
        # T_KERNEL_RO on (time_order() sorts by the time rounded to the microsecond)
        tq = np.rint(np.maximum(t_[order], 0.0) * 1e6).astype(np.int64)
        at = int(np.searchsorted(tq, round(T_KERNEL_RO * 1e6), side="left"))
        inserts = [(0, kcalls.early.encode()), (at, kcalls.late.encode())]

    free_pages = _allocator_pages(machine)
    if peak > MAX_LIVE_SHARE * free_pages:
        raise ScenarioError(
            f"{sc.path}: the workload keeps up to {peak * 4 // 1024} MiB allocated at once, over "
            f"{int(MAX_LIVE_SHARE * 100)}% of the {free_pages * 4 // 1024} MiB the machine's "
            "allocator has: lower rates or lifetimes, or give a bigger machine "
            "(allocations would fail in the replay)")
    counts = np.bincount(op, minlength=R.N_OPS)
    stats = {
        "events": int(op.shape[0]) + (kcalls.events if kcalls is not None else 0),
        "kernel_calls": kcalls.events if kcalls is not None else 0,
        "page_allocs": int(counts[R.PAGE_ALLOC] + counts[R.PAGE_ALLOC_SECRETMEM]),
        "vmallocs": int(counts[R.VMALLOC] + counts[R.VMALLOC_MODULE] + counts[R.VMALLOC_BPF]),
        "set_memory": int(counts[R.SET_RO:R.SET_DEFAULT + 1].sum()),
        "module_loads": system.loads - boot_loads, "boot_module_loads": boot_loads,
        "module_unloads": system.unloads, "bpf_packs": jit.new_packs,
        "peak_live_mib": round(peak * 4 / 1024, 1), "simulated_seconds": round(ctx.t1, 3),
    }
    label = label or sc.path
    scale_s = f"{scale:g}" if float(f"{scale:g}") == scale else repr(scale)  # exact, short
    comments = [f"generated by dmsim {__version__}: dmsim gen {label} --seed {seed} --scale {scale_s}",
                f"scenario {sc.name}: {' '.join(str(root.data.get('description', '')).split())}",
                f"{stats['events']} events, {stats['simulated_seconds']} s simulated, "
                f"peak {stats['peak_live_mib']} MiB allocated",
                kcalls_note]
    from .writer import header

    return Generated(machine, header(machine, comments), op, handle, b, c, stats, inserts)


def _kernel_calls(bsec: Section, sc: Scenario, machine: Machine):
    """`boot.kernel_calls`: the data files of the kernel image's boot-time CPA calls
    (kernel_calls.py); the one for this machine, and the header's note on it. No
    file for the machine is said on stderr too: its boot lacks those splits."""
    if bsec.has("kernel_calls"):
        names = bsec.list("kernel_calls")
        if not all(isinstance(n, str) for n in names):
            bsec.fail(f"expected a list of file names, got {names!r}", "kernel_calls")
        base = os.path.dirname(sc.file_of(("boot", "kernel_calls")))
        paths = [os.path.join(base, n) for n in names]
    else:
        bsec.get("kernel_calls")
        paths = kernel_calls.default_paths()
    try:
        kc, note = kernel_calls.choose(machine, paths)
    except OSError as e:
        bsec.fail(f"cannot read: {e.filename}: {e.strerror}", "kernel_calls")
    except (ValueError, TraceError) as e:
        bsec.fail(f"not a kernel boot calls file: {e}", "kernel_calls")
    if kc is None and paths:
        sys.stderr.write(f"dmsim: gen: {sc.path}: warning: {note}\n")
    return kc, note


def time_order(t: np.ndarray) -> np.ndarray:
    """The permutation that sorts rows by time, equal times in row order.

    Times are rounded to the microsecond and packed with the row index into one
    int64 key: sorting unique integer keys is about three times faster than a
    stable argsort of the floats. Rounding only merges times closer than a
    microsecond, and then row order decides, which every workload writes in
    allocate-before-use order."""
    n = t.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    tq = np.rint(np.maximum(t, 0.0) * 1e6).astype(np.int64)
    ibits = max(1, (n - 1).bit_length())
    if int(tq.max()).bit_length() + ibits > 63:
        return np.argsort(t, kind="stable")
    key = np.left_shift(tq, ibits)
    key |= np.arange(n, dtype=np.int64)
    key.sort()
    key &= (1 << ibits) - 1
    return key


def _handles_and_peak(op, obj, b, nobj):
    """Handles in allocation order, the peak of live pages, and the check that
    every object is allocated once and before its other rows."""
    is_alloc = R.ALLOCS[op]
    alloc_rows = np.flatnonzero(is_alloc)
    alloc_objs = obj[alloc_rows]
    first_use = np.full(max(nobj, 1), np.iinfo(np.int64).max, np.int64)
    first_use[alloc_objs] = alloc_rows
    if alloc_objs.shape[0] and np.bincount(alloc_objs).max() > 1:
        raise AssertionError("an object is allocated twice")
    handle_of = np.full(max(nobj, 1), -1, np.int32)
    handle_of[alloc_objs] = np.arange(alloc_objs.shape[0], dtype=np.int32)
    used = np.flatnonzero(obj >= 0)
    if (first_use[obj[used]] > used).any():
        raise AssertionError("an object is used before it is allocated")
    handle = np.zeros(op.shape[0], np.int32)
    handle[used] = handle_of[obj[used]]
    size = np.where(R.BY_ORDER[op], np.left_shift(1, np.clip(b, 0, 30)), b).astype(np.int64)
    size *= R.SIGN[op]
    live = np.cumsum(size)
    return handle, int(live.max()) if live.shape[0] else 0


def _allocator_pages(machine: Machine) -> int:
    """Pages the allocator starts with: RAM minus the memblock reservations."""
    total = machine.total_ram_pages()
    reserved = sum(max(0, (e >> 12) - (s >> 12)) for s, e in machine.reserved)
    return max(total - reserved - 256, 1)


def write(gen: Generated, f, groups: bool = True) -> int:
    """The trace as bytes to binary file `f`; returns bytes written."""
    from .writer import Templates, write_rows

    head = gen.header.encode()
    f.write(head)
    n = len(head)
    tm = Templates(groups)
    pos = 0
    for at, text in gen.inserts + [(len(gen.op), b"")]:
        n += write_rows(f, gen.op[pos:at], gen.handle[pos:at], gen.b[pos:at], gen.c[pos:at], tm)
        f.write(text)
        n += len(text)
        pos = at
    return n
