"""Regenerate traces/README.md: one line per shipped trace, with the kernel's
final counters and how dmsim's replay compares (make traces-readme)."""

from __future__ import annotations

import glob
import os
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dmsim.load import load_trace  # noqa: E402
from dmsim.report.result import build_result  # noqa: E402
from dmsim.simulate import simulate  # noqa: E402

HEAD = """# Shipped traces

Regenerate this file with `make traces-readme`.

## traces/real/: recorded on a real Linux 6.1 kernel

Debian's `linux-image-6.1.0-56-amd64` (6.1.192-2) booted under qemu (TCG), traced
from boot per the recording contract (SPEC section 6). The two `*-modules-bpf-secretmem`
traces are the reference recordings from `shared/real-traces/`; the others are made by
`make record-real` from `configs/record/<name>.yaml` (record/README.md). Each recording
differs from the last (KASLR), so re-recording changes these files.

Counters are the kernel's at the trace's last checkpoint (DirectMap in kB).
"replay" is `dmsim replay --verify`: checkpoints matched, and the DirectMap offset
that stays from boot on (the boot-time BPF pack, see README.md).

| trace | what | L2 splits | L3 splits | DirectMap4k | DirectMap2M | DirectMap1G | replay |
|---|---|---|---|---|---|---|---|
"""


def describe(name: str) -> str:
    cfg = os.path.join(ROOT, "configs", "record", name.replace(".trace.gz", ".yaml"))
    if os.path.exists(cfg):
        with open(cfg) as f:
            return (yaml.safe_load(f) or {}).get("description", "")
    return "reference recording (shared/real-traces/)"


def main() -> None:
    rows = []
    for path in sorted(glob.glob(os.path.join(ROOT, "traces", "real", "*.trace.gz"))):
        name = os.path.basename(path)
        res = build_result(simulate(load_trace(path)))
        last = {}
        for c in res.checks:
            last[c.counter] = c.kernel
        offset = {c.counter: c.kernel - c.simulated for c in res.checks
                  if c.counter.startswith("DirectMap")}
        first_4k = next((c.kernel - c.simulated for c in res.checks if c.counter == "DirectMap4k"), 0)
        ok = sum(c.match for c in res.checks)
        rows.append(f"| {name} | {describe(name)} | {last.get('direct_map_level2_splits', '-')} | "
                    f"{last.get('direct_map_level3_splits', '-')} | {last.get('DirectMap4k', '-')} | "
                    f"{last.get('DirectMap2M', '-')} | {last.get('DirectMap1G', '-')} | "
                    f"{ok}/{len(res.checks)} match; boot offset {first_4k // 2048} x 2M"
                    f"{' + 1G' if offset.get('DirectMap1G') else ''} |")
    with open(os.path.join(ROOT, "traces", "README.md"), "w") as f:
        f.write(HEAD + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
