"""Shared CLI plumbing: consoles, error handling, common options."""

from __future__ import annotations

import errno
import functools
import os
import sys

import click

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2  # click's code for usage errors
EXIT_BAD_INPUT = 3
EXIT_NOT_VERIFIED = 4  # --verify: the trace has no kernel checkpoints, nothing was compared
EXIT_INTERNAL = 70
EXIT_CANT_WRITE = 73  # sysexits.h EX_CANTCREAT: an output (-o, stdout) cannot be written

# errors only a write gets: the output's problem, not dmsim's (-o paths are checked by
# output.py, which names them; these are what a write to stdout can still meet)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def stderr_console():
    """Diagnostics (warnings, progress, the verify table) go to stderr; when it is not a
    terminal, tables are not squeezed into 80 columns."""
    from rich.console import Console

    c = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
    if not c.is_terminal:
        c = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False, width=200)
    return c


def stdout_console():
    """Results go to stdout; when it is not a terminal, do not wrap to 80 columns."""
    from rich.console import Console

    c = Console(highlight=False, soft_wrap=True, emoji=False)
    if not c.is_terminal:
        c = Console(highlight=False, soft_wrap=True, emoji=False, width=200)
    return c


def warn(console, text: str) -> None:
    """`warning: TEXT` on a rich console; TEXT (which may hold the user's text: trace
    lines, file names) is printed as it is, never read as markup or emoji codes."""
    from rich.markup import escape

    console.print(f"[yellow]warning:[/yellow] {escape(text)}")


def die(message: str, code: int) -> None:
    click.echo(f"dmsim: {message}", err=True)
    sys.exit(code)


def handle_errors(fn):
    """Turn domain errors into one line on stderr and a documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..machine import MachineError
        from ..trace.errors import TraceError

        try:
            result = fn(*args, **kwargs)
            flush_stdout()
            return result
        except TraceError as e:
            die(str(e), EXIT_BAD_INPUT)
        except MachineError as e:
            die(f"bad machine: {e}", EXIT_BAD_INPUT)
        except BrokenPipeError:
            sys.stderr.close()
            sys.exit(EXIT_OK)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            flush_stdout()  # the results printed before an exit 1 must have reached stdout
            raise
        except OSError as e:
            # a write the system refused: -o files are named by output.py, so one without
            # a file name is stdout's (results are all dmsim writes there)
            if e.errno in WRITE_ERRNOS and not os.environ.get("DMSIM_DEBUG"):
                if e.filename is None:
                    _discard_stdout()
                die(f"{e.filename or 'stdout'}: cannot write: {e.strerror or e}", EXIT_CANT_WRITE)
            _internal(e)
        except Exception as e:  # a bug in dmsim, not in the input
            _internal(e)

    return wrapper


def _internal(e: Exception) -> None:
    if os.environ.get("DMSIM_DEBUG"):
        raise e
    die(f"internal error: {type(e).__name__}: {e} (set DMSIM_DEBUG=1 for a traceback)",
        EXIT_INTERNAL)


def flush_stdout() -> None:
    """Push the results out now, so that a stdout that cannot take them (disk full,
    /dev/full) is one line and exit 73, not an exception at interpreter exit."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        _discard_stdout()
        die(f"stdout: cannot write: {e.strerror or e}", EXIT_CANT_WRITE)


def _discard_stdout() -> None:
    """Point file descriptor 1 at /dev/null: what is still buffered goes nowhere at exit
    instead of failing again there."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


trace_argument = click.argument("trace", type=click.Path(dir_okay=False, allow_dash=True))
lenient_option = click.option("--lenient", is_flag=True,
                              help="Skip and count bad lines instead of stopping at the first.")
# a machine file that is missing or unreadable is bad input (exit 3), like a trace
machine_option = click.option("--machine", "machine_path", type=click.Path(dir_okay=False),
                              help="Machine YAML (dmsim/configs/machines/); overrides the trace's e820 lines.")
