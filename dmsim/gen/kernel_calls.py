"""The CPA calls the kernel makes on its own image during boot, taken from a recorded boot.

Between start_kernel() and system_running, Linux 6.1 changes the protections of
its own image (arch/x86/mm/init.c, init_64.c, kernel/idt.c, alternative.c):

  start_kernel()   idt_setup_apic_and_irq_gates(): set_memory_ro(&idt_table, 1);
                   alternative_instructions(): free_init_pages() of .smp_locks
                   (set_memory_nx, then set_memory_rw with one alias call a page)
  kernel_init()    free_initmem(): mem_encrypt_free_decrypted_mem() frees
  (after the       .bss..decrypted's unused part and free_kernel_image_pages()
  initcalls)       frees __init_begin..__init_end (set_memory_nx + _rw, aliases);
                   mark_rodata_ro(): set_memory_ro(_text .. __end_rodata_hpage_align)
                   with one alias call per 2M, kernel_set_to_readonly = 1,
                   set_memory_nx(_etext .. roundup(_brk_end, 2M)), then
                   free_kernel_image_pages() of the text/rodata and rodata/data gaps

They split high-map leaves and the direct-map leaves of the image's pfns, and they
are most of a booted guest's DirectMap4k. Rather than re-deriving them from the
kernel source, `extract()` copies them out of a real boot recorded on the same
kernel build (the dmsim/cpa kprobe records every call from fs_initcall on, and
the ftrace reader synthesises start_kernel()'s earlier ones: dmsim/trace/preboot.py),
so they are exactly the calls that kernel made, in its order. The result is a
small native trace (dmsim/configs/scenarios/data/kernel-boot-*.trace):

    python -m dmsim.gen.kernel_calls traces/real/vm2g-modules.trace.gz \
        -o dmsim/configs/scenarios/data/kernel-boot-qemu-2g.trace

All 13 recordings in traces/real/ (2, 4 and 8 GiB, with and without gbpages) give
the same 2038 calls relative to the image (high-map offsets from _text, pfns from
__pa(_text)): only KASLR's placement differs. The shipped files come from the
recordings whose placement the scenario machines use: vm2g-modules (_base.yaml's
machine) and vm8g-boot.

What is kept, and why (SPEC section 2; docs/kernel-notes.md):
  - every call on the high map (the kernel image's own mapping), and every
    direct-map call whose pages are the image's, [__pa(_text), __pa(_end)): the
    alias calls of the above. These depend only on the kernel build and where
    KASLR put it, which is why a data file applies only to a machine with the
    same kernel bounds (and e820).
  - `kernel_ro` where the recording has it (after mark_rodata_ro()'s
    set_memory_ro and its aliases, dmsim/trace/ftrace.py).
What is left out (each call is listed in the file's header), and why:
  - direct-map calls on other memory. In the recorded 6.1 boots these are
    free_initrd_mem()'s free_init_pages() of the initrd (set_memory_nx, then
    set_memory_rw): bits the direct map already has, so they split nothing (a
    large leaf whose protection does not change is kept) -- and a generated
    trace has no initrd: those pages belong to its own allocations, which such
    a call must not touch.
  - calls on vmalloc addresses (`vcpa`) and their direct-map alias calls. In the
    recorded boots the only one is set_ftrace_ops_ro() (from mark_rodata_ro())
    making the ftrace trampoline of the recorder's own kprobe read-only: the
    kprobe on __change_page_attr_set_clr is an ftrace kprobe, and registering it
    at fs_initcall allocates its trampoline with module_alloc(). A boot without
    the recorder has no such trampoline. (The alias split it causes in the
    recording lands on a vmalloc page the generator would place elsewhere anyway.)
  - page allocations and frees: the generator models boot's allocations itself
    (boot.early, the boot BPF pack; dmsim/gen/boot.py, bpf.py).
The header says, for each left-out call, what it would change if the kept calls
were replayed with it, and what replaying the recorded boot (every call) and the
file alone give at system_running, so what leaving them out costs is measured each
time a file is made: in the 6.1 recordings the initrd's calls change nothing, and
the trampoline's alias call splits the one 2M leaf holding its page (on the 8 GiB
guest, the 1G leaf above it as well).

The file is a native trace of its own (`dmsim replay FILE` gives the image-only
DirectMap at system_running). Two comment lines divide its events: `# @start_kernel`
(before the first page event of the recording: the synthesised start_kernel()
calls) and `# @kernel_init` (the rest, from free_initmem() on). The generator
(generate.py) writes the first group before every other event and the second,
with its `kernel_ro`, just before `system_running`.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import sys
from dataclasses import dataclass

from ..machine import Machine

DATA_GLOB = "data/kernel-boot-*.trace"  # relative to dmsim/configs/scenarios/
START_KERNEL = "# @start_kernel"
KERNEL_INIT = "# @kernel_init"
_COUNTERS = ("DirectMap4k", "DirectMap2M", "DirectMap1G")


# ------------------------------------------------------------------ extraction

def _cpa_line(space: str, first: int, n: int, ms: int, mc: int, fl: int) -> str:
    from ..trace.events import CPAF_FORCE_SPLIT, CPAF_PRIMARY

    return (f"cpa {space} {first:#x} {n} set={ms:#x} clr={mc:#x}"
            + (" primary" if fl & CPAF_PRIMARY else "")
            + (" force_split" if fl & CPAF_FORCE_SPLIT else ""))


def _replay(machine: Machine, rows: list[tuple]) -> tuple[int, ...]:
    """DirectMap4k/2M/1G (kB) after replaying event `rows` on `machine`."""
    from ..simulate import counter_value, simulate
    from ..trace.events import EventBuilder, Trace

    b = EventBuilder(len(rows) + 1)
    for row in rows:
        b.append(*row)
    r = simulate(Trace(machine=machine, events=b.finish()))
    return tuple(counter_value(r.counters, c) for c in _COUNTERS)


def _kb(v: tuple[int, ...]) -> str:
    return " / ".join(str(x) for x in v) + " kB"


def extract(path: str, command: str | None = None) -> str:
    """The data file's text for the recorded boot `path` (ftrace or native)."""
    import numpy as np

    from ..core.constants import PAGE_SHIFT, PMD_PAGES, START_KERNEL_MAP
    from ..load import load_trace
    from ..trace.events import (
        CPAF_PRIMARY,
        EV_ALLOC,
        EV_CHECKPOINT,
        EV_CPA,
        EV_FREE,
        EV_KERNEL_RO,
        EV_SYSTEM_RUNNING,
        EV_VCPA,
    )
    from .writer import header

    trace = load_trace(path)
    m = trace.machine
    k = m.kernel
    if k is None:
        raise ValueError(f"{path}: no kernel image bounds (kallsyms markers): cannot tell "
                         "the image's calls from others")
    ev = trace.events
    running = np.flatnonzero(ev.kind == EV_SYSTEM_RUNNING)
    if not len(running):
        raise ValueError(f"{path}: no system_running marker")
    end = int(running[0])
    hm = m.highmap_vpfn()
    # the image's pfns, and its high map up to the 2M leaf holding _end (mark_rodata_ro's
    # all_end = roundup(_brk_end, PMD_SIZE))
    img_lo, img_hi = k.pa(k.text) >> PAGE_SHIFT, -(-k.pa(k.end) >> PAGE_SHIFT)
    hm_lo = hm + ((k.text - START_KERNEL_MAP) >> PAGE_SHIFT)
    hm_hi = hm + -(-((k.end - START_KERNEL_MAP) >> PAGE_SHIFT) // PMD_PAGES) * PMD_PAGES

    early: list[str] = []  # before the recording's first page event: start_kernel()
    late: list[str] = []
    kept: list[tuple] = []  # event rows
    other: list[tuple[int, str, tuple | None]] = []  # (position among kept, line, row)
    every: list[tuple] = []  # the recorded boot's CPA, page and kernel_ro events
    n_pages = 0
    cols = [c[:end].tolist() for c in ev.columns()]
    for row in zip(*cols, strict=True):
        kind, a0, a1, ms, mc, fl = row
        if kind in (EV_ALLOC, EV_FREE):
            n_pages += 1
            every.append(row)
            continue
        out = late if n_pages else early
        if kind == EV_CPA:
            every.append(row)
            if a0 >= hm:
                line = _cpa_line("highmap", a0 - hm, a1, ms, mc, fl)
                mine = hm_lo <= a0 and a0 + a1 <= hm_hi
            else:
                line = _cpa_line("direct", a0, a1, ms, mc, fl)
                mine = img_lo <= a0 and a0 + a1 <= img_hi
            if mine:
                out.append(line)
                kept.append(row)
            else:
                other.append((len(kept), line, row))
        elif kind == EV_VCPA:  # not applied by a replay: its alias calls do the work
            other.append((len(kept), f"vcpa {a0:#x} {a1} set={ms:#x} clr={mc:#x}"
                          + (" primary" if fl & CPAF_PRIMARY else ""), None))
        elif kind == EV_KERNEL_RO:
            out.append("kernel_ro")
            kept.append(row)
            every.append(row)
        elif kind != EV_CHECKPOINT:
            raise ValueError(f"{path}: unexpected event kind {kind} before system_running")
    sr = (EV_SYSTEM_RUNNING, 0, 0, 0, 0, 0)
    with_all = _replay(m, every + [sr])
    kept_only = _replay(m, kept + [sr])
    left_out = []
    for at, line, row in other:
        if row is None:
            effect = "a vmalloc address: a replay applies its alias calls, not it"
        else:
            alone = _replay(m, kept[:at] + [row] + kept[at:] + [sr])
            d = [x - y for x, y in zip(alone, kept_only, strict=True)]
            effect = "changes nothing" if not any(d) else "with the kept calls: " + ", ".join(
                f"{c} {x:+d} kB" for c, x in zip(_COUNTERS, d, strict=True) if x)
        left_out.append(f"  {line}   ({effect})")
    # the kernel's own values at the first checkpoints after system_running, when no
    # CPA call comes between (else they are not the boot's)
    kernel_vals: dict[str, int] = {}
    cp_pos = {int(ev.arg0[j]): int(j) for j in np.flatnonzero(ev.kind == EV_CHECKPOINT)}
    later_cpa = np.flatnonzero(ev.kind[end:] == EV_CPA)
    next_cpa = end + int(later_cpa[0]) if len(later_cpa) else len(ev)
    for cp in trace.checkpoints:
        if cp.counter in _COUNTERS and cp.counter not in kernel_vals \
                and end < cp_pos.get(cp.index, -1) < next_cpa:
            kernel_vals[cp.counter] = cp.value

    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    n_ro = (early + late).count("kernel_ro")
    comments = [
        "Linux's CPA calls on its own kernel image from start_kernel() to system_running,",
        "for `dmsim gen` (the scenarios' boot.kernel_calls): dmsim/gen/kernel_calls.py says",
        "what is kept and left out, and why.",
        f"source: {path} (sha256 {digest})",
        f"made by: {command or 'python -m dmsim.gen.kernel_calls ' + path}",
        f"kept: {len(kept) - n_ro} calls on the kernel image (high map, and direct-map pfns "
        f"[{img_lo:#x}, {img_hi:#x})) and kernel_ro, in recorded order; "
        f"{len(early)} in start_kernel() (synthesised: dmsim/trace/preboot.py)",
        f"left out: {n_pages} page allocations/frees and {len(other)} calls on other memory:",
        *left_out,
        "  (in the recorded 6.1 boots: free_initrd_mem()'s set_memory_nx/_rw on the initrd,",
        "  and set_ftrace_ops_ro() on the recorder's own kprobe trampoline, a vcpa and its",
        "  alias call: kernel_calls.py says why they are left out)",
        "DirectMap4k / 2M / 1G at system_running:",
        f"  replay of the recorded boot (all its calls):  {_kb(with_all)}",
        f"  replay of this file (the kept calls alone):   {_kb(kept_only)}",
    ]
    if len(kernel_vals) == len(_COUNTERS):
        comments.append(f"  the kernel's own (first checkpoint):         "
                        f"{_kb(tuple(kernel_vals[c] for c in _COUNTERS))}"
                        "   (adds the boot BPF pack's splits no trace sees: README.md)")
    body = [START_KERNEL, *early, KERNEL_INIT, *late, "system_running"]
    return header(m, comments) + "".join(ln + "\n" for ln in body)


# ------------------------------------------------------------------ use by the generator

@dataclass
class KernelCalls:
    """A data file: its machine and the native lines of its two groups."""

    path: str
    machine: Machine
    early: str  # text of the start_kernel() lines
    late: str  # text of the kernel_init() lines, kernel_ro among them
    events: int

    def matches(self, m: Machine) -> str | None:
        """None when `m` is this file's machine; else why not."""
        if m.kernel is None:
            return "the machine has no kernel image (`kernel:`)"
        if m.kernel != self.machine.kernel:
            return "its kernel image bounds (`kernel:`) differ"
        if sorted(m.e820) != sorted(self.machine.e820):
            return "its e820 map differs"
        return None


_cache: dict[tuple[str, float], KernelCalls] = {}


def load(path: str) -> KernelCalls:
    """Read and check a data file (parse_native checks every line)."""
    from ..trace.events import EV_CPA, EV_KERNEL_RO
    from ..trace.native import parse_native

    key = (os.path.abspath(path), os.path.getmtime(path))
    if key in _cache:
        return _cache[key]
    with open(path, encoding="utf-8") as f:
        text = f.read()
    trace = parse_native(text, path)
    lines = text.split("\n")
    if lines.count(START_KERNEL) != 1 or lines.count(KERNEL_INIT) != 1:
        raise ValueError(f"{path}: expected one `{START_KERNEL}` and one `{KERNEL_INIT}` line")
    a, b = lines.index(START_KERNEL), lines.index(KERNEL_INIT)
    if not a < b:
        raise ValueError(f"{path}: `{START_KERNEL}` must come before `{KERNEL_INIT}`")

    def events(part: list[str]) -> str:
        keep = [ln for ln in part if ln.startswith(("cpa ", "kernel_ro"))]
        return "".join(ln + "\n" for ln in keep)

    early, late = events(lines[a + 1:b]), events(lines[b + 1:])
    n = early.count("\n") + late.count("\n")
    kinds = trace.events.kind
    if n != int(((kinds == EV_CPA) | (kinds == EV_KERNEL_RO)).sum()):
        raise ValueError(f"{path}: events other than cpa and kernel_ro lines")
    if late.count("kernel_ro\n") != 1 or "kernel_ro" in early:
        raise ValueError(f"{path}: expected one kernel_ro, after `{KERNEL_INIT}`")
    kc = KernelCalls(path, trace.machine, early, late, n)
    _cache[key] = kc
    return kc


def choose(machine: Machine, paths: list[str]) -> tuple[KernelCalls | None, str]:
    """The data file for `machine` among `paths`, and a line saying which or why none."""
    if not paths:
        return None, "kernel boot calls: none (boot.kernel_calls is empty)"
    why = []
    for p in paths:
        kc = load(p)
        problem = kc.matches(machine)
        if problem is None:
            return kc, f"kernel boot calls: {_rel(p)} ({kc.events} events)"
        why.append(f"{_rel(p)}: {problem}")
    return None, ("kernel boot calls: none written, no data file is for this machine ("
                  + "; ".join(why) + "): the boot lacks mark_rodata_ro(), free_initmem() "
                  "and the IDT's splits")


def default_paths() -> list[str]:
    from .scenario import SCENARIO_DIR

    return sorted(glob.glob(os.path.join(SCENARIO_DIR, DATA_GLOB)))


def _rel(p: str) -> str:
    """A data file's name for the trace header: from the dmsim package directory when
    it is in it (configs/scenarios/data/...: the same bytes whatever the current
    directory, and wherever dmsim is installed), else as given."""
    from .scenario import SCENARIO_DIR

    root = os.path.dirname(os.path.dirname(SCENARIO_DIR))
    try:
        r = os.path.relpath(os.path.abspath(p), root)
    except ValueError:
        return p
    return p if r.startswith("..") else r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m dmsim.gen.kernel_calls",
        description="Write the kernel image's boot-time CPA calls of a recorded boot "
                    "as a native trace (dmsim/configs/scenarios/data/kernel-boot-*.trace).")
    ap.add_argument("trace", help="a recorded boot (traces/real/*.trace.gz)")
    ap.add_argument("-o", "--output", required=True, help="the data file to write (- for stdout)")
    a = ap.parse_args(argv)
    cmd = f"python -m dmsim.gen.kernel_calls {a.trace} -o {a.output}"
    text = extract(a.trace, cmd)
    if a.output == "-":
        sys.stdout.write(text)
    else:
        with open(a.output, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
