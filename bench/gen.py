"""`make bench`: `dmsim gen` speed at a scale that gives at least 10 million events.

Generates the `mix` scenario (every workload plus the background) at two small
scales to find events per unit of --scale, then at the scale that gives
--events events, timing scenario loading, generation, sorting and the text
written to a temporary file (plain: gzip is zlib's speed, not dmsim's). Prints
events/s and peak memory. Not a test: nothing asserts time.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--scenario", default="mix")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    from dmsim.gen.generate import build, write
    from dmsim.gen.scenario import load_scenario

    sc = load_scenario(a.scenario)
    small = build(sc, a.seed, 4.0)
    with open(os.devnull, "wb") as f:
        write(small, f)  # compile (or load) the numba writer outside the timing
    per_scale = max((len(build(sc, a.seed, 8.0)) - len(small)) / 4, 1.0)
    scale = 8.0 + (a.events - len(small)) / per_scale * 1.05
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gen.trace")
        while True:
            t0 = time.perf_counter()
            g = build(load_scenario(a.scenario), a.seed, scale)
            t1 = time.perf_counter()
            with open(path, "wb") as f:
                nbytes = write(g, f)
            t2 = time.perf_counter()
            if len(g) >= a.events:
                break
            scale *= a.events / len(g) * 1.05  # bursts are random: aim again
    n = len(g)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"gen: {a.scenario} --scale {scale:.1f}: {n:,} events, {nbytes / 2**20:.0f} MiB of text "
          f"in {t2 - t0:.2f} s = {n / (t2 - t0) / 1e6:.2f} M events/s "
          f"(build {t1 - t0:.2f} s, write {t2 - t1:.2f} s); peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
