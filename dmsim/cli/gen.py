"""`dmsim gen`: write a generated workload trace (native format, events by handle)."""

from __future__ import annotations

import math
import os
import time

import click

from .common import EXIT_BAD_INPUT, EXIT_USAGE, die, handle_errors

MAX_SCALE = 10_000.0  # the mix scenario at 10000: about 250 M events


def scale_callback(ctx, param, value):
    """--scale: a finite number in (0, MAX_SCALE] (nan, inf and 1e9 are not lengths)."""
    if not (math.isfinite(value) and 0 < value <= MAX_SCALE):
        raise click.BadParameter(f"{value}: give a number above 0 and at most {MAX_SCALE:g}",
                                 ctx, param)
    return value


@click.command()
@click.argument("scenario")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=1, show_default=True,
              help="Random seed: the same seed gives the same bytes.")
@click.option("--scale", type=float, default=1.0, show_default=True, callback=scale_callback,
              help="Multiply the workload's length (events grow with it; live memory does "
                   f"not): above 0, at most {MAX_SCALE:g}.")
@click.option("-o", "--output", required=True,
              help="Output file (`-` for stdout); a name ending in .gz, .zst or .xz is "
                   "compressed. An existing file is not overwritten without --force; a "
                   "symlink's target is written; directories and devices are refused.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--unmapped-tokens/--no-unmapped-tokens", "groups", default=True, show_default=True,
              help="Write `unmapped=<group>` on the allocations a policy may unmap.")
@handle_errors
def gen(scenario, seed, scale, output, force, groups):
    """Generate a trace from SCENARIO: a name in dmsim/configs/scenarios/ (boot, modules,
    bpftrace, secretmem, mix) or a path to a scenario YAML."""
    from ..gen.generate import build, write
    from ..gen.scenario import ScaleError, ScenarioError, UnknownScenario, load_scenario
    from .output import resolve_output, write_output

    out = resolve_output(output, force)  # before any work
    t0 = time.perf_counter()
    try:
        sc = load_scenario(scenario)
        g = build(sc, seed, scale, label=scenario)
    except (UnknownScenario, ScaleError) as e:  # a wrong name or --scale: usage
        die(str(e), EXIT_USAGE)
    except ScenarioError as e:  # a file the user gave that is wrong: bad input
        die(str(e), EXIT_BAD_INPUT)
    except MemoryError:
        die(f"--scale {scale:g}: {scenario} needs more memory than this machine has at "
            "that scale; lower --scale", EXIT_USAGE)
    nbytes = write_output(out, lambda f: write(g, f, groups))
    dt = time.perf_counter() - t0
    s = g.stats
    where = out.shown
    if not out.is_stream:
        where += f" ({os.path.getsize(out.path) / 2**20:.1f} MiB)"
    click.echo(f"wrote {s['events']:,} events to {where} in {dt:.2f} s "
               f"({s['events'] / max(dt, 1e-9) / 1e6:.2f} M events/s"
               f"{f', {nbytes / 2**20:.1f} MiB of text' if nbytes else ''}): "
               f"{s['page_allocs']:,} page allocations, {s['vmallocs']:,} vmallocs, "
               f"{s['module_loads']} module loads (+{s['boot_module_loads']} at boot), "
               f"{s['bpf_packs']} BPF packs, peak {s['peak_live_mib']} MiB allocated", err=True)

