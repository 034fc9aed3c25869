"""`dmsim diff`: one trace, several policies, one LKP-style comparison table."""

from __future__ import annotations

import json
import sys

import click

from .common import (
    EXIT_BAD_INPUT,
    EXIT_FAIL,
    die,
    handle_errors,
    lenient_option,
    machine_option,
    stderr_console,
    trace_argument,
    warn,
)


def policy_callback(ctx, param, value):
    """--policy SPEC: load it now, before any work. A wrong spec (an unknown name, two
    allocation policies) is a usage error (exit 2); a policy file that is missing or
    malformed is bad input (exit 3), as every file the user gives."""
    from ..policy import PolicyError, PolicyFileError, load_policy

    if value is None:
        return None
    specs = value if isinstance(value, tuple) else (value,)
    out = []
    for spec in specs:
        try:
            out.append(load_policy(spec))
        except PolicyFileError as e:
            die(str(e), EXIT_BAD_INPUT)
        except PolicyError as e:
            raise click.BadParameter(str(e), ctx, param) from None
    return tuple(out) if isinstance(value, tuple) else out[0]


def gates_callback(allow_relative: bool):
    def callback(ctx, param, value):
        from ..gates import GateError, parse_gate
        from ..simulate import REPORT_COUNTERS

        try:
            return tuple(parse_gate(v, REPORT_COUNTERS, allow_relative) for v in value)
        except GateError as e:
            raise click.BadParameter(str(e), ctx, param) from None

    return callback


def fail_on_option(allow_relative: bool):
    what = ("NUMBER is absolute; +N, -N, +N%, -N% are changes against the first policy "
            "(absolute gates apply to every policy, relative ones to all but the first)"
            if allow_relative else "absolute thresholds only")
    return click.option(
        "--fail-on", "gates", multiple=True, metavar="EXPR", callback=gates_callback(allow_relative),
        help=f"Exit 1 when COUNTER OP THRESHOLD holds (OP: > >= < <= == !=), e.g. "
             f"direct_map_level2_splits>0; {what}. Repeatable.")


def core_policy(policy, by_handle: bool, warn) -> object:
    """The policy simulate() runs: None for baseline. A trace that, even placed by
    the simulated allocator, has no allocation to place (no handle events) leaves
    an allocation policy nothing to do: it runs with baseline allocation, and
    warn(message) says so."""
    if policy is None or policy.is_baseline:
        return None
    if policy.needs_simulated_placement and not by_handle:
        warn(f"{policy.name}: the trace has no page allocations to place, so allocation "
             f"policy {policy.alloc} changes nothing here")
        import dataclasses

        policy = dataclasses.replace(policy, alloc="baseline")
        return None if policy.is_baseline else policy
    return policy


def report_breaches(breaches) -> None:
    """Name every breached gate on stderr."""
    for b in breaches:
        click.echo(f"dmsim: {b.message()}", err=True)


def breach_exit(breaches, report: bool = False) -> None:
    """Exit 1 when a gate was breached (naming each first when `report`)."""
    if report:
        report_breaches(breaches)
    if breaches:
        sys.exit(EXIT_FAIL)


@click.command()
@trace_argument
@click.option("--policy", "policies", multiple=True, required=True, metavar="SPEC",
              callback=policy_callback,
              help="A policy (dmsim/configs/policies/NAME, NAME+NAME, or a YAML path); give two or "
                   "more, the first is the reference. See `dmsim policies`.")
@click.option("--format", "fmt", type=click.Choice(("text", "json")), default="text",
              show_default=True, help="text: LKP-style comparison table; json.")
@click.option("--placement", type=click.Choice(("recorded", "simulate")), default=None,
              help="recorded: pages stay where the trace says (the default for a recorded "
                   "trace); simulate: the simulated 6.1 allocator places them. Every policy "
                   "runs with the same placement. A policy with an allocation policy needs "
                   "--placement simulate on a recorded trace: it is never switched on behind "
                   "your back, so a policy joining the list does not change the others' numbers.")
