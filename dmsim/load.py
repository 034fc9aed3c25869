"""Read any trace: detect its format and hand back a Trace."""

from __future__ import annotations

from .machine import Machine
from .trace.errors import TraceError
from .trace.events import Trace
from .trace.source import open_trace


def load_trace(path: str, lenient: bool = False, machine: Machine | None = None) -> Trace:
    """Parse a native or ftrace trace (plain, .gz, .zst, .xz; `-` is stdin), as a stream."""
    from .trace import ftrace, native

    head, chunks, stream = open_trace(path)
    if native.looks_like_native(head):
        trace = native.read_native(chunks, path, lenient=lenient, machine=machine)
    elif ftrace.looks_like_ftrace(head):
        trace = ftrace.read_ftrace(chunks, path, lenient=lenient, machine=machine)
    else:
        first = next((ln for ln in head.split("\n") if ln.strip()), "")
        raise TraceError(path, 1, "neither a dmsim native trace nor ftrace text", first)
    trace.meta["path"] = path
    trace.meta["sha256"] = stream.digest
    return trace
