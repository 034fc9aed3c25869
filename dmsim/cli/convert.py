"""`dmsim convert`: write any trace in dmsim's native text format."""

from __future__ import annotations

import os
import sys

import click

from .common import (
    EXIT_BAD_INPUT,
    die,
    handle_errors,
    lenient_option,
    machine_option,
    trace_argument,
    write_output,
)


@click.command()
@trace_argument
@click.option("-o", "--output", default="-", show_default=True,
              help="Output file (`-` for stdout). An existing file is not overwritten without --force.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@lenient_option
@machine_option
@handle_errors
def convert(trace, output, force, lenient, machine_path):
    """Convert TRACE (ftrace text or native) to the native format."""
    from ..load import load_trace
    from ..trace.native import write_native

    machine = None
    if machine_path:
        from ..machine_config import load_machine

        machine = load_machine(machine_path)
    t = load_trace(trace, lenient=lenient, machine=machine)
    if output == "-":
        write_native(t, sys.stdout)
        return
    if os.path.exists(output) and not force:
        die(f"{output}: exists; not overwriting it (use --force)", EXIT_BAD_INPUT)
    if trace != "-" and os.path.exists(output) and os.path.samefile(trace, output):
        die(f"{output}: is the input trace; not overwriting it", EXIT_BAD_INPUT)
    write_output(output, lambda path: open(path, "w"), lambda f: write_native(t, f))
    click.echo(f"wrote {len(t.events)} events to {output}", err=True)