@fail_on_option(allow_relative=True)
@lenient_option
@machine_option
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
@handle_errors
def diff(trace, policies, fmt, placement, gates, lenient, machine_path, progress):
    """Replay TRACE once per --policy and compare the counters with the first policy's.

    \b
    dmsim diff TRACE --policy baseline --policy cpa_merge
    dmsim diff TRACE --policy baseline --policy migrate_unmapped+cpa_merge \\
        --placement simulate --fail-on 'direct_map_level2_splits>+0'
    """
    names = [p.name for p in policies]
    if len(policies) < 2:
        raise click.UsageError("give at least two --policy options (the first is the reference)")
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise click.BadParameter(f"{dup!r} given twice", param_hint="'--policy'")
    allocating = [p for p in policies if p.needs_simulated_placement]

    from rich.markup import escape

    from ..load import load_trace
    from ..report.diff import DiffResult, diff_text
    from ..report.result import build_result
    from ..simulate import REPORT_COUNTERS, counter_value, names_allocations_by_handle, simulate

    machine = None
    if machine_path:
        from ..machine_config import load_machine

        machine = load_machine(machine_path)
    err = stderr_console()
    t = load_trace(trace, lenient=lenient, machine=machine)
    used, why = diff_placement(placement, allocating, names_allocations_by_handle(t))
    if used == "simulate" and not names_allocations_by_handle(t):
        from ..trace.retarget import to_simulated_placement

        t = to_simulated_placement(t)
    by_handle = names_allocations_by_handle(t)

    show = err.is_terminal if progress is None else progress
    values: dict[str, dict[str, int]] = {}
    warnings: list[str] = []
    for i, p in enumerate(policies):
        label = f"{escape(p.name)} ({i + 1}/{len(policies)})"
        policy = core_policy(p, by_handle, warnings.append)
        r = _simulate(simulate, t, policy, label, err if show else None)
        values[p.name] = {c: counter_value(r.counters, c) for c in REPORT_COUNTERS}
        for w in build_result(r).warnings:
            w = w if i == 0 or w in warnings else f"{p.name}: {w}"
            if w not in warnings:
                warnings.append(w)
        del r  # the direct map of a big machine is large: keep only the counters
    for w in warnings:
        warn(err, w)

    from ..gates import evaluate

    meta = dict(t.meta)
    meta["events"] = len(t.events)
    res = DiffResult(list(policies), REPORT_COUNTERS, values, meta, used, warnings,
                     evaluate(gates, names, values), [g.text for g in gates], why)
    if fmt == "json":
        sys.stdout.write(json.dumps(res.to_json(), indent=2) + "\n")
    else:
        sys.stdout.write(diff_text(res))
    breach_exit(res.breaches, report=True)


def diff_placement(placement: str | None, allocating: list, by_handle: bool) -> tuple[str, str]:
    """(placement, why) for every policy of a diff. It depends on the trace and on
    --placement only, never on which policies are listed: an allocation policy on a
    recorded trace without --placement simulate is a usage error, not a switch."""
    if by_handle:
        if placement == "recorded":
            raise click.BadParameter(
                "the trace names allocations by handle (a generated trace): the simulated "
                "allocator places them, there is no recorded placement", param_hint="'--placement'")
        return "simulate", "the trace names allocations by handle"
    if allocating and placement != "simulate":
        p = allocating[0]
        raise click.BadParameter(
            f"policy {p.name!r} has allocation policy {p.alloc}, which decides where pages go: "
            "on a recorded trace it needs --placement simulate, and every policy then runs "
            "with simulated placement (give it: dmsim does not switch placement because a "
            "policy joined the list)", param_hint="'--placement'")
    if placement is None:
        return "recorded", "the default for a recorded trace"
    return placement, f"--placement {placement}"


def _simulate(simulate, t, policy, label: str, console):
    """One replay, with a progress bar on `console` (None: no bar)."""
    if console is None:
        return simulate(t, policy=policy)
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(label, total=max(len(t.events), 1))
        return simulate(t, lambda done, total: bar.update(task, completed=done), policy=policy)
