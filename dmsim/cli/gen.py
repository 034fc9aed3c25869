"""`dmsim gen`: write a generated workload trace (native format, events by handle)."""

from __future__ import annotations

import contextlib
import os
import sys
import time

import click

from .common import EXIT_BAD_INPUT, EXIT_USAGE, die, handle_errors, write_output

# a bad scenario file is a usage error (EXIT_USAGE)


@click.command()
@click.argument("scenario")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=1, show_default=True,
              help="Random seed: the same seed gives the same bytes.")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Multiply the workload's length (events grow with it; live memory does not).")
@click.option("-o", "--output", required=True,
              help="Output file (`-` for stdout); a name ending in .gz is gzipped. "
                   "An existing file is not overwritten without --force.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--unmapped-tokens/--no-unmapped-tokens", "groups", default=True, show_default=True,
              help="Write `unmapped=<group>` on the allocations a policy may unmap.")
@handle_errors
def gen(scenario, seed, scale, output, force, groups):
    """Generate a trace from SCENARIO: a name in dmsim/configs/scenarios/ (boot, modules,
    bpftrace, secretmem, mix) or a path to a scenario YAML."""
    from ..gen.generate import build, write
    from ..gen.scenario import ScenarioError, load_scenario

    if output != "-" and os.path.exists(output) and not force:
        die(f"{output}: exists; not overwriting it (use --force)", EXIT_BAD_INPUT)
    t0 = time.perf_counter()
    try:
        sc = load_scenario(scenario)
        g = build(sc, seed, scale, label=scenario)
    except ScenarioError as e:
        die(str(e), EXIT_USAGE)
    if output == "-":
        write(g, sys.stdout.buffer, groups)
        sys.stdout.buffer.flush()
        nbytes = None
    else:
        nbytes = write_output(output, lambda path: _open_out(path, output.endswith(".gz")),
                              lambda f: write(g, f, groups))
    dt = time.perf_counter() - t0
    s = g.stats
    where = "stdout" if output == "-" else f"{output} ({os.path.getsize(output) / 2**20:.1f} MiB)"
    click.echo(f"wrote {s['events']:,} events to {where} in {dt:.2f} s "
               f"({s['events'] / max(dt, 1e-9) / 1e6:.2f} M events/s"
               f"{f', {nbytes / 2**20:.1f} MiB of text' if nbytes else ''}): "
               f"{s['page_allocs']:,} page allocations, {s['vmallocs']:,} vmallocs, "
               f"{s['module_loads']} module loads (+{s['boot_module_loads']} at boot), "
               f"{s['bpf_packs']} BPF packs, peak {s['peak_live_mib']} MiB allocated", err=True)


@contextlib.contextmanager
def _open_out(path: str, gz: bool):
    with open(path, "wb") as raw:
        if not gz:
            yield raw
            return
        import gzip

        # no file name and mtime 0 in the gzip header: the same seed gives the same bytes
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as f:
            yield f
