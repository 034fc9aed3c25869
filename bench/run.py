"""`make bench`: CPA events/s of the numba core and end-to-end trace replay.

Prints events/s and peak memory (ru_maxrss). Not a test: nothing asserts time.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def gen_cpa_stream(n: int, machine, seed: int = 1, local: bool = True):
    """n CPA calls. local=True is shaped like the real traces: bursts of 1-page
    alias calls over runs of consecutive pfns (a module's or BPF pack's vmalloc
    pages made RO, later RW again; secretmem pages made invalid then valid),
    at random places in RAM. local=False scatters single pages uniformly over
    RAM: the worst case for caches."""
    from dmsim.core import constants as C
    from dmsim.trace.events import CPAF_PRIMARY, EV_CPA, EventArrays

    rng = np.random.default_rng(seed)
    ram = machine.ram_ranges()
    starts = np.array([(s + 4095) >> 12 for s, _ in ram])
    ends = np.array([e >> 12 for _, e in ram])
    sizes = ends - starts
    big = sizes > 4096
    starts, sizes = starts[big], sizes[big]
    if local:
        runs = []
        total = 0
        while total < n:
            k = rng.integers(len(starts))
            length = int(rng.integers(8, 257))
            base = starts[k] + int(rng.integers(0, sizes[k] - length))
            runs.append((base, length))
            total += 2 * length
        vpfn = np.concatenate([np.concatenate([np.arange(b, b + ln), np.arange(b, b + ln)])
                               for b, ln in runs])[:n].astype(np.int64)
        which_half = np.concatenate([np.repeat([0, 1], ln) for _, ln in runs])[:n]
        numpages = np.ones(n, np.int64)
    else:
        which = rng.choice(len(starts), size=n, p=sizes / sizes.sum())
        vpfn = starts[which] + (rng.random(n) * (sizes[which] - 16)).astype(np.int64)
        which_half = rng.integers(0, 2, n)
        numpages = np.where(rng.random(n) < 0.9, 1, rng.integers(2, 16, n)).astype(np.int64)
    masks = np.array([C._PAGE_RW, C._PAGE_PRESENT | C._PAGE_RW], np.uint64)
    m = masks[(rng.random(n) < 0.3).astype(np.int64)]  # 30% set_direct_map_* pairs
    ev = EventArrays(
        kind=np.full(n, EV_CPA, np.uint8), arg0=vpfn, arg1=numpages,
        mask_set=np.where(which_half == 1, m, np.uint64(0)).astype(np.uint64),
        mask_clr=np.where(which_half == 1, np.uint64(0), m).astype(np.uint64),
        flags=np.full(n, CPAF_PRIMARY, np.int32))
    return ev


def bench_core(n: int, local: bool) -> None:
    from dmsim.core.api import replay
    from dmsim.core.layout import init_mem_mapping
    from dmsim.machine import Machine
    from dmsim.trace.events import EV_SYSTEM_RUNNING

    machine = Machine(e820=[(0x1000, 0x9FC00, 1), (0x100000, 0xC0000000, 1),
                            (0x100000000, 0x440000000, 1)])  # a 16 GiB box
    ev = gen_cpa_stream(n, machine, local=local)
    ev.kind[0] = EV_SYSTEM_RUNNING
    warm = init_mem_mapping(machine)
    replay(warm, tuple(c[:1000] for c in ev.columns()), 0)  # JIT (or load the cache)
    st = init_mem_mapping(machine)
    t0 = time.perf_counter()
    replay(st, ev.columns(), 0)
    dt = time.perf_counter() - t0
    shape = "bursts of consecutive pages" if local else "single pages scattered over RAM"
    print(f"core: {n:,} CPA calls ({shape}) on a 16 GiB machine: {dt:.2f} s = "
          f"{n / dt / 1e6:.2f} M events/s ({int(st.counters[3])} 2M splits, "
          f"{int(st.counters[4])} 1G splits)")


def bench_trace(path: str, repeat: int) -> None:
    from dmsim.load import load_trace
    from dmsim.simulate import simulate

    simulate(load_trace(path))  # warm
    t0 = time.perf_counter()
    for _ in range(repeat):
        t = load_trace(path)
    t1 = time.perf_counter()
    for _ in range(repeat):
        simulate(t)
    t2 = time.perf_counter()
    n = len(t.events) * repeat
    print(f"trace: {path}: {len(t.events):,} events; read+parse {n / (t1 - t0) / 1e6:.2f} M events/s, "
          f"replay {n / (t2 - t1) / 1e6:.2f} M events/s, end-to-end {n / (t2 - t0) / 1e6:.2f} M events/s")


def bench_recorded_placement(path: str, repeat: int) -> None:
    """--placement simulate and shadow of a recorded trace: retarget (with its
    recorded-placement replay for the table pages), then the placement loop."""
    from dmsim.load import load_trace
    from dmsim.simulate import shadow, simulate
    from dmsim.trace.retarget import to_simulated_placement

    t = load_trace(path)
    s = to_simulated_placement(t)
    simulate(s), shadow(s)  # warm
    t0 = time.perf_counter()
    for _ in range(repeat):
        s = to_simulated_placement(t)
    t1 = time.perf_counter()
    for _ in range(repeat):
        simulate(s)
    t2 = time.perf_counter()
    for _ in range(repeat):
        shadow(s)
    t3 = time.perf_counter()
    n = len(s.events) * repeat
    print(f"recorded placement: {path}: {len(s.events):,} events; retarget "
          f"{n / (t1 - t0) / 1e6:.2f} M events/s, simulate {n / (t2 - t1) / 1e6:.2f} M events/s, "
          f"shadow {n / (t3 - t2) / 1e6:.2f} M events/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--trace", action="append",
                    default=None, help="real trace(s) for the end-to-end figure")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--gen-scale", type=float, default=10.0,
                    help="--scale of the generated trace the native reader parses")
    a = ap.parse_args()
    bench_core(a.events, local=True)
    bench_core(a.events, local=False)
    for policy in bench_policies():
        bench_placement(a.events, policy)
    bench_1tib()
    bench_gen_parse(a.gen_scale)
    import os
    import tempfile

    from dmsim.load import load_trace
    from dmsim.trace.native import write_native

    with tempfile.TemporaryDirectory() as tmp:
        for p in a.trace or ["traces/real/vm2g-modules-bpf-secretmem.trace.gz",
                             "traces/real/vm4g-modules-bpf-secretmem.trace.gz",
                             "traces/real/vm2g-bpftrace.trace.gz"]:
            if not os.path.exists(p):
                continue
            bench_trace(p, a.repeat)
            native = os.path.join(tmp, os.path.basename(p).replace(".gz", ".native"))
            with open(native, "w") as f:
                write_native(load_trace(p), f)
            bench_trace(native, a.repeat)
        bench_recorded_placement("traces/real/vm2g-frag-pipes.trace.gz", a.repeat)
    print(f"peak memory (ru_maxrss): {peak_rss_mib():.0f} MiB")



def bench_policies() -> list[str]:
    """Every policy file in dmsim/configs/policies/; a parameters-only file (it sets
    neither an allocation nor a merge policy) with migrate_unmapped, whose parameters
    it sets."""
    from dmsim.policy import POLICY_DIR, is_parameters, policy_names

    return [f"migrate_unmapped+{name}" if is_parameters(POLICY_DIR, name) else name
            for name in policy_names()]


def bench_placement(n: int, policy: str = "baseline") -> None:
    """Simulated placement: n alloc/free events by handle on a 16 GiB machine; a
    tenth of the allocations are secretmem's (__GFP_UNMAPPED under a policy)."""
    from dmsim.core.api import place
    from dmsim.core.buddy import buddy_from_machine
    from dmsim.core.layout import init_mem_mapping
    from dmsim.machine import Machine
    from dmsim.trace.events import EV_H_ALLOC, EV_H_FREE, EventArrays

    rng = np.random.default_rng(2)
    machine = Machine(e820=[(0x1000, 0x9FC00, 1), (0x100000, 0xC0000000, 1),
                            (0x100000000, 0x440000000, 1)])
    live = 200_000  # handle slots, reused round robin
    lag = live // 2  # each allocation is freed lag allocations later: ~lag blocks in use
    j = np.arange((n + lag) // 2 + 1)
    allocs = np.stack([np.full(len(j), EV_H_ALLOC), j % live], axis=1)
    frees = np.stack([np.full(len(j), EV_H_FREE), (j - lag) % live], axis=1)
    rows = np.stack([allocs, frees], axis=1).reshape(-1, 2)
    rows = np.delete(rows, np.arange(lag) * 2 + 1, axis=0)[:n]  # no frees before their allocs
    n = len(rows)
    kind, h = rows[:, 0].astype(np.uint8), rows[:, 1]
    order = np.where(rng.random(n) < 0.8, 0, rng.integers(1, 4, n))
    mt = rng.choice(np.array([0, 1, 2]), size=n, p=[0.3, 0.6, 0.1])
    ev = EventArrays(kind=kind, arg0=h.astype(np.int64), arg1=order.astype(np.int64),
                     mask_set=np.zeros(n, np.uint64), mask_clr=np.zeros(n, np.uint64),
                     flags=(mt | 2 << 8 | np.where(rng.random(n) < 0.1, 1, 0) << 12
                            ).astype(np.int32))
    from dmsim.policy import load_policy

    pol = load_policy(policy)
    for k in (1, 0):  # warm-up (JIT or cache load), then the measured run
        m = 2000 if k else n
        st, buddy = init_mem_mapping(machine), buddy_from_machine(machine)
        t0 = time.perf_counter()
        place(st, buddy, tuple(c[:m] for c in ev.columns()), 0, live, 0, policy=pol)
        dt = time.perf_counter() - t0
    pages = machine.total_ram_pages()
    print(f"placement ({policy}): {n:,} alloc/free events by handle on a 16 GiB machine: "
          f"{dt:.2f} s = "
          f"{n / dt / 1e6:.2f} M events/s; allocator state {buddy.bytes_per_page():.1f} "
          f"bytes/page ({pages:,} pages); {buddy.stat('alloc_fail')} failed")


def bench_gen_parse(scale: float, repeat: int = 3) -> None:
    """The native reader on a generated trace (`dmsim gen mix`: events by handle),
    from a .gz file (gunzip included) and from its text (parse alone); and the
    per-line Python reader alone (native._FAST off) on its first 200,000 lines."""
    import gzip
    import io

    from dmsim.gen.generate import build, write
    from dmsim.gen.scenario import load_scenario
    from dmsim.trace import native

    buf = io.BytesIO()
    write(build(load_scenario("mix"), 1, scale), buf)
    text = buf.getvalue()
    packed = gzip.compress(text, 6)
    native.parse_native(text[:100_000].rsplit(b"\n", 1)[0], "warm")  # JIT (or load the cache)
    best = {"gz": 1e9, "text": 1e9}
    for _ in range(repeat):
        t0 = time.perf_counter()
        data = gzip.decompress(packed)
        t = native.parse_native(data, "gen.trace.gz")
        t1 = time.perf_counter()
        native.parse_native(text, "gen.trace")
        t2 = time.perf_counter()
        best["gz"], best["text"] = min(best["gz"], t1 - t0), min(best["text"], t2 - t1)
    n, lines = len(t.events), text.count(b"\n")
    cut = 0
    for _ in range(min(200_000, lines)):
        cut = text.index(b"\n", cut) + 1
    native._FAST = False
    try:
        t0 = time.perf_counter()
        slow = native.parse_native(text[:cut], "gen.trace")
        dt_slow = time.perf_counter() - t0
    finally:
        native._FAST = True
    print(f"native reader, generated trace (mix --scale {scale:g}: {lines:,} lines, {n:,} events, "
          f"{len(text) / 2**20:.0f} MiB): parse {n / best['text'] / 1e6:.2f} M events/s, "
          f"gunzip+parse {n / best['gz'] / 1e6:.2f} M events/s; Python path alone "
          f"{len(slow.events) / dt_slow / 1e6:.2f} M events/s")


def bench_1tib(n: int = 1_000_000) -> None:
    """dmsim/configs/machines/1tib.yaml with simulated placement: memory, not speed."""
    from dmsim.machine_config import load_machine
    from dmsim.simulate import simulate
    from dmsim.trace.events import EV_H_ALLOC, EV_H_FREE, EventArrays, Trace

    m = load_machine("dmsim/configs/machines/1tib.yaml")
    rng = np.random.default_rng(3)
    kind = np.empty(n, np.uint8)
    kind[0::2], kind[1::2] = EV_H_ALLOC, EV_H_FREE
    a0 = (np.arange(n) // 2 % 50000).astype(np.int64)
    a0[1::2] = (np.arange(n // 2) - 20000) % 50000  # free what was allocated 20000 steps ago
    kind[1:40000:2] = EV_H_ALLOC  # (nothing to free yet: allocate instead)
    a0[1:40000:2] = 40000 + np.arange(len(a0[1:40000:2]))
    ev = EventArrays(kind=kind, arg0=a0, arg1=np.where(rng.random(n) < 0.8, 0, 2).astype(np.int64),
                     mask_set=np.zeros(n, np.uint64), mask_clr=np.zeros(n, np.uint64),
                     flags=np.full(n, 2 << 8, np.int32))
    t0 = time.perf_counter()
    r = simulate(Trace(machine=m, events=ev, meta={"handles": 70000, "vmalloc_pages": 0}))
    dt = time.perf_counter() - t0
    print(f"1 TiB machine ({m.total_ram_pages():,} pages), {n:,} alloc/free events: {dt:.1f} s "
          f"(boot state included); allocator {r.buddy.bytes_per_page():.1f} bytes/page; "
          f"peak RSS so far {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
