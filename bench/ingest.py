"""`make bench`: ftrace ingest beside a plain C scan of the same file, and the peak
memory of a replay of 10 million events streamed through stdin.

Ingest is load_trace(): reading, hashing, decompressing, tokenising and turning
the lines into event arrays. The C yardstick (bench/limit/ftrace_scan.c, built by
`make bench` into build/ when a C compiler is there) reads the same file and
parses pfn/order and vaddr/numpages of the three event kinds, nothing else.
Figures are the best of --repeat runs (wall clock: the machine may be shared).

`python -m bench.ingest --rss 100000000` (make bench-scale) is the 100 M-event
replay: about 14 GB of ftrace text through a pipe, some minutes.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(__file__), "..")
C_SCAN = os.path.join(ROOT, "build", "ftrace_scan")
TRACES = ("traces/real/vm8g-frag-mixed.trace.gz", "traces/real/vm2g-5.10-frag-pipes.trace.gz")


def best(fn, repeat: int) -> float:
    t = 1e9
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


def c_scan(path: str, repeat: int) -> float | None:
    if not os.path.exists(C_SCAN):
        return None
    t = 1e9
    for _ in range(repeat):
        out = subprocess.run([C_SCAN, path], capture_output=True, text=True, check=True).stdout
        t = min(t, float(out.split()[3]))
    return t


def gunzip(path: str, repeat: int) -> float:
    """Plain gunzip of the file to /dev/null (the gzip tool, or zlib from Python)."""
    tool = shutil.which("gzip")
    if tool:
        return best(lambda: subprocess.run([tool, "-dc", path], stdout=subprocess.DEVNULL,
                                           check=True), repeat)
    return best(lambda: gzip.decompress(open(path, "rb").read()), repeat)


def bench_ingest(gz_path: str, repeat: int) -> None:
    from dmsim.load import load_trace

    with tempfile.TemporaryDirectory() as tmp:
        plain = os.path.join(tmp, os.path.basename(gz_path)[:-3])
        with gzip.open(gz_path, "rb") as f, open(plain, "wb") as out:
            data = f.read()
            out.write(data)
        lines, mib = data.count(b"\n"), len(data) / 2**20
        del data
        load_trace(plain)  # warm (numba's cache)
        t_plain = best(lambda: load_trace(plain), repeat)
        t_gz = best(lambda: load_trace(gz_path), repeat)
        t_c = c_scan(plain, repeat)
        t_gunzip = gunzip(gz_path, repeat)
    name = os.path.basename(gz_path)
    row = (f"ftrace ingest: {name} ({lines:,} lines, {mib:.0f} MiB): dmsim "
           f"{lines / t_plain / 1e6:.2f} M lines/s ({mib / t_plain:.0f} MiB/s)")
    if t_c is None:
        row += "; C scan: skipped (no C compiler when make bench ran)"
    else:
        row += (f"; C scan {lines / t_c / 1e6:.2f} M lines/s; dmsim/C time ratio "
                f"{t_plain / t_c:.1f}x")
    print(row)
    print(f"ftrace ingest, gz: {name}: dmsim {t_gz:.3f} s = {lines / t_gz / 1e6:.2f} M lines/s; "
          f"gunzip alone {t_gunzip:.3f} s; gz / (gunzip + plain ingest) = "
          f"{t_gz / (t_gunzip + t_plain):.2f}")


def ftrace_body(path: str) -> tuple[bytes, bytes, int]:
    """(header lines, event lines, number of events) of a real trace."""
    with gzip.open(path, "rb") as f:
        lines = f.read().split(b"\n")
    at = next(i for i, ln in enumerate(lines) if ln and not ln.startswith((b"[", b"#", b"=")))
    body = b"\n".join(ln for ln in lines[at:] if ln) + b"\n"
    return b"\n".join(lines[:at]) + b"\n", body, body.count(b"\n")


def rss_replay(n_events: int, fmt: str) -> None:
    """Peak RSS of `dmsim replay -` reading n_events events from a pipe: a real
    trace's events repeated (ftrace text, or the native text `dmsim convert` makes
    of it)."""
    src = "traces/real/vm8g-frag-mixed.trace.gz"
    head, body, per = ftrace_body(src)
    if fmt == "native":
        import io

        from dmsim.load import load_trace
        from dmsim.trace.native import EVENT_WORDS, write_native

        buf = io.StringIO()
        write_native(load_trace(src), buf)
        lines = buf.getvalue().encode().split(b"\n")
        at = next(i for i, ln in enumerate(lines) if ln.split(b" ", 1)[0].decode() in EVENT_WORDS)
        head = b"\n".join(lines[:at]) + b"\n"
        body = b"\n".join(ln for ln in lines[at:] if ln) + b"\n"
        per = body.count(b"\n")
    reps = -(-n_events // per)
    dmsim = os.path.join(os.path.dirname(sys.executable), "dmsim")
    t0 = time.perf_counter()
    proc = subprocess.Popen([dmsim, "replay", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(head)
        for _ in range(reps):
            proc.stdin.write(body)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    _, status, ru = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    mib = (len(head) + reps * len(body)) / 2**20
    print(f"replay {reps * per / 1e6:.0f} M {fmt} events from stdin ({mib:,.0f} MiB of text): "
          f"peak RSS {ru.ru_maxrss / 1024:,.0f} MiB ({ru.ru_maxrss * 1024 / (reps * per):.0f} bytes "
          f"an event), {dt:.0f} s, exit {code}" + (f": {err.strip()[-300:]}" if code else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--trace", action="append", default=None)
    ap.add_argument("--rss", type=int, action="append", default=None,
                    help="events of the stdin replay whose peak RSS is measured (default 10 M)")
    ap.add_argument("--no-ingest", action="store_true")
    a = ap.parse_args()
    if not a.no_ingest:
        for p in a.trace or TRACES:
            bench_ingest(p, a.repeat)
    for n in a.rss or [10_000_000]:
        for fmt in ("ftrace", "native"):
            rss_replay(n, fmt)


if __name__ == "__main__":
    main()
