"""`-o PATH` of convert and gen: resolved and checked before any work, written so
that nothing is destroyed.

- `-`, /dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N: written to that file
  descriptor as it is (a stream: no temporary file, no compression); /dev/null too.
- A symlink is followed: its target is what gets written (the link stays a link).
- A regular file (or a name that does not exist yet): written to a temporary file
  beside it, compressed by the name's extension (.gz, .zst, .xz), and renamed over
  it only when complete. An existing file needs --force; the input trace is never
  replaced.
- Anything else (a directory, a device, a FIFO, a socket) is refused: renaming a
  file over it would destroy it.

Refusals are usage errors (exit 2: the -o is wrong); a path the system does not let
dmsim write (no such directory, no permission, read-only file system, disk full) is
exit 73 with the path and the system's reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
import tempfile
from dataclasses import dataclass

from .common import EXIT_CANT_WRITE, EXIT_USAGE, die

FD_RE = re.compile(r"/(?:dev/fd|proc/self/fd)/([0-9]+)")
STD_NAMES = {"-": 1, "/dev/stdout": 1, "/dev/stderr": 2}
COMPRESSED = (".gz", ".zst", ".xz")


@dataclass(frozen=True)
class Output:
    given: str  # -o as the user wrote it
    path: str | None = None  # the regular file to create or replace (symlinks followed)
    fd: int | None = None  # a stream: the file descriptor written as it is
    device: str | None = None  # a stream by name (/dev/null): opened and written as it is
    replaces: bool = False  # path exists and will be replaced
    mode: int = 0o644  # the permissions the written file gets

    @property
    def shown(self) -> str:
        """How messages name it."""
        if self.given == "-":
            return "stdout"
        if self.path is not None and os.path.abspath(self.given) != self.path:
            return f"{self.given} (-> {self.path})"
        return self.given

    @property
    def is_stream(self) -> bool:
        return self.path is None

    @property
    def compression(self) -> str | None:
        """gz, zst or xz by the extension of the name given; None for plain text."""
        if self.is_stream:
            return None
        for ext in COMPRESSED:
            if self.given.endswith(ext):
                return ext[1:]
        return None


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def resolve_output(given: str, force: bool, inputs: tuple[str, ...] = ()) -> Output:
    """Where -o GIVEN writes, or exit: 2 for an -o dmsim will not write (exists
    without --force, the input, not a regular file), 73 when it cannot be examined."""
    if given in STD_NAMES:
        return Output(given, fd=STD_NAMES[given])
    m = FD_RE.fullmatch(given)
    if m:
        return Output(given, fd=int(m.group(1)))
    if given == "":
        die("-o: empty file name", EXIT_USAGE)
    target = os.path.realpath(given)  # every symlink followed, a dangling one too
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        die(f"{given}: cannot write: {e.strerror or e}", EXIT_CANT_WRITE)
    if st is None:
        return Output(given, path=target, mode=0o666 & ~_umask())
    if not stat.S_ISREG(st.st_mode):
        if target == os.devnull:
            return Output(given, device=target)
        die(f"{given}: is {_kind(st.st_mode)}; dmsim writes only regular files "
            "(`-o -` writes to stdout)", EXIT_USAGE)
    for inp in inputs:
        if inp != "-" and os.path.exists(inp) and os.path.samefile(inp, target):
            die(f"{given}: is the input trace; not overwriting it", EXIT_USAGE)
    if not force:
        die(f"{given}: exists; not overwriting it (use --force)", EXIT_USAGE)
    return Output(given, path=target, replaces=True, mode=stat.S_IMODE(st.st_mode))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_output(out: Output, write):
    """write(f) with f a binary file, into `out`; returns what write returns. A
    regular file is written beside its final name and renamed over it only when
    complete: a failure leaves neither a half-written file nor a clobbered one,
    and exits 73 naming the path and the system's reason."""
    if out.is_stream:
        try:
            return _write_stream(out, write)
        except BrokenPipeError:
            raise
        except OSError as e:
            die(f"{out.shown}: cannot write: {e.strerror or e}", EXIT_CANT_WRITE)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out.path),
                                   prefix=f".{os.path.basename(out.path)}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as raw:
            os.fchmod(raw.fileno(), out.mode)
            with _compressor(raw, out.compression) as f:
                result = write(f)
        os.replace(tmp, out.path)
        tmp = None
    except OSError as e:
        die(f"{out.shown}: cannot write: {e.strerror or e}", EXIT_CANT_WRITE)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
    return result


def _write_stream(out: Output, write):
    if out.device is not None:
        with open(out.device, "wb") as f:
            return write(f)
    if out.fd in (1, 2):
        stream = sys.stdout if out.fd == 1 else sys.stderr
        stream.flush()
        result = write(stream.buffer)
        stream.buffer.flush()
        return result
    with os.fdopen(os.dup(out.fd), "wb") as f:
        return write(f)


@contextlib.contextmanager
def _compressor(raw, kind: str | None):
    """A binary file that compresses into raw: the same input gives the same bytes
    (no file name or time in a gzip header)."""
    if kind is None:
        yield raw
    elif kind == "gz":
        import gzip

        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as f:
            yield f
    elif kind == "zst":
        import zstandard

        with zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False) as f:
            yield f
    elif kind == "xz":
        import lzma

        with lzma.LZMAFile(raw, "wb", preset=6) as f:
            yield f
    else:
        raise ValueError(kind)


class TextOut:
    """A text file over a binary one, for writers of str (write_native)."""

    def __init__(self, f):
        self.f = f

    def write(self, s: str) -> int:
        return self.f.write(s.encode("utf-8"))
