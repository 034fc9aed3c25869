"""`dmsim convert`: write any trace in dmsim's native text format."""

from __future__ import annotations

import click

from .common import handle_errors, lenient_option, machine_option, trace_argument


@click.command()
@trace_argument
@click.option("-o", "--output", default="-", show_default=True,
              help="Output file (`-` for stdout); a name ending in .gz, .zst or .xz is "
                   "compressed. An existing file is not overwritten without --force; a "
                   "symlink's target is written; directories and devices are refused.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@lenient_option
@machine_option
@handle_errors
def convert(trace, output, force, lenient, machine_path):
    """Convert TRACE (ftrace text or native) to the native format."""
    from ..load import load_trace
    from ..trace.native import write_native
    from .output import TextOut, resolve_output, write_output

    out = resolve_output(output, force, inputs=(trace,))  # before any work
    machine = None
    if machine_path:
        from ..machine_config import load_machine

        machine = load_machine(machine_path)
    t = load_trace(trace, lenient=lenient, machine=machine)
    write_output(out, lambda f: write_native(t, TextOut(f)))
    if not out.is_stream:
        click.echo(f"wrote {len(t.events)} events to {out.shown}", err=True)
