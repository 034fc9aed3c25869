"""Shared CLI plumbing: consoles, error handling, common options."""

from __future__ import annotations

import functools
import os
import sys

import click

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2  # click's code for usage errors
EXIT_BAD_INPUT = 3
EXIT_INTERNAL = 70


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_console():
    """Results go to stdout; when it is not a terminal, do not wrap to 80 columns."""
    from rich.console import Console

    c = Console(highlight=False, soft_wrap=True)
    if not c.is_terminal:
        c = Console(highlight=False, soft_wrap=True, width=200)
    return c


def die(message: str, code: int) -> None:
    click.echo(f"dmsim: {message}", err=True)
    sys.exit(code)


def write_output(output: str, opener, write):
    """write(f) into `output` through output + '.tmp', put in place only when complete:
    a failure leaves neither a half-written file nor a clobbered one. A path that
    cannot be written (no such directory, no permission, disk full) is the user's
    -o, so a usage error (exit 2), not an internal one. Returns what write returns."""
    tmp = output + ".tmp"
    try:
        with opener(tmp) as f:
            result = write(f)
        os.replace(tmp, output)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            die(f"{output}: cannot write: {e.strerror or e}", EXIT_USAGE)
        raise
    return result


def handle_errors(fn):
    """Turn domain errors into one line on stderr and a documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..machine import MachineError
        from ..trace.errors import TraceError

        try:
            return fn(*args, **kwargs)
        except TraceError as e:
            die(str(e), EXIT_BAD_INPUT)
        except MachineError as e:
            die(f"bad machine: {e}", EXIT_BAD_INPUT)
        except BrokenPipeError:
            sys.stderr.close()
            sys.exit(EXIT_OK)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as e:  # a bug in dmsim, not in the input
            if os.environ.get("DMSIM_DEBUG"):
                raise
            die(f"internal error: {type(e).__name__}: {e} (set DMSIM_DEBUG=1 for a traceback)",
                EXIT_INTERNAL)

    return wrapper


trace_argument = click.argument("trace", type=click.Path(dir_okay=False, allow_dash=True))
lenient_option = click.option("--lenient", is_flag=True,
                              help="Skip and count bad lines instead of stopping at the first.")
machine_option = click.option("--machine", "machine_path", type=click.Path(exists=True, dir_okay=False),
                              help="Machine YAML (dmsim/configs/machines/); overrides the trace's e820 lines.")
