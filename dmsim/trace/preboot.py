"""The CPA calls that start_kernel() makes before any trace can see them.

The dmsim/cpa kprobe is registered by init_kprobe_trace() at fs_initcall time,
so calls made earlier are not in the ring buffer. Booting Debian's 6.1 under
qemu with `ftrace=function ftrace_filter=__change_page_attr_set_clr
trace_options=func_stack_trace` shows which ones there are (record/README.md):

  1. idt_setup_apic_and_irq_gates() (arch/x86/kernel/idt.c), from init_IRQ():
     set_memory_ro(&idt_table, 1). idt_table is a page of .bss, so this splits
     the high-map leaf holding it and, through cpa_process_alias(), the
     direct-map leaf of its pfn.
  2. alternative_instructions() (arch/x86/kernel/alternative.c): on a machine
     whose possible CPUs are all present it frees the .smp_locks section with
     free_init_pages(): set_memory_nx() then set_memory_rw() on the high map,
     each page's direct-map alias made RW (a no-op there).
  3. init_real_mode(): set_memory_ro/x on the real-mode trampoline, below 1M
     where the direct map is 4K already: nothing to split, not modelled.
  4. ptp_classifier_init() (core_initcall) JITs a BPF filter into a fresh 2 MiB
     bpf_prog_pack whose 512 pages come from the bulk page allocator (no
     mm_page_alloc events) and are made RO one alias at a time. Where those
     pages were is not in the trace: the splits they cause are the residual
     that a replay cannot place (tests/test_real_traces.py pins it).

This module synthesises 1 and 2 from the kernel image's symbols.
"""

from __future__ import annotations

from ..core.constants import _PAGE_NX, _PAGE_RW, PAGE_SHIFT, START_KERNEL_MAP
from ..machine import KernelImage
from .events import CPAF_PRIMARY, EV_CPA

# Offsets from _text of symbols the recording contract did not always carry,
# per kernel build. A build is recognised by the offsets of the section bounds
# it does carry. Source: /proc/kallsyms of Debian's linux-image-6.1.0-56-amd64
# (6.1.192-2) booted under qemu by record/harness.py (configs/record/).
KNOWN_BUILDS = {
    # (etext, start_rodata, end_rodata, end_rodata_hpage_align, end) - _text
    (0xE01D32, 0x1000000, 0x18EB000, 0x1A00000, 0x3430000): {
        "name": "Debian 6.1.0-56-amd64 (6.1.192-2)",
        "idt_table": 0x2313000,
        "smp_locks": 0x2306000,
        "smp_locks_end": 0x230F000,
    },
}


def build_fingerprint(k: KernelImage) -> tuple[int, ...]:
    return (k.etext - k.text, k.start_rodata - k.text, k.end_rodata - k.text,
            k.end_rodata_hpage_align - k.text, k.end - k.text)


def early_symbols(k: KernelImage, kallsyms: dict[str, int]) -> tuple[dict[str, int], str]:
    """idt_table and .smp_locks bounds: from the trace, else from a known build."""
    if all(s in kallsyms for s in ("idt_table", "__smp_locks", "__smp_locks_end")):
        return ({"idt_table": kallsyms["idt_table"], "smp_locks": kallsyms["__smp_locks"],
                 "smp_locks_end": kallsyms["__smp_locks_end"]}, "trace kallsyms")
    build = KNOWN_BUILDS.get(build_fingerprint(k))
    if build is None:
        return {}, ""
    return ({s: k.text + build[s] for s in ("idt_table", "smp_locks", "smp_locks_end")},
            build["name"])


def start_kernel_calls(k: KernelImage, syms: dict[str, int], highmap_vpfn: int) -> list[tuple]:
    """(EV_CPA, vpfn, numpages, set, clr, flags) rows, in start_kernel() order,
    including the alias calls cpa_process_alias() would make."""

    def hm(vaddr: int) -> int:
        return highmap_vpfn + ((vaddr - START_KERNEL_MAP) >> PAGE_SHIFT)

    def pfn(vaddr: int) -> int:
        return k.pa(vaddr) >> PAGE_SHIFT

    rows: list[tuple] = []
    if "idt_table" in syms:  # set_memory_ro(&idt_table, 1)
        idt = syms["idt_table"] & ~0xFFF
        rows.append((EV_CPA, hm(idt), 1, 0, _PAGE_RW, CPAF_PRIMARY))
        rows.append((EV_CPA, pfn(idt), 1, 0, _PAGE_RW, 0))
    if "smp_locks" in syms:  # free_init_pages("SMP alternatives", ...)
        start, end = syms["smp_locks"], syms["smp_locks_end"]
        n = (end - start) >> PAGE_SHIFT
        if n > 0:
            rows.append((EV_CPA, hm(start), n, _PAGE_NX, 0, 0))  # NX only: no alias
            rows.append((EV_CPA, hm(start), n, _PAGE_RW, 0, CPAF_PRIMARY))
            for i in range(n):  # one alias per 4K step of the split high map
                rows.append((EV_CPA, pfn(start) + i, 1, _PAGE_RW, 0, 0))
    return rows
