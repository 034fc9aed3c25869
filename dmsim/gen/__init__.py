"""Workload generators (`dmsim gen`): native traces of events by handle.

A scenario (dmsim/configs/scenarios/*.yaml) names a machine and the workloads that
run on it; the generator turns it into the native format's `page_alloc` /
`page_free` / `vmalloc` / `vfree` / `set_memory` lines, which the simulated
allocator places when the trace is replayed (docs/design-simulated-placement.md).
Why generated traces at all: real recordings are small and few, and the
question SPEC section 5 asks -- how many direct-map splits a workload causes --
depends on where its pages land, which depends on everything else the system
allocates. Generators give that background at any size, reproducibly.

Modules, one job each:
  scenario.py   load and check a scenario YAML (includes, every key checked)
  dist.py       the distributions a scenario may name (lognormal, choice, ...)
  rows.py       the event rows every workload appends to; their line templates
  writer.py     rows -> text lines (numba), the header, gzip
  boot.py       allocations before system_running, the boot-time BPF pack
  kernel_calls.py  the kernel image's own boot-time CPA calls, from a recorded boot
  background.py anonymous/page-cache/slab churn and pipe bursts
  modules.py    Linux 6.1 module load and unload (module sizes from Debian's .ko)
  bpf.py        BPF programs (bpf_prog_pack or one allocation each), trampolines, kprobes
  secretmem.py  memfd_secret processes
  generate.py   puts it together: timeline, merge, handles, memory check

Determinism: one seed gives the same bytes (every component draws from its own
generator, seeded by the seed and the component's name; sorting is stable).
"""
