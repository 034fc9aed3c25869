"""`dmsim replay`: replay a trace, print counters, optionally verify checkpoints."""

from __future__ import annotations

import json
import sys

import click

from .common import (
    EXIT_FAIL,
    EXIT_NOT_VERIFIED,
    EXIT_USAGE,
    die,
    handle_errors,
    lenient_option,
    machine_option,
    stderr_console,
    trace_argument,
    warn,
)
from .diff import (
    breach_exit,
    core_policy,
    fail_on_option,
    policy_callback,
    report_breaches,
)

FORMATS = ("vmstat", "meminfo", "json", "buddyinfo", "pagetypeinfo")


@click.command()
@trace_argument
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="vmstat", show_default=True,
              help="vmstat: /proc/vmstat lines; meminfo: /proc/meminfo DirectMap lines; json; "
                   "buddyinfo, pagetypeinfo: /proc files of the simulated allocator (traces that "
                   "name allocations by handle).")
@click.option("--verify", is_flag=True,
              help="Compare with every kernel checkpoint in the trace: a table on stderr (the "
                   "--format output still goes to stdout); exit 1 on any mismatch, 4 when the "
                   "trace has no checkpoints (nothing verified).")
@lenient_option
@machine_option
@click.option("--placement", type=click.Choice(("recorded", "simulate", "shadow")),
              default="recorded", show_default=True,
              help="recorded: pages stay where the trace says; simulate: the simulated 6.1 "
                   "allocator places every traced allocation (docs/design-simulated-placement.md); "
                   "shadow: it guesses each one, is scored against the kernel's pfn, and "
                   "follows the kernel (a report of hit rates; `shadow` in --format json).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
@click.option("--policy", metavar="SPEC", callback=policy_callback,
              help="Allocation and merge policy: a name from `dmsim policies`, NAME+NAME, or a "
                   "YAML path. Default: baseline (Linux 6.1). An allocation policy needs "
                   "--placement simulate on a recorded trace.")
@fail_on_option(allow_relative=False)
@handle_errors
def replay(trace, fmt, verify, lenient, machine_path, placement, progress, policy, gates):
    """Replay TRACE (ftrace text or native; .gz/.zst/.xz; `-` for stdin)."""
    from rich.markup import escape

    from ..load import load_trace
    from ..policy import BASELINE
    from ..report.proc import meminfo_text, vmstat_text
    from ..report.result import build_result
    from ..simulate import simulate

    machine = None
    if machine_path:
        from ..machine_config import load_machine

        machine = load_machine(machine_path)
    err = stderr_console()
    t = load_trace(trace, lenient=lenient, machine=machine)
    from ..simulate import names_allocations_by_handle

    if placement == "shadow":
        if names_allocations_by_handle(t):
            die("--placement shadow scores the allocator against the kernel's pfns: it needs "
                "a recorded trace (ftrace text), and this one names allocations by handle",
                EXIT_USAGE)
        if policy is not None and policy.name != "baseline":
            raise click.BadParameter("shadow placement scores the baseline (Linux 6.1) "
                                     "allocator; drop --policy", param_hint="'--policy'")
        from ..trace.retarget import to_simulated_placement

        t = to_simulated_placement(t)
    elif placement == "simulate":
        from ..trace.retarget import to_simulated_placement

        if not names_allocations_by_handle(t):  # (if it does, it is simulated already)
            t = to_simulated_placement(t)
    elif policy is not None and policy.needs_simulated_placement \
            and not names_allocations_by_handle(t):
        raise click.BadParameter(
            f"{policy.name}: allocation policy {policy.alloc} decides where pages go; on a "
            "recorded trace it needs --placement simulate", param_hint="'--policy'")
    if fmt in ("buddyinfo", "pagetypeinfo") and not names_allocations_by_handle(t):
        die(f"--format {fmt} needs simulated placement: a trace that names allocations "
            "by handle (page_alloc, vmalloc, ...), or --placement simulate", EXIT_USAGE)
    sim_policy = core_policy(policy, names_allocations_by_handle(t),
                             lambda w: warn(err, w))
    if placement == "shadow":
        from ..simulate import shadow

        def run(prog):
            return shadow(t, prog)
    else:
        def run(prog):
            return simulate(t, prog, policy=sim_policy)
    show = err.is_terminal if progress is None else progress
    if show:
        from rich.progress import Progress

        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("replaying", total=max(len(t.events), 1))
            r = run(lambda done, total: bar.update(task, completed=done))
    else:
        r = run(None)
    res = build_result(r)
    shadow_rep = None
    if r.shadow is not None:
        from ..report.shadow import shadow_report

        shadow_rep = shadow_report(r)
    for w in res.warnings:
        warn(err, w)

    out = sys.stdout
    if fmt in ("buddyinfo", "pagetypeinfo"):
        from ..report import buddy as buddy_report

        out.write(getattr(buddy_report, fmt)(r.buddy))
    elif fmt == "json":
        doc = res.to_json()
        if r.buddy is not None:
            doc["allocator"] = r.buddy.counters()
        doc["policy"] = (policy or BASELINE).to_json()
        if shadow_rep is not None:
            doc["shadow"] = shadow_rep
        out.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    elif fmt == "meminfo":
        out.write(meminfo_text(r.counters, res.gbpages))
    else:
        if r.buddy is not None:  # /proc/vmstat order: the allocator's lines come first
            from ..report.buddy import vmstat_lines

            out.write(vmstat_lines(r.buddy))
        out.write(vmstat_text(r.counters, policy))
    if shadow_rep is not None and fmt in ("vmstat", "meminfo"):
        from ..report.shadow import shadow_text

        out.write("\n" + shadow_text(shadow_rep))
    breaches = []
    if gates:
        from ..gates import evaluate
        from ..simulate import counter_value

        name = (policy or BASELINE).name
        values = {name: {g.counter: counter_value(r.counters, g.counter) for g in gates}}
        breaches = evaluate(gates, [name], values)
        report_breaches(breaches)
    if verify:
        out.flush()  # the results first, then the verdict
        if res.checks:
            _print_verify(res, err)
        if res.incomplete:  # lost events fail a verify whether or not it has checkpoints
            err.print(f"verify: failed: {res.incomplete[0]}", markup=False)
            sys.exit(EXIT_FAIL)
        if not res.checks:
            warn(err, "--verify: the trace has no kernel checkpoints: nothing was verified")
            sys.exit(EXIT_FAIL if breaches else EXIT_NOT_VERIFIED)
        bad = res.mismatches
        if bad:
            first = bad[0]
            err.print(f"verify: {len(bad)} of {len(res.checks)} checkpoints differ; first at "
                      f"line {first.line} ({escape(first.step)}, {first.counter}: kernel "
                      f"{first.kernel}, simulated {first.simulated})")
            sys.exit(EXIT_FAIL)
        err.print(f"verify: all {len(res.checks)} checkpoints match")
    breach_exit(breaches)


def _print_verify(res, console) -> None:
    """The checkpoints table (on stderr: stdout has the --format output)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="checkpoints: kernel vs dmsim", title_justify="left")
    for col, just in (("step", "left"), ("counter", "left"), ("kernel", "right"),
                      ("simulated", "right"), ("delta", "right"), ("", "left")):
        table.add_column(col, justify=just)
    for c in res.checks:
        delta = c.simulated - c.kernel
        table.add_row(Text(c.step), c.counter, str(c.kernel), str(c.simulated),
                      f"{delta:+d}" if delta else "0",
                      ("ok" if not delta else f"ok: passed {c.window[0]}..{c.window[1]} while read")
                      if c.match else "[red]MISMATCH[/red]")
    console.print(table)
