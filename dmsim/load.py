"""Read any trace: detect its format and hand back a Trace."""

from __future__ import annotations

from .machine import Machine
from .trace.errors import TraceError
from .trace.events import Trace
from .trace.source import read_data


def load_trace(path: str, lenient: bool = False, machine: Machine | None = None) -> Trace:
    """Parse a native or ftrace trace (plain, .gz, .zst, .xz; `-` is stdin)."""
    from .trace import ftrace, native

    data, digest = read_data(path)
    head = data[:65536].decode("utf-8", errors="replace")
    if native.looks_like_native(head):
        trace = native.parse_native(data, path,
                                    lenient=lenient, machine=machine)
    elif ftrace.looks_like_ftrace(head):
        trace = ftrace.parse_ftrace(data, path, lenient=lenient, machine=machine)
    else:
        first = next((ln for ln in head.split("\n") if ln.strip()), "")
        raise TraceError(path, 1, "neither a dmsim native trace nor ftrace text", first)
    trace.meta["path"] = path
    trace.meta["sha256"] = digest
    return trace
